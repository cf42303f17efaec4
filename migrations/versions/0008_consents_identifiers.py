"""clinic copy: consents and the EHR's client identifiers

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08

Two optional contract tables (docs/contract.md): ``consents`` (42 CFR Part 2: whom a
client's records may be disclosed to, and for what) and ``client_identifiers`` (the
EHR's own identifiers for a client, such as an MRN). Neither is a model input. Like
every copy table they belong to the application role, which ``retention migrate`` hands
them to (``retention.store.roles``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "clinic_consents",
        sa.Column("consent_id", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("recipient", sa.String(length=128), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("effective_on", sa.Date(), nullable=False),
        sa.Column("expires_on", sa.Date(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("consent_id"),
    )
    op.create_index("ix_clinic_consents_client", "clinic_consents", ["client_id"])
    op.create_table(
        "clinic_client_identifiers",
        sa.Column("system", sa.String(length=255), nullable=False),
        sa.Column("value", sa.String(length=128), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("system", "value"),
    )
    op.create_index("ix_clinic_client_identifiers_client", "clinic_client_identifiers",
                    ["client_id"])


def downgrade() -> None:
    op.drop_index("ix_clinic_client_identifiers_client", table_name="clinic_client_identifiers")
    op.drop_table("clinic_client_identifiers")
    op.drop_index("ix_clinic_consents_client", table_name="clinic_consents")
    op.drop_table("clinic_consents")
