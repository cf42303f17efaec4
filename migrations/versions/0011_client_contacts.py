"""clinic copy: how case managers reach a client

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

One optional contract table (docs/contract.md), ``client_contacts``: a client's name,
the name they go by, phone, preferred channel, whether they may be texted or called,
and language, one row per client. Never a model input; shown only on the case managers'
pages to staff whose scope includes the client (``retention.casework.contacts``). Like
every copy table it belongs to the application role, which ``retention migrate`` hands
it to (``retention.store.roles``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "clinic_client_contacts",
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=128), nullable=True),
        sa.Column("preferred_name", sa.String(length=64), nullable=True),
        sa.Column("phone", sa.String(length=32), nullable=True),
        sa.Column("preferred_channel", sa.String(length=16), nullable=True),
        sa.Column("may_text", sa.Boolean(), nullable=True),
        sa.Column("may_call", sa.Boolean(), nullable=True),
        sa.Column("language", sa.String(length=35), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("client_id"),
    )


def downgrade() -> None:
    op.drop_table("clinic_client_contacts")
