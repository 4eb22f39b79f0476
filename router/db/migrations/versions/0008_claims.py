"""claims: 837P service line fields on the professional ledger, billing settings on facilities

Revision ID: 0008_claims
Revises: 0007_cluster
Create Date: 2026-12-05

- ``facilities``: ``billing_arrangement`` (payer, client, global, none; existing rows: payer),
  ``outpatient_pos``, ``default_pos``, ``contract_rate_percent``;
- ``professional_ledger``: the claim fields of each line (arrangement, modifiers, place of
  service, ICD-10-CM codes and pointers, referring/billing NPI, TIN, reading state, exam date,
  charge, fee schedule version, contract rate). Nullable: records written before stay as they were;
- ``orders.referring_name``: the referring provider's family^given (837P loop 2420F NM103/NM104).

Columns are added with plain ADD COLUMN (no table rebuild), so the append-only triggers of
``professional_ledger`` (0002) stay in place.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0008_claims"
down_revision = "0007_cluster"
branch_labels = None
depends_on = None

ARRANGEMENTS = ("payer", "client", "global", "none")


def _enum(values: tuple[str, ...], name: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=48)


FACILITY_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("billing_arrangement", _enum(ARRANGEMENTS, "billing_arrangement")),
    ("outpatient_pos", sa.String(2)),
    ("default_pos", sa.String(2)),
    ("contract_rate_percent", sa.Integer()),
)
LINE_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("billing_arrangement", _enum(ARRANGEMENTS, "line_billing_arrangement")),
    ("modifiers", sa.JSON()),
    ("place_of_service", sa.String(2)),
    ("diagnosis_codes", sa.JSON()),
    ("diagnosis_pointers", sa.JSON()),
    ("diagnosis_source", _enum(("report", "order"), "diagnosis_source")),
    ("referring_npi", sa.String(10)),
    ("referring_name", sa.String(200)),
    ("billing_npi", sa.String(10)),
    ("billing_tin", sa.String(9)),
    ("reading_state", sa.String(2)),
    ("exam_date", sa.Date()),
    ("charge_cents", sa.Integer()),
    ("fee_schedule_version", sa.String(32)),
    ("contract_rate_percent", sa.Integer()),
)


def _portable(type_: Any) -> Any:
    """SQLite cannot add a CHECK constraint to an existing table without a rebuild (which would
    drop the append-only triggers): there an enum column is added as its VARCHAR, unchecked."""
    if op.get_bind().dialect.name == "sqlite" and isinstance(type_, sa.Enum):
        return sa.String(48)
    return type_


def upgrade() -> None:
    for name, type_ in FACILITY_COLUMNS:
        if name == "billing_arrangement":
            op.add_column("facilities", sa.Column(name, _portable(type_), nullable=False, server_default="payer"))
        else:
            op.add_column("facilities", sa.Column(name, _portable(type_), nullable=True))
    for name, type_ in LINE_COLUMNS:
        op.add_column("professional_ledger", sa.Column(name, _portable(type_), nullable=True))
    op.add_column("orders", sa.Column("referring_name", sa.String(200), nullable=True))


def downgrade() -> None:
    op.drop_column("orders", "referring_name")
    for name, _ in reversed(LINE_COLUMNS):
        op.drop_column("professional_ledger", name)
    for name, _ in reversed(FACILITY_COLUMNS):
        op.drop_column("facilities", name)
