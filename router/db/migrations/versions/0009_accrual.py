"""accrual: exact infrastructure cost, monthly storage accrual, per-client attribution

Revision ID: 0009_accrual
Revises: 0008_claims
Create Date: 2026-12-05

``infrastructure_ledger`` gets exact money (router.domain.infra_cost): ``amount_cents`` and
``rate_cents_per_gib`` become ``amount_microcents`` and ``rate_microcents`` (values times
10**6), and new columns ``basis``, ``period_month``, ``client_ae_title``, ``client_name``,
``quantity`` and ``unit_quantity``. Rows written before this revision keep exactly the amount
they were charged (basis ``recorded``: whole cents, rounded per row as the router did then),
with ``quantity`` = their bytes, ``unit_quantity`` = 2**30, ``period_month`` = the UTC month
they were recorded in, and the client of their study. A unique partial index allows one
storage accrual row per study per month. ``instances.accounted_at`` replaces the link from an
instance to its one-time storage record as the routing timer's late-instance marker.

Only ADD COLUMN and RENAME COLUMN are used: SQLite cannot rebuild this table while instances
reference it with foreign keys on. The append-only triggers (0002) are lifted for the one
UPDATE that converts the old rows and put back.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from router.db.models import UtcDateTime

revision = "0009_accrual"
down_revision = "0008_claims"
branch_labels = None
depends_on = None

TABLE = "infrastructure_ledger"
BASES = ("recorded", "per_gib", "per_gib_month")
_CLIENT = (
    "(SELECT {column} FROM studies LEFT JOIN facilities ON facilities.id = studies.facility_id "
    "WHERE studies.id = infrastructure_ledger.study_id)"
)


def _triggers(create: bool) -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        if create:
            op.execute(
                f"CREATE TRIGGER {TABLE}_append_only BEFORE UPDATE OR DELETE ON {TABLE} "
                "FOR EACH ROW EXECUTE FUNCTION router_append_only()"
            )
        else:
            op.execute(f"DROP TRIGGER IF EXISTS {TABLE}_append_only ON {TABLE}")
    elif dialect == "sqlite":
        for operation in ("UPDATE", "DELETE"):
            name = f"{TABLE}_no_{operation.lower()}"
            if create:
                op.execute(
                    f"CREATE TRIGGER {name} BEFORE {operation} ON {TABLE} "
                    f"BEGIN SELECT RAISE(ABORT, '{TABLE} is append-only: {operation} refused'); END"
                )
            else:
                op.execute(f"DROP TRIGGER IF EXISTS {name}")


def _month_of_recorded_at() -> str:
    if op.get_bind().dialect.name == "postgresql":
        return "CAST(date_trunc('month', recorded_at AT TIME ZONE 'UTC') AS DATE)"
    return "date(substr(recorded_at, 1, 7) || '-01')"  # SQLite keeps UTC text 'YYYY-MM-DD HH:MM:SS...'


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    _triggers(create=False)
    op.execute(f"ALTER TABLE {TABLE} RENAME COLUMN amount_cents TO amount_microcents")
    op.execute(f"ALTER TABLE {TABLE} RENAME COLUMN rate_cents_per_gib TO rate_microcents")
    if postgresql:
        op.execute(f"ALTER TABLE {TABLE} ALTER COLUMN rate_microcents TYPE BIGINT")
    basis = sa.Enum(*BASES, name="infrastructure_basis", native_enum=False, create_constraint=True, length=48)
    new_columns: tuple[sa.Column[object], ...] = (
        sa.Column("basis", basis, nullable=False, server_default="recorded"),
        sa.Column("period_month", sa.Date(), nullable=False, server_default="1970-01-01"),
        sa.Column("client_ae_title", sa.String(16), nullable=False, server_default=""),
        sa.Column("client_name", sa.String(128), nullable=True),
        sa.Column("quantity", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("unit_quantity", sa.BigInteger(), nullable=False, server_default=str(2**30)),
    )
    for column in new_columns:
        if column.name == "basis" and not postgresql:
            # alembic skips the CHECK of an added column on SQLite; SQLite itself takes it inline
            allowed = ", ".join(f"'{value}'" for value in BASES)
            op.execute(
                f"ALTER TABLE {TABLE} ADD COLUMN basis VARCHAR(48) DEFAULT 'recorded' NOT NULL "
                f"CONSTRAINT ck_{TABLE}_infrastructure_basis CHECK (basis IN ({allowed}))"
            )
        else:
            op.add_column(TABLE, column)
    op.execute(
        f"UPDATE {TABLE} SET amount_microcents = amount_microcents * 1000000, "
        "rate_microcents = rate_microcents * 1000000, quantity = size_bytes, "
        f"period_month = {_month_of_recorded_at()}, "
        f"client_ae_title = COALESCE({_CLIENT.format(column='facilities.ae_title')}, "
        f"{_CLIENT.format(column='studies.first_calling_ae_title')}, ''), "
        f"client_name = {_CLIENT.format(column='facilities.name')}"
    )
    if postgresql:  # SQLite cannot drop a default in place; the router always writes every column
        for column in new_columns:
            if column.server_default is not None:
                op.alter_column(TABLE, column.name, server_default=None)
    op.create_index(
        "uq_infrastructure_ledger_storage_month",
        TABLE,
        ["study_id", "period_month"],
        unique=True,
        sqlite_where=sa.text("basis = 'per_gib_month'"),
        postgresql_where=sa.text("basis = 'per_gib_month'"),
    )
    op.create_index("ix_infrastructure_ledger_period_month", TABLE, ["period_month", "client_ae_title"])
    _triggers(create=True)
    # Routing no longer links instances to a storage record; the late-instance marker becomes
    # its own column, set for every instance already accounted for.
    op.add_column("instances", sa.Column("accounted_at", UtcDateTime(timezone=True), nullable=True))
    op.execute("UPDATE instances SET accounted_at = received_at WHERE infrastructure_entry_id IS NOT NULL")
    op.create_index("ix_instances_accounted_at", "instances", ["accounted_at"])


def downgrade() -> None:
    """Back to whole cents per row (lossy: sub-cent amounts and rates are rounded half up)."""
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.drop_index("ix_instances_accounted_at", table_name="instances")
    op.execute("ALTER TABLE instances DROP COLUMN accounted_at")
    _triggers(create=False)
    op.drop_index("ix_infrastructure_ledger_period_month", table_name=TABLE)
    op.drop_index("uq_infrastructure_ledger_storage_month", table_name=TABLE)
    op.execute(
        f"UPDATE {TABLE} SET amount_microcents = (amount_microcents + 500000) / 1000000, "
        "rate_microcents = (rate_microcents + 500000) / 1000000"
    )
    for name in ("unit_quantity", "quantity", "client_name", "client_ae_title", "period_month", "basis"):
        op.execute(f"ALTER TABLE {TABLE} DROP COLUMN {name}")
    if postgresql:
        op.execute(f"ALTER TABLE {TABLE} ALTER COLUMN rate_microcents TYPE INTEGER")
    op.execute(f"ALTER TABLE {TABLE} RENAME COLUMN rate_microcents TO rate_cents_per_gib")
    op.execute(f"ALTER TABLE {TABLE} RENAME COLUMN amount_microcents TO amount_cents")
    _triggers(create=True)
