"""``router serve``: run the listener, routing timer and forwarder until SIGTERM/SIGINT."""

from __future__ import annotations

import fcntl
import os
import signal
import threading
from pathlib import Path
from typing import Any

import click

from router.cli.context import CliContext
from router.errors import RouterError
from router.server import RouterServer
from router.workers import freeze_startup_heap


@click.command("serve")
@click.option("--port", type=click.IntRange(0, 65535), help="Override listener.port (0 picks a free port).")
@click.option("--host", help="Override listener.host.")
@click.option(
    "--workers", type=click.IntRange(1, 64), help="Override listener.workers (receiving processes sharing the port)."
)
@click.pass_obj
def serve(obj: CliContext, port: int | None, host: str | None, workers: int | None) -> None:
    """Receive studies over DICOM (C-STORE SCP), route them and forward them; creates or upgrades the schema.

    SIGTERM or Ctrl-C drains: no new associations, those in flight finish (up to
    listener.drain_timeout seconds), then the process exits 0.
    """
    changes: dict[str, Any] = {}
    if port is not None:
        changes["port"] = port
    if host is not None:
        changes["host"] = host
    if workers is not None:
        changes["workers"] = workers
    if changes:
        obj.settings = obj.settings.replace("listener", **changes)
    lock = _hold_serve_lock(obj.settings.paths.data_dir)
    app = obj.app(upgrade=True)
    # The dated data files are parsed now: a broken one stops start-up instead of every routing pass.
    app.reference.imlc()
    app.reference.cpt_map()
    server = RouterServer(app)
    stop = threading.Event()

    def _request_stop(signum: int, _frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        freeze_startup_heap()
        report = server.recovery_report
        if report is not None and not report.clean_previous_shutdown:
            click.echo(
                f"recovered after an unclean shutdown: {len(report.indexed)} file(s) indexed, "
                f"{len(report.quarantined)} quarantined, {len(report.missing_files)} row(s) without a file",
                err=True,
            )
        click.echo(
            f"router {app.settings.listener.ae_title} listening on {app.settings.listener.host} "
            f"port(s) {', '.join(str(p) for p in server.ports)}; data in {app.settings.paths.data_dir}",
            err=True,
        )
        while not stop.wait(0.5):
            pass
        click.echo("draining associations...", err=True)
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    lock.close()  # releases the flock
    click.echo("stopped", err=True)


def register(cli: click.Group) -> None:
    """Add ``serve`` to the root group."""
    cli.add_command(serve)


def _hold_serve_lock(data_dir: Path) -> Any:
    """Take ``<data_dir>/serve.lock`` for the life of the process (``flock``, released on exit).

    A second ``router serve`` on the same data directory would run start-up recovery on files
    the first is writing (before its own bind failed, or on another port). Several router nodes share a
    database and an archive with a data directory each.

    Raises
    ------
    RouterError
        If another process holds the lock, or the folder cannot be created.
    """
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        handle = open(data_dir / "serve.lock", "a+")  # noqa: SIM115 - held open until the process exits
    except OSError as exc:
        raise RouterError(f"cannot use data directory {data_dir}: {exc.strerror}") from exc
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise RouterError(
            f"another `router serve` is running on data directory {data_dir} ({data_dir / 'serve.lock'} is locked)"
        ) from exc
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
