"""runs: the host and process each run ran in

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

Issue 16: runs killed by SIGKILL stayed ``running`` forever. A run's process now holds a
lock on the run while it lives (retention/db/locks.py), and the next run to start marks
failed those whose lock no one holds; ``host`` and ``pid`` say where each ran, for the
operator reading ``retention runs``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("host", sa.String(255), nullable=True))
        batch.add_column(sa.Column("pid", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("pid")
        batch.drop_column("host")
