"""orders and reports over HL7 v2 and DICOM SR: hl7_messages, orders, reports

Revision ID: 0004_orders_reports
Revises: 0003_peers
Create Date: 2026-12-05

Every received HL7 message is kept (raw bytes, MSH-10, sender, outcome, the ACK given); orders
are matched to studies by accession number; reports record what they did and why a read was
not billed. New tables only: nothing existing changes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import router.db.models

revision = "0004_orders_reports"
down_revision = "0003_peers"
branch_labels = None
depends_on = None


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=48)


def upgrade() -> None:
    utc = router.db.models.UtcDateTime(timezone=True)
    op.create_table(
        "hl7_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("control_id", sa.String(length=199), nullable=True),
        sa.Column("message_type", sa.String(length=16), nullable=True),
        sa.Column("sending_application", sa.String(length=180), nullable=True),
        sa.Column("sending_facility", sa.String(length=180), nullable=True),
        sa.Column("version", sa.String(length=16), nullable=True),
        sa.Column("peer_address", sa.String(length=64), nullable=True),
        sa.Column("received_at", utc, nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("ack_code", _enum("ack_code", "AA", "AE", "AR"), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("ack", sa.LargeBinary(), nullable=True),
        sa.Column("accepted_key", sa.String(length=600), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hl7_messages")),
        sa.UniqueConstraint("accepted_key", name=op.f("uq_hl7_messages_accepted_key")),
    )
    op.create_table(
        "orders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("accession_number", sa.String(length=64), nullable=False),
        sa.Column("placer_order_number", sa.String(length=64), nullable=True),
        sa.Column("status", _enum("order_status", "active", "cancelled"), nullable=False),
        sa.Column("order_control", sa.String(length=8), nullable=False),
        sa.Column("procedures", sa.JSON(), nullable=False),
        sa.Column("diagnoses", sa.JSON(), nullable=False),
        sa.Column("priority", _enum("order_priority", "stat", "asap", "routine"), nullable=True),
        sa.Column("priority_code", sa.String(length=8), nullable=True),
        sa.Column("referring_npi", sa.String(length=10), nullable=True),
        sa.Column("referring_id", sa.String(length=64), nullable=True),
        sa.Column("ordering_facility", sa.String(length=128), nullable=True),
        sa.Column("patient_class", sa.String(length=8), nullable=True),
        sa.Column("patient_location", sa.String(length=128), nullable=True),
        sa.Column("study_id", sa.Integer(), nullable=True),
        sa.Column("hl7_message_id", sa.Integer(), nullable=False),
        sa.Column("received_at", utc, nullable=False),
        sa.Column("updated_at", utc, nullable=False),
        sa.Column("cancelled_at", utc, nullable=True),
        sa.ForeignKeyConstraint(
            ["hl7_message_id"],
            ["hl7_messages.id"],
            name=op.f("fk_orders_hl7_message_id_hl7_messages"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["study_id"], ["studies.id"], name=op.f("fk_orders_study_id_studies"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
        sa.UniqueConstraint("accession_number", name=op.f("uq_orders_accession_number")),
    )
    op.create_index(op.f("ix_orders_study_id"), "orders", ["study_id"], unique=False)
    op.create_table(
        "reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", _enum("report_source", "hl7", "dicom_sr"), nullable=False),
        sa.Column("accession_number", sa.String(length=64), nullable=True),
        sa.Column("study_id", sa.Integer(), nullable=True),
        sa.Column("status", _enum("report_status", "preliminary", "final", "corrected"), nullable=False),
        sa.Column("outcome", _enum("report_outcome", "billed", "not_billed", "flagged"), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("signer_npi", sa.String(length=10), nullable=True),
        sa.Column("signer_name", sa.String(length=200), nullable=True),
        sa.Column("signed_at", utc, nullable=True),
        sa.Column("hl7_message_id", sa.Integer(), nullable=True),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("archive_path", sa.String(length=400), nullable=True),
        sa.Column("professional_entry_ids", sa.JSON(), nullable=True),
        sa.Column("received_at", utc, nullable=False),
        sa.ForeignKeyConstraint(
            ["hl7_message_id"],
            ["hl7_messages.id"],
            name=op.f("fk_reports_hl7_message_id_hl7_messages"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["study_id"], ["studies.id"], name=op.f("fk_reports_study_id_studies"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reports")),
    )
    op.create_index(op.f("ix_reports_study_id"), "reports", ["study_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_reports_study_id"), table_name="reports")
    op.drop_table("reports")
    op.drop_index(op.f("ix_orders_study_id"), table_name="orders")
    op.drop_table("orders")
    op.drop_table("hl7_messages")
