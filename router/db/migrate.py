"""Schema migrations with Alembic, run programmatically (no alembic.ini needed by users).

On PostgreSQL the upgrade holds a transaction-level advisory lock keyed by the schema, so
several nodes starting at once on an empty database migrate one after the other: the first
upgrades, the others wait, then find the schema at head and do nothing.

Alembic is imported only to upgrade or to read the migration scripts: checking that a
database is at :data:`HEAD_REVISION` (every process that opens the index, the listener's
worker processes included) reads the ``alembic_version`` table with plain SQL. Alembic and
its script directory cost each process about 11 MiB of memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, inspect, text

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: The newest revision in ``migrations/versions`` (tests/test_migrations.py checks it against
#: Alembic's script directory: a new migration must update it).
HEAD_REVISION = "0011_send_rounds"
#: Alembic's table of the revision a database is at.
VERSION_TABLE = "alembic_version"


def alembic_config(engine: Engine | None = None) -> Config:
    """An Alembic config pointing at the router's migration scripts."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database behind ``engine`` to ``revision`` (default: the newest)."""
    from alembic import command

    config = alembic_config(engine)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # a migration may rewrite big tables: no database.statement_timeout for it
            connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
            # released at commit; other nodes' upgrades wait here (PostgreSQL 9.1+ advisory locks)
            connection.execute(text("SET LOCAL lock_timeout = '300s'"))
            connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('router.migrate:' || current_schema()))"))
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or ``None`` for an empty database (no version table,
    or an empty one).

    Raises
    ------
    RuntimeError
        If the version table holds several revisions (branches: the router's history is linear).
    """
    with engine.connect() as connection:
        if not inspect(connection).has_table(VERSION_TABLE):
            return None
        revisions = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    if len(revisions) > 1:
        raise RuntimeError(f"the database is at several revisions: {', '.join(sorted(revisions))}")
    return revisions[0] if revisions else None


def head_revision() -> str:
    """The newest revision of the migration scripts, read by Alembic (:data:`HEAD_REVISION`)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def is_current(engine: Engine) -> bool:
    """Whether the database is at the newest revision (:data:`HEAD_REVISION`)."""
    return current_revision(engine) == HEAD_REVISION
