"""The ``router`` command-line tool: noun groups with verb commands.

The only place that prints, exits, or configures logging. Library errors
(:class:`~router.errors.RouterError`) become one readable line on stderr and exit status 1;
usage and configuration errors are one line too and exit 2 (click's convention).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click
from sqlalchemy.exc import DBAPIError

from router.cli.context import CliContext
from router.config import load_settings
from router.errors import ConfigError, RouterError, first_line


class RouterGroup(click.Group):
    """Turns :class:`RouterError` into one line and a non-zero exit, never a traceback."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        """Parse the root options; a wrong one is one line on stderr and exit 2 (help stays help)."""
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            name = info_name or "router"
            click.echo(f"error: {exc.format_message()} (see `{name} --help`)", err=True)
            raise SystemExit(2) from exc

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.echo(config_error_line(exc), err=True)
            ctx.exit(2)
        except click.UsageError as exc:
            # a wrong option or argument of a command: one line, exit 2 (click's code for usage)
            where = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
            click.echo(f"error: {exc.format_message()} (see `{where} --help`)", err=True)
            ctx.exit(2)
        except RouterError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except DBAPIError as exc:
            # e.g. the database server went away in the middle of a command
            click.echo(f"error: database: {first_line(exc) or type(exc).__name__}", err=True)
            ctx.exit(1)
        except OverflowError as exc:
            # a date or number beyond what Python or the database can hold
            click.echo(f"error: value out of range ({exc})", err=True)
            ctx.exit(1)
        except BrokenPipeError:
            # the reader of the output stopped early (`router studies list | head`): nothing to
            # report; stdout goes to /dev/null so the interpreter's last flush does not fail too
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(1)
        except OSError as exc:
            # a file the user named cannot be read or written (export to a missing folder...)
            where = f": {exc.filename}" if exc.filename else ""
            click.echo(f"error: {exc.strerror or exc}{where}", err=True)
            ctx.exit(1)


def config_error_line(exc: ConfigError) -> str:
    """One line for a configuration error: ``error: config listener.port: ...``."""
    return f"error: config: {str(exc).partition(': ')[2]}" if exc.key == "config" else f"error: config {exc}"


@click.group(cls=RouterGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="ROUTER_CONFIG",
    help="Router config file (TOML). Default: $ROUTER_CONFIG, else built-in defaults.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="ROUTER_DATA_DIR",
    help="Override paths.data_dir (SQLite database and archive live under it by default).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG on stderr (may show UIDs, never PHI).")
@click.option(
    "--as",
    "acting_as",
    metavar="NAME",
    callback=lambda _ctx, _param, value: _acting_as(value),
    help="Who you are, when several people share one account: recorded in the audit log beside the "
    "account (which always comes from the real user id).",
)
@click.version_option(package_name="teleradiology-router", prog_name="router")
@click.pass_context
def cli(
    ctx: click.Context, config_path: Path | None, data_dir: Path | None, verbose: bool, acting_as: str | None
) -> None:
    """Teleradiology study router: DICOM in, licensed reader assigned, read billed apart from infrastructure."""
    restrict_umask()
    try:
        settings = load_settings(config_path)
        if data_dir is not None:
            settings = settings.with_data_dir(data_dir)
    except ConfigError as exc:
        click.echo(config_error_line(exc), err=True)
        ctx.exit(2)
    ctx.obj = CliContext(
        settings=settings, config_path=config_path, verbose=verbose, data_dir_option=data_dir, acting_as=acting_as
    )
    ctx.call_on_close(ctx.obj.close)


def _acting_as(value: str | None) -> str | None:
    """Check ``--as NAME``: 1-128 printable characters (it is shown in audit listings)."""
    if value is None:
        return None
    name = value.strip()
    if not name or len(name) > 128 or not name.isprintable():
        raise click.BadParameter("must be 1-128 printable characters", param_hint="--as")
    return name


#: Permission bits the router never grants: write for the group, anything for others. The
#: database, the archive (PHI), serve.lock and any log file are then at most rw-r----- (files)
#: and rwxr-x--- (folders), whatever umask the caller had (systemd's default is 0022).
SAFE_UMASK = 0o027


def restrict_umask() -> int:
    """Add :data:`SAFE_UMASK` to the process umask (a stricter one is kept); returns the new umask.

    Called first thing by the CLI, before anything creates a file; worker processes inherit it.
    """
    previous = os.umask(SAFE_UMASK)
    os.umask(previous | SAFE_UMASK)
    return previous | SAFE_UMASK


def _register() -> None:
    from router.cli import db, demo, hl7, keys, ledger, nodes, serve, studies

    for module in (db, demo, hl7, keys, ledger, nodes, serve, studies):
        module.register(cli)
    try:
        from router.cli import roster
    except ImportError:  # pragma: no cover - during development only
        return
    roster.register(cli)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="router")


__all__ = ["cli", "main"]
