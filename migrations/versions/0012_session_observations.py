"""clinic copy: what the therapist noticed in a session

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06

One optional contract table (docs/contract.md), ``session_observations``: per session,
the signs of strain a therapist noted, whether a rupture was noticed and the repair
steps taken. A model input (``retention.features.observations``). Like every copy table
it belongs to the application role, which ``retention migrate`` hands it to
(``retention.store.roles``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "clinic_session_observations",
        sa.Column("observation_id", sa.String(length=64), nullable=False),
        sa.Column("episode_id", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("appointment_id", sa.String(length=64), nullable=True),
        sa.Column("observed_at", sa.DateTime(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=True),
        sa.Column("clinician_id", sa.String(length=64), nullable=True),
        sa.Column("signs", sa.String(length=255), nullable=True),
        sa.Column("rupture", sa.Boolean(), nullable=False),
        sa.Column("repair_steps", sa.String(length=255), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("observation_id"),
    )
    op.create_index("ix_clinic_session_observations_episode",
                    "clinic_session_observations", ["episode_id", "observed_at"])


def downgrade() -> None:
    op.drop_index("ix_clinic_session_observations_episode",
                  table_name="clinic_session_observations")
    op.drop_table("clinic_session_observations")
