"""corrections: claim frequency, replaced charge and correction reason on the professional ledger

Revision ID: 0010_corrections
Revises: 0009_accrual
Create Date: 2026-12-05

Each professional record now says what it is to a claim (X12 005010X222A1 loop 2300 CLM05-3,
the claim frequency type code): ``1`` an original charge, ``7`` a replacement of a prior charge
(``replaces_id`` names it), ``8`` a void of a prior charge (every reversal). A correction names
its reason (``correction_reason``) and may carry a coder's note. Columns are only added
(``ADD COLUMN``), so the append-only triggers of 0002 stay; each is lifted for the one
statement that marks existing reversals as voids, inside the migration's transaction.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0010_corrections"
down_revision = "0009_accrual"
branch_labels = None
depends_on = None


FK_NAME = "fk_professional_ledger_replaces_id_professional_ledger"
VOIDS = "UPDATE professional_ledger SET claim_frequency = '8' WHERE kind = 'reversal'"


def _columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("claim_frequency", sa.String(1), nullable=False, server_default="1"),
        sa.Column("replaces_id", sa.Integer(), nullable=True),
        sa.Column("correction_reason", sa.String(32), nullable=True),
        sa.Column("correction_note", sa.Text(), nullable=True),
    ]


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    present = {column["name"] for column in sa.inspect(op.get_bind()).get_columns("professional_ledger")}
    for column in _columns():
        if column.name in present:  # replaces_id, left on SQLite by a downgrade
            continue
        if sqlite and column.name == "replaces_id":
            # SQLite adds a column with a REFERENCES clause in place; a batch rebuild is not an
            # option: dropping the old table trips the ON DELETE RESTRICT of reverses_id
            op.execute(
                "ALTER TABLE professional_ledger ADD COLUMN replaces_id INTEGER REFERENCES professional_ledger (id)"
            )
        else:
            op.add_column("professional_ledger", column)
    if sqlite:
        op.execute("DROP TRIGGER professional_ledger_no_update")
        op.execute(VOIDS)
        _sqlite_triggers(("UPDATE",))
        return
    op.create_foreign_key(FK_NAME, "professional_ledger", "professional_ledger", ["replaces_id"], ["id"])
    # existing reversals are voids: the append-only trigger (0002) is lifted for this one
    # statement, inside the migration's transaction
    op.execute("ALTER TABLE professional_ledger DISABLE TRIGGER professional_ledger_append_only")
    op.execute(VOIDS)
    op.execute("ALTER TABLE professional_ledger ENABLE TRIGGER professional_ledger_append_only")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite 3.35+ drops a column in place unless it is part of a constraint (replaces_id
        # is: that column stays, unused, rather than rebuild a table whose rows reference
        # each other)
        for column in ("correction_note", "correction_reason", "claim_frequency"):
            op.execute(f"ALTER TABLE professional_ledger DROP COLUMN {column}")
        return
    op.drop_constraint(FK_NAME, "professional_ledger", type_="foreignkey")
    for column in ("correction_note", "correction_reason", "replaces_id", "claim_frequency"):
        op.drop_column("professional_ledger", column)


def _sqlite_triggers(operations: tuple[str, ...] = ("UPDATE", "DELETE")) -> None:
    for operation in operations:
        op.execute(
            f"CREATE TRIGGER professional_ledger_no_{operation.lower()} BEFORE {operation} ON professional_ledger "
            f"BEGIN SELECT RAISE(ABORT, 'professional_ledger is append-only: {operation} refused'); END"
        )
