"""Schema migrations with Alembic, run programmatically (no alembic.ini needed by users).

On PostgreSQL the upgrade holds a transaction-level advisory lock keyed by the schema, so
several nodes starting at once on an empty database migrate one after the other: the first
upgrades, the others wait, then find the schema at head and do nothing.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(engine: Engine | None = None) -> Config:
    """An Alembic config pointing at the router's migration scripts."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database behind ``engine`` to ``revision`` (default: the newest)."""
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
    """The revision the database is at, or ``None`` for an empty database."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    """The newest revision the code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def is_current(engine: Engine) -> bool:
    """Whether the database is at the newest revision."""
    return current_revision(engine) == head_revision()
