"""measures by episode, instrument, rater and date: the scoped read's latest ratings

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26

Issue 3: the nightly run reads each open episode's last three SRS and GSRS and last
WAI-SR per rater. With this index that is a few index probes per episode instead of
sorting every measure of the open caseload (926,000 at 100,000 clients). Its leading
column serves lookups by episode, so it replaces the episode-only index.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_clinic_alliance_measures_latest", "clinic_alliance_measures",
        ["episode_id", "instrument", "rater", "administered_at"],
    )
    op.drop_index("ix_clinic_alliance_measures_episode", table_name="clinic_alliance_measures")


def downgrade() -> None:
    op.create_index("ix_clinic_alliance_measures_episode", "clinic_alliance_measures",
                    ["episode_id"])
    op.drop_index("ix_clinic_alliance_measures_latest", table_name="clinic_alliance_measures")
