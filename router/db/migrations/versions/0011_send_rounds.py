"""send rounds: a study can be forwarded again in full to a destination that lost it

Revision ID: 0011_send_rounds
Revises: 0010_corrections
Create Date: 2026-12-06

``outbox.send_round`` numbers the rounds of a forwarding job; ``router studies forward UID --all``
starts a new one, in which every instance counts as unsent again. ``forwarded_instances`` keeps
each round's rows (what the destination accepted, when, and the ledger entry that billed it),
so the unique key becomes (outbox, instance, round). Existing rows are round 0.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_send_rounds"
down_revision = "0010_corrections"
branch_labels = None
depends_on = None

OLD_UNIQUE = "uq_forwarded_instances_outbox_id_instance_id"
NEW_UNIQUE = "uq_forwarded_instances_outbox_id_instance_id_send_round"


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("send_round", sa.Integer(), nullable=False, server_default="0"))
    # SQLite cannot change a table's unique constraints in place: the batch rebuilds the table
    with op.batch_alter_table("forwarded_instances") as batch:
        batch.add_column(sa.Column("send_round", sa.Integer(), nullable=False, server_default="0"))
        batch.drop_constraint(OLD_UNIQUE, type_="unique")
        batch.create_unique_constraint(NEW_UNIQUE, ["outbox_id", "instance_id", "send_round"])


def downgrade() -> None:
    # only the first send of each instance can stay under the old key
    op.execute("DELETE FROM forwarded_instances WHERE send_round > 0")
    with op.batch_alter_table("forwarded_instances") as batch:
        batch.drop_constraint(NEW_UNIQUE, type_="unique")
        batch.create_unique_constraint(OLD_UNIQUE, ["outbox_id", "instance_id"])
        batch.drop_column("send_round")
    if op.get_bind().dialect.name == "sqlite":
        # in place (SQLite 3.35+): a batch would rebuild outbox, and dropping the old table
        # cascades (ON DELETE CASCADE) to every forwarded_instances row
        op.execute("ALTER TABLE outbox DROP COLUMN send_round")
    else:
        op.drop_column("outbox", "send_round")
