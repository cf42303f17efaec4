"""outreach: what case managers did about the list, and how it went

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

Issue 7 (retention/outreach.py): recorded from the case managers' pages; read by the
list (so two people do not call the same client) and by monitoring (performance on
clients nobody contacted).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "outreach",
        sa.Column("outreach_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("episode_id", sa.String(length=64), nullable=False),
        sa.Column("clinic_id", sa.String(length=64), nullable=False),
        sa.Column("list_as_of", sa.Date(), nullable=False),
        sa.Column("risk", sa.Float(), nullable=False),
        sa.Column("tier", sa.String(length=16), nullable=False),
        sa.Column("key_id", sa.String(length=12), nullable=False),
        sa.Column("case_manager_id", sa.String(length=64), nullable=True),
        sa.Column("reached", sa.Boolean(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("note", sa.String(length=280), nullable=True),
        sa.PrimaryKeyConstraint("outreach_id"),
    )
    op.create_index("ix_outreach_client", "outreach", ["client_id", "recorded_at"], unique=False)
    op.create_index("ix_outreach_list", "outreach", ["list_as_of", "episode_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_outreach_list", table_name="outreach")
    op.drop_index("ix_outreach_client", table_name="outreach")
    op.drop_table("outreach")
