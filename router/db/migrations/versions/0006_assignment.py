"""assignment: reader shifts, facility reader preferences/exclusions, new hold reasons

Revision ID: 0006_assignment
Revises: 0005_archive
Create Date: 2026-12-05

Adds ``reader_shifts``, ``facility_readers`` and ``radiologists.subspecialties``, ``assignments.work_rvu_centi``, and widens the hold-reason CHECK constraints of
``studies`` and ``routing_decisions`` with ``no_reader_on_shift`` and
``facility_address_conflict``. SQLite cannot alter a CHECK constraint in place, so those two
tables are rebuilt in batch mode; the append-only triggers of ``routing_decisions`` (0002) are
re-created after the rebuild.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_assignment"
down_revision = "0005_archive"
branch_labels = None
depends_on = None

OLD_REASONS = ("no_exam_state", "no_eligible_radiologist")
NEW_REASONS = (*OLD_REASONS, "no_reader_on_shift", "facility_address_conflict")
# (table, column, enum/constraint name)
HOLD_COLUMNS = (("studies", "hold_reason", "hold_reason"), ("routing_decisions", "hold_reason", "decision_hold_reason"))


def _enum(values: tuple[str, ...], name: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=48)


def _sqlite_triggers(create: bool) -> None:
    for operation in ("UPDATE", "DELETE"):
        name = f"routing_decisions_no_{operation.lower()}"
        if create:
            op.execute(
                f"CREATE TRIGGER {name} BEFORE {operation} ON routing_decisions "
                f"BEGIN SELECT RAISE(ABORT, 'routing_decisions is append-only: {operation} refused'); END"
            )
        else:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")


def _hold_reasons(old: tuple[str, ...], new: tuple[str, ...]) -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        _sqlite_triggers(create=False)
    for table, column, name in HOLD_COLUMNS:
        with op.batch_alter_table(table, recreate="always" if sqlite else "auto") as batch:
            batch.alter_column(column, existing_type=_enum(old, name), type_=_enum(new, name), existing_nullable=True)
    if sqlite:
        _sqlite_triggers(create=True)


def upgrade() -> None:
    op.create_table(
        "reader_shifts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("radiologist_id", sa.Integer(), nullable=False),
        sa.Column("weekdays", sa.String(length=32), nullable=False),
        sa.Column("start_time", sa.Time(), nullable=False),
        sa.Column("end_time", sa.Time(), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["radiologist_id"],
            ["radiologists.id"],
            name=op.f("fk_reader_shifts_radiologist_id_radiologists"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reader_shifts")),
    )
    op.create_index(op.f("ix_reader_shifts_radiologist_id"), "reader_shifts", ["radiologist_id"], unique=False)
    op.create_table(
        "facility_readers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("facility_id", sa.Integer(), nullable=False),
        sa.Column("radiologist_id", sa.Integer(), nullable=False),
        sa.Column("rule", _enum(("prefer", "exclude"), "facility_reader_rule"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["facility_id"],
            ["facilities.id"],
            name=op.f("fk_facility_readers_facility_id_facilities"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["radiologist_id"],
            ["radiologists.id"],
            name=op.f("fk_facility_readers_radiologist_id_radiologists"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_facility_readers")),
        sa.UniqueConstraint(
            "facility_id", "radiologist_id", name=op.f("uq_facility_readers_facility_id_radiologist_id")
        ),
    )
    op.add_column("radiologists", sa.Column("subspecialties", sa.String(length=128), nullable=True))
    op.add_column("assignments", sa.Column("work_rvu_centi", sa.Integer(), nullable=True))
    _hold_reasons(OLD_REASONS, NEW_REASONS)


def downgrade() -> None:
    _hold_reasons(NEW_REASONS, OLD_REASONS)
    with op.batch_alter_table("radiologists") as batch:
        batch.drop_column("subspecialties")
    with op.batch_alter_table("assignments") as batch:
        batch.drop_column("work_rvu_centi")
    op.drop_table("facility_readers")
    op.drop_index(op.f("ix_reader_shifts_radiologist_id"), table_name="reader_shifts")
    op.drop_table("reader_shifts")
