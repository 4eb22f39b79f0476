"""cluster: node heartbeats, cluster leases, roster version, outbox claims

Revision ID: 0007_cluster
Revises: 0006_assignment
Create Date: 2026-12-05

Several ``router serve`` nodes share one PostgreSQL database (docs/scale-out.md):

- ``nodes``: one row per node id with its heartbeat; a node silent longer than its lease is dead;
- ``cluster_leases``: work done once per interval for the cluster (the periodic recheck);
- ``roster_version``: one row a roster change locks ``FOR UPDATE`` and routing ``FOR SHARE``;
- ``outbox.claimed_by`` / ``claimed_until``: the node working a forwarding job, and until when.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from router.db.models import UtcDateTime

revision = "0007_cluster"
down_revision = "0006_assignment"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", UtcDateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", UtcDateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", UtcDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("node_id", name=op.f("pk_nodes")),
    )
    op.create_table(
        "cluster_leases",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(64), nullable=True),
        sa.Column("expires_at", UtcDateTime(timezone=True), nullable=True),
        sa.Column("last_run_at", UtcDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_cluster_leases")),
    )
    roster_version = op.create_table(
        "roster_version",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_roster_version")),
    )
    op.bulk_insert(roster_version, [{"id": 1, "version": 0}])
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(64), nullable=True))
        batch.add_column(sa.Column("claimed_until", UtcDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("claimed_until")
        batch.drop_column("claimed_by")
    op.drop_table("roster_version")
    op.drop_table("cluster_leases")
    op.drop_table("nodes")
