"""drift: population stability of each input and the score, per scoring run

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

Issue 4 (retention/drift.py): written by every scoring run beside its published list;
read by ``retention.store.lists.latest_drift`` for the API and monitoring.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "drift",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("feature", sa.String(length=64), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("psi", sa.Float(), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "feature"),
    )


def downgrade() -> None:
    op.drop_table("drift")
