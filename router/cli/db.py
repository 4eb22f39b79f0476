"""``router db``: schema migrations."""

from __future__ import annotations

import click

from router.cli.context import CliContext
from router.cli.output import emit_json
from router.db import migrate
from router.db.engine import check_connection, make_engine, safe_url


@click.group("db")
def db_group() -> None:
    """Database schema (Alembic migrations)."""


@db_group.command("upgrade")
@click.pass_obj
def upgrade(obj: CliContext) -> None:
    """Create or upgrade the schema to the newest revision."""
    engine = make_engine(obj.settings.database_url, busy_timeout=obj.settings.database.busy_timeout)
    try:
        check_connection(engine)
        before = migrate.current_revision(engine)
        migrate.upgrade(engine)
        after = migrate.current_revision(engine)
    finally:
        engine.dispose()
    if before == after:
        click.echo(f"database already at revision {after}")
    else:
        click.echo(f"database upgraded from {before or 'empty'} to {after}")


@db_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_obj
def status(obj: CliContext, as_json: bool) -> None:
    """Show the schema revision and whether it is current (exit 1 if not)."""
    engine = make_engine(obj.settings.database_url, busy_timeout=obj.settings.database.busy_timeout, create=False)
    try:
        check_connection(engine)
        current = migrate.current_revision(engine)
    finally:
        engine.dispose()
    head = migrate.head_revision()
    url = safe_url(engine.url)
    if as_json:
        emit_json({"database": url, "revision": current, "head": head, "current": current == head})
    else:
        click.echo(f"database {url}: revision {current or 'empty'} (newest {head})")
    if current != head:
        raise SystemExit(1)


def register(cli: click.Group) -> None:
    """Add ``db`` to the root group."""
    cli.add_command(db_group)
