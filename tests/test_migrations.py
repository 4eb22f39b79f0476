"""Schema: Alembic migrations build it from empty, agree with the models, and make ledgers append-only."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import delete, insert, text, update
from sqlalchemy.exc import DatabaseError, IntegrityError

from router.db import migrate
from router.db.engine import make_engine
from router.db.models import APPEND_ONLY_TABLES, AuditEntry, Base


def test_upgrade_from_empty_reaches_head_and_is_idempotent(empty_database_url: str) -> None:
    engine = make_engine(empty_database_url)
    try:
        assert migrate.current_revision(engine) is None
        migrate.upgrade(engine)
        assert (
            migrate.current_revision(engine) == migrate.head_revision() == migrate.HEAD_REVISION == "0010_corrections"
        )
        migrate.upgrade(engine)  # a second upgrade is a no-op
        assert migrate.is_current(engine)
    finally:
        engine.dispose()


def test_the_revision_check_reads_the_version_table(empty_database_url: str) -> None:
    """``current_revision`` without Alembic: no table, an empty one, one revision, several."""
    engine = make_engine(empty_database_url)
    try:
        assert migrate.current_revision(engine) is None and not migrate.is_current(engine)
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        assert migrate.current_revision(engine) is None
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO alembic_version VALUES ('0009_accrual')"))
        assert migrate.current_revision(engine) == "0009_accrual" and not migrate.is_current(engine)
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO alembic_version VALUES ('0010_corrections')"))
        with pytest.raises(RuntimeError, match="several revisions: 0009_accrual, 0010_corrections"):
            migrate.current_revision(engine)
    finally:
        engine.dispose()


def test_opening_the_index_does_not_load_alembic(tmp_path: Path) -> None:
    """A process that only opens an up-to-date index (a listener worker) never imports Alembic
    (about 11 MiB per process); one that upgrades does."""
    database = tmp_path / "router.db"
    config = tmp_path / "router.toml"
    config.write_text(f'[paths]\ndata_dir = "{tmp_path / "var"}"\n[database]\nurl = "sqlite:///{database}"\n')
    script = (
        "import sys\n"
        "from router.app import RouterApp\n"
        "from pathlib import Path\nfrom router.config import load_settings\n"
        "import router.workers\n"
        f"app = RouterApp.open(load_settings(Path({str(config)!r})), upgrade=sys.argv[1] == 'upgrade')\n"
        "app.close()\n"
        "print('alembic' in sys.modules)\n"
    )
    loaded = [
        subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True).stdout.strip()
        for mode in ("upgrade", "open")
    ]
    assert loaded == ["True", "False"]


def test_models_and_migrations_agree(empty_database_url: str) -> None:
    engine = make_engine(empty_database_url)
    try:
        migrate.upgrade(engine)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = compare_metadata(context, Base.metadata)
        assert differences == []
    finally:
        engine.dispose()


def test_append_only_tables_refuse_update_and_delete(empty_database_url: str) -> None:
    assert set(APPEND_ONLY_TABLES) == {"professional_ledger", "infrastructure_ledger", "audit_log", "routing_decisions"}
    engine = make_engine(empty_database_url)
    try:
        migrate.upgrade(engine)
        now = dt.datetime(2026, 11, 29, tzinfo=dt.UTC)
        with engine.begin() as connection:
            connection.execute(insert(AuditEntry).values(at=now, os_user="t", action="x", entity="e", entity_key="k"))
        for statement in (update(AuditEntry).values(action="changed"), delete(AuditEntry)):
            with pytest.raises((IntegrityError, DatabaseError)) as caught, engine.begin() as connection:
                connection.execute(statement)
            assert "append-only" in str(caught.value)
    finally:
        engine.dispose()


def test_0008_claims_keeps_existing_facilities_as_payer_and_downgrades(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        migrate.upgrade(engine, "0007_cluster")
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO facilities (ae_title, state, requires_privileges, created_at) "
                    "VALUES ('CT_OLD', 'TX', false, '2026-01-01 00:00:00+00:00')"
                )
            )
        migrate.upgrade(engine)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT billing_arrangement FROM facilities")).scalar_one() == "payer"
        with engine.begin() as connection:
            config = migrate.alembic_config(engine)
            config.attributes["connection"] = connection
            command.downgrade(config, "0007_cluster")
        assert migrate.current_revision(engine) == "0007_cluster"
        migrate.upgrade(engine)
        assert migrate.is_current(engine)
    finally:
        engine.dispose()
