"""ehr_clients: EHRs registered for SMART Backend Services, and the assertion ids they used

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

An EHR authenticates at ``POST /oauth/token`` with a JWT signed by its private key
(``retention.access.ehr_clients``, ``api/oauth.py``); ``ehr_clients`` holds its public
JWKS, recipient, clinics and scopes, ``ehr_client_jtis`` each assertion id until the
assertion expires, so none is accepted twice.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ehr_clients",
        sa.Column("client_id", sa.String(length=12), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("jwks_json", sa.Text(), nullable=False),
        sa.Column("recipient", sa.String(length=128), nullable=False),
        sa.Column("clinics_json", sa.Text(), nullable=False),
        sa.Column("scopes_json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("client_id"),
    )
    op.create_table(
        "ehr_client_jtis",
        sa.Column("client_id", sa.String(length=12), nullable=False),
        sa.Column("jti", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("client_id", "jti"),
    )


def downgrade() -> None:
    op.drop_table("ehr_client_jtis")
    op.drop_table("ehr_clients")
