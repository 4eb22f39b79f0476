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
            migrate.current_revision(engine) == migrate.head_revision() == migrate.HEAD_REVISION == "0011_send_rounds"
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


def test_0011_send_rounds_keeps_what_was_sent_as_round_0_and_downgrades(database_url: str) -> None:
    engine = make_engine(database_url)
    now = "'2026-12-01 00:00:00+00:00'"
    try:
        migrate.upgrade(engine, "0010_corrections")
        with engine.begin() as connection:
            for statement in (
                "INSERT INTO studies (id, study_instance_uid, status, instance_count, size_bytes, first_received_at, "
                f"last_received_at, needs_review) VALUES (1, '1.2.3', 'assigned', 1, 10, {now}, {now}, false)",
                "INSERT INTO series (id, study_id, series_instance_uid) VALUES (1, 1, '1.2.3.1')",
                "INSERT INTO instances (id, study_id, series_id, sop_instance_uid, sop_class_uid, transfer_syntax_uid, "
                "relative_path, size_bytes, dataset_sha256, calling_ae_title, received_at) VALUES "
                f"(1, 1, 1, '1.2.3.1.1', '1.2.840.10008.5.1.4.1.1.2', '1.2.840.10008.1.2.1', 'a/b/c.dcm', 10, 'ab', 'CT', {now})",
                "INSERT INTO radiologists (id, npi, name, active, mqsa_qualified, created_at) "
                f"VALUES (1, '1234567893', 'Doe^Jane', true, false, {now})",
                "INSERT INTO outbox (id, study_id, radiologist_id, destination, status, attempts, next_attempt_at, "
                f"sent_instance_count, updated_at) VALUES (1, 1, 1, 'WS@h:104', 'sent', 0, {now}, 1, {now})",
                f"INSERT INTO forwarded_instances (outbox_id, instance_id, size_bytes, sent_at) VALUES (1, 1, 10, {now})",
            ):
                connection.execute(text(statement))
        migrate.upgrade(engine)
        with engine.begin() as connection:
            assert connection.execute(text("SELECT send_round FROM outbox")).scalar_one() == 0
            assert connection.execute(
                text("SELECT outbox_id, instance_id, send_round FROM forwarded_instances")
            ).all() == [(1, 1, 0)]
            # a second round of the same instance is a row of its own; the same round twice is not
            connection.execute(
                text(
                    "INSERT INTO forwarded_instances (outbox_id, instance_id, size_bytes, sent_at, send_round) "
                    f"VALUES (1, 1, 10, {now}, 1)"
                )
            )
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO forwarded_instances (outbox_id, instance_id, size_bytes, sent_at, send_round) "
                    f"VALUES (1, 1, 10, {now}, 1)"
                )
            )
        with engine.begin() as connection:
            config = migrate.alembic_config(engine)
            config.attributes["connection"] = connection
            command.downgrade(config, "0010_corrections")
        with engine.connect() as connection:
            assert connection.execute(text("SELECT outbox_id, instance_id FROM forwarded_instances")).all() == [(1, 1)]
        migrate.upgrade(engine)
        assert migrate.is_current(engine)
    finally:
        engine.dispose()
