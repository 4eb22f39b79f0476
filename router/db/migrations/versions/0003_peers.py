"""audit log: the person a command acted for (``router --as NAME``), beside the OS account

Revision ID: 0003_peers
Revises: 0002
Create Date: 2026-12-05

``audit_log.os_user`` is now the real account of the process (``getpwuid(getuid())``), which
the environment cannot change; ``acting_as`` records the optional ``--as NAME`` a shared
service account gives, as a claim kept beside it, never instead of it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_peers"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("acting_as", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("acting_as")
