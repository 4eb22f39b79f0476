"""encryption at rest: room for encrypted residence values

Revision ID: 0005_archive
Revises: 0004_orders_reports
Create Date: 2026-12-05

With ``[encryption] enabled`` the patient's RegionOfResidence and CountryOfResidence are stored
as ``enc1:<key id>:<base64 nonce, ciphertext, tag>`` (router/keyring.py), longer than the 128
characters of their plain values: the columns become TEXT (patient_address already is).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_archive"
down_revision = "0004_orders_reports"
branch_labels = None
depends_on = None

_COLUMNS = ("region_of_residence", "country_of_residence")


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        for column in _COLUMNS:
            batch.alter_column(column, existing_type=sa.String(length=128), type_=sa.Text(), existing_nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        for column in _COLUMNS:
            batch.alter_column(column, existing_type=sa.Text(), type_=sa.String(length=128), existing_nullable=True)
