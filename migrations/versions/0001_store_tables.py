"""store tables: clinic copy, runs, features, scores, publications, watermarks, quarantine

Revision ID: 0001
Revises:
Create Date: 2026-11-26

The tables of the nightly run (issue 3). Other areas add their own revisions on top.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "clinic_alliance_items",
        sa.Column("measure_id", sa.String(length=64), nullable=False),
        sa.Column("item_number", sa.Integer(), nullable=False),
        sa.Column("response", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("measure_id", "item_number"),
    )
    op.create_table(
        "clinic_alliance_measures",
        sa.Column("measure_id", sa.String(length=64), nullable=False),
        sa.Column("episode_id", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("appointment_id", sa.String(length=64), nullable=True),
        sa.Column("instrument", sa.String(length=16), nullable=False),
        sa.Column("rater", sa.String(length=16), nullable=False),
        sa.Column("administered_at", sa.DateTime(), nullable=False),
        sa.Column("score_total", sa.Float(), nullable=True),
        sa.Column("goal", sa.Float(), nullable=True),
        sa.Column("task", sa.Float(), nullable=True),
        sa.Column("bond", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("measure_id"),
    )
    op.create_index(
        "ix_clinic_alliance_measures_episode",
        "clinic_alliance_measures",
        ["episode_id"],
        unique=False,
    )

    op.create_table(
        "clinic_appointments",
        sa.Column("appointment_id", sa.String(length=64), nullable=False),
        sa.Column("episode_id", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("scheduled_at", sa.DateTime(), nullable=False),
        sa.Column("booked_at", sa.DateTime(), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("service_type", sa.String(length=32), nullable=False),
        sa.Column("telehealth", sa.Boolean(), nullable=False),
        sa.Column("clinician_id", sa.String(length=64), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("appointment_id"),
    )
    op.create_index(
        "ix_clinic_appointments_episode",
        "clinic_appointments",
        ["episode_id", "scheduled_at"],
        unique=False,
    )

    op.create_table(
        "clinic_clients",
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("clinic_id", sa.String(length=64), nullable=False),
        sa.Column("case_manager_id", sa.String(length=64), nullable=True),
        sa.Column("birth_year", sa.Integer(), nullable=True),
        sa.Column("sex", sa.String(length=32), nullable=True),
        sa.Column("race_ethnicity", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("client_id"),
    )
    op.create_table(
        "clinic_episodes",
        sa.Column("episode_id", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("program", sa.String(length=32), nullable=False),
        sa.Column("admitted_on", sa.Date(), nullable=False),
        sa.Column("planned_discharge_on", sa.Date(), nullable=True),
        sa.Column("discharged_on", sa.Date(), nullable=True),
        sa.Column("discharge_reason", sa.String(length=32), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("episode_id"),
    )
    op.create_index("ix_clinic_episodes_client", "clinic_episodes", ["client_id"], unique=False)

    op.create_table(
        "features",
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("episode_id", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("clinic_id", sa.String(length=64), nullable=False),
        sa.Column("case_manager_id", sa.String(length=64), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("values_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("as_of", "episode_id"),
    )
    op.create_table(
        "publications",
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("published_at", sa.DateTime(), nullable=False),
        sa.Column("n_scored", sa.Integer(), nullable=False),
        sa.Column("inputs_digest", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("as_of"),
    )
    op.create_table(
        "quarantine",
        sa.Column("table_name", sa.String(length=64), nullable=False),
        sa.Column("row_key", sa.String(length=200), nullable=False),
        sa.Column("rule", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("quarantined_at", sa.DateTime(), nullable=False),
        sa.Column("rows_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("table_name", "row_key"),
    )
    op.create_index("ix_quarantine_rule", "quarantine", ["table_name", "rule"], unique=False)

    op.create_table(
        "runs",
        sa.Column("run_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("rows_read", sa.Integer(), nullable=True),
        sa.Column("rows_changed", sa.Integer(), nullable=True),
        sa.Column("rows_quarantined", sa.Integer(), nullable=True),
        sa.Column("model_version", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("run_id"),
    )
    op.create_table(
        "scores",
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("episode_id", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("clinic_id", sa.String(length=64), nullable=False),
        sa.Column("case_manager_id", sa.String(length=64), nullable=True),
        sa.Column("program", sa.String(length=32), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("risk", sa.Float(), nullable=False),
        sa.Column("tier", sa.String(length=16), nullable=False),
        sa.Column("still_engaged", sa.Boolean(), nullable=False),
        sa.Column("last_attended_on", sa.Date(), nullable=True),
        sa.Column("next_booked_at", sa.DateTime(), nullable=True),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("reasons_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("as_of", "episode_id"),
    )
    op.create_index("ix_scores_client_id", "scores", ["client_id"], unique=False)

    op.create_table(
        "watermarks",
        sa.Column("table_name", sa.String(length=64), nullable=False),
        sa.Column("high_water", sa.DateTime(), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("table_name"),
    )


def downgrade() -> None:
    op.drop_table("watermarks")
    op.drop_index("ix_scores_client_id", table_name="scores")

    op.drop_table("scores")
    op.drop_table("runs")
    op.drop_index("ix_quarantine_rule", table_name="quarantine")

    op.drop_table("quarantine")
    op.drop_table("publications")
    op.drop_table("features")
    op.drop_index("ix_clinic_episodes_client", table_name="clinic_episodes")

    op.drop_table("clinic_episodes")
    op.drop_table("clinic_clients")
    op.drop_index("ix_clinic_appointments_episode", table_name="clinic_appointments")

    op.drop_table("clinic_appointments")
    op.drop_index("ix_clinic_alliance_measures_episode", table_name="clinic_alliance_measures")

    op.drop_table("clinic_alliance_measures")
    op.drop_table("clinic_alliance_items")
