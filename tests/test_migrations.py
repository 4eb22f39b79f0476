"""Schema: Alembic migrations build it from empty, agree with the models, and make ledgers append-only."""

from __future__ import annotations

import datetime as dt

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import delete, insert, update
from sqlalchemy.exc import DatabaseError, IntegrityError

from router.db import migrate
from router.db.engine import make_engine
from router.db.models import APPEND_ONLY_TABLES, AuditEntry, Base


def test_upgrade_from_empty_reaches_head_and_is_idempotent(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        assert migrate.current_revision(engine) is None
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision() == "0009_accrual"
        migrate.upgrade(engine)  # a second upgrade is a no-op
        assert migrate.is_current(engine)
    finally:
        engine.dispose()


def test_models_and_migrations_agree(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        migrate.upgrade(engine)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = compare_metadata(context, Base.metadata)
        assert differences == []
    finally:
        engine.dispose()


def test_append_only_tables_refuse_update_and_delete(database_url: str) -> None:
    assert set(APPEND_ONLY_TABLES) == {"professional_ledger", "infrastructure_ledger", "audit_log", "routing_decisions"}
    engine = make_engine(database_url)
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
