"""Migrated PostgreSQL schemas, reused from test to test once emptied.

Migrating a fresh schema costs about half a second; emptying one that a finished test used
(every row deleted, every sequence restarted, then the rows the migrations seed put back) costs
a few milliseconds. A schema whose revision a test changed, or that cannot be emptied at
once (a connection left holding a lock), is dropped instead of reused.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from router.db import migrate
from router.db.engine import make_engine


class SchemaPool:
    """Schemas in one PostgreSQL database (``url``), each at the newest revision when handed out."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._admin: Engine = create_engine(url)
        self._free: list[str] = []
        self._seeded: dict[str, list[dict[str, Any]]] | None = None  # table -> rows a migration inserts
        self._shape: frozenset[tuple[str, str]] = frozenset()  # what a migrated schema holds
        self._head = migrate.head_revision()

    def schema_url(self, schema: str) -> str:
        return (
            make_url(self._url)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )

    def lease(self) -> Iterator[str]:
        """A migrated, empty schema's URL for one test; emptied (or dropped) after it."""
        schema = self._free.pop() if self._free else self._new_schema()
        try:
            yield self.schema_url(schema)
        finally:
            if self._reset(schema):
                self._free.append(schema)
            else:
                self._drop(schema)

    def close(self) -> None:
        for schema in self._free:
            self._drop(schema)
        self._free.clear()
        self._admin.dispose()

    # ------------------------------------------------------------------ internals
    def _new_schema(self) -> str:
        schema = f"t_{uuid.uuid4().hex[:12]}"
        with self._admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        engine = make_engine(self.schema_url(schema))
        try:
            migrate.upgrade(engine)
            if self._seeded is None:
                self._seeded = _snapshot(engine)
                with self._admin.connect() as connection:
                    self._shape = _shape(connection, schema)
        finally:
            engine.dispose()
        return schema

    def _reset(self, schema: str) -> bool:
        """Empty every table and put the seeded rows back; ``False`` if the schema cannot be reused."""
        try:
            with self._admin.begin() as connection:
                connection.execute(text("SET LOCAL lock_timeout = '2s'"))
                revision = connection.execute(text(f'SELECT version_num FROM "{schema}".alembic_version')).scalar()
                if revision != self._head:
                    return False
                if _shape(connection, schema) != self._shape:
                    return False  # a test added a table, trigger, function or index: not reused
                tables = connection.execute(
                    text(
                        "SELECT tablename FROM pg_tables WHERE schemaname = :schema AND tablename <> 'alembic_version'"
                    ),
                    {"schema": schema},
                ).scalars()
                sequences = connection.execute(
                    text("SELECT sequencename FROM pg_sequences WHERE schemaname = :schema"), {"schema": schema}
                ).scalars()
                # DELETE, not TRUNCATE (a new file per table: ten times slower on a tiny table);
                # replica mode skips the triggers (append-only ledgers, foreign keys) meanwhile
                script = ["SET LOCAL session_replication_role = replica"]
                script += [f'DELETE FROM "{schema}"."{table}"' for table in tables]
                script += [f'SELECT setval(\'"{schema}"."{sequence}"\', 1, false)' for sequence in sequences]
                connection.exec_driver_sql(";\n".join(script))
                for table, rows in (self._seeded or {}).items():
                    for row in rows:
                        columns = ", ".join(f'"{column}"' for column in row)
                        values = ", ".join(f":{column}" for column in row)
                        connection.execute(text(f'INSERT INTO "{schema}"."{table}" ({columns}) VALUES ({values})'), row)
        except Exception:  # any trouble: this schema is not reused
            return False
        return True

    def _drop(self, schema: str) -> None:
        try:
            with self._admin.begin() as connection:
                connection.execute(text("SET LOCAL lock_timeout = '10s'"))
                connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        except Exception:  # left for the database's owner; never fails a test
            pass


def _snapshot(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """The rows the migrations leave in a new schema, per table."""
    seeded: dict[str, list[dict[str, Any]]] = {}
    with engine.connect() as connection:
        tables = [
            row[0]
            for row in connection.execute(
                text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename <> 'alembic_version'"
                )
            )
        ]
        for table in tables:
            rows = [dict(row._mapping) for row in connection.execute(text(f'SELECT * FROM "{table}"'))]
            if rows:
                seeded[table] = rows
    return seeded


_SHAPE = text(
    """
    SELECT 'table', c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = :schema AND c.relkind IN ('r', 'i', 'S', 'v')
    UNION ALL
    SELECT 'trigger', c.relname || '.' || t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :schema AND NOT t.tgisinternal
    UNION ALL
    SELECT 'function', p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE n.nspname = :schema
    """
)


def _shape(connection: Any, schema: str) -> frozenset[tuple[str, str]]:
    """The tables, indexes, sequences, views, triggers and functions of ``schema`` (names only)."""
    return frozenset((kind, name) for kind, name in connection.execute(_SHAPE, {"schema": schema}))
