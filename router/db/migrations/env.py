"""Alembic environment: runs on the connection handed over by :func:`router.db.migrate.upgrade`."""

from __future__ import annotations

from alembic import context

from router.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - the router always hands over a connection
    raise RuntimeError("run migrations through `router db upgrade`")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
