"""The clinic data contract (v1): the tables a clinic maps its EHR onto.

The ETL reads exactly these tables and columns. ``docs/contract.md`` is the
human-readable version of this module; keep the two in step.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
)

CONTRACT_VERSION = "1"

PROGRAMS = (
    "outpatient",
    "intensive_outpatient",
    "residential",
    "partial_hospitalization",
    "medication_assisted",
    "detox",
    "other",
)
DISCHARGE_REASONS = (
    "completed",
    "dropped_out",
    "left_against_advice",
    "administrative",
    "transferred",
    "incarcerated",
    "deceased",
    "other",
)
# Discharges that end an episode well: they are not disengagement.
GOOD_DISCHARGES = ("completed", "transferred")

APPOINTMENT_STATUSES = (
    "scheduled",
    "attended",
    "no_show",
    "late_cancel",
    "cancelled_by_client",
    "cancelled_by_clinic",
)
# Statuses that count as a missed session: the client held the slot and did not come.
MISSED_STATUSES = ("no_show", "late_cancel")
# Statuses caused by the client (a clinic cancellation says nothing about engagement).
CLIENT_STATUSES = ("attended", "no_show", "late_cancel", "cancelled_by_client")

SERVICE_TYPES = (
    "individual",
    "group",
    "family",
    "intake",
    "medication",
    "case_management",
    "other",
)
INSTRUMENTS = ("SRS", "GSRS", "WAI-SR", "other")
RATERS = ("client", "therapist")

metadata = MetaData()

clients = Table(
    "clients",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("clinic_id", String(64), nullable=False),
    Column("case_manager_id", String(64)),
    # Fairness reporting only; never model inputs.
    Column("birth_year", Integer),
    Column("sex", String(32)),
    Column("race_ethnicity", String(64)),
)

episodes = Table(
    "episodes",
    metadata,
    Column("episode_id", String(64), primary_key=True),
    Column("client_id", String(64), nullable=False),
    Column("program", String(32), nullable=False),
    Column("admitted_on", Date, nullable=False),
    Column("planned_discharge_on", Date),
    Column("discharged_on", Date),
    Column("discharge_reason", String(32)),
    Column("updated_at", DateTime, nullable=False),
)

appointments = Table(
    "appointments",
    metadata,
    Column("appointment_id", String(64), primary_key=True),
    Column("episode_id", String(64), nullable=False),
    Column("client_id", String(64), nullable=False),
    Column("scheduled_at", DateTime, nullable=False),
    # When the slot was booked. Optional, but without it no booking can be
    # counted as "booked ahead": a future row may exist only because the client
    # kept coming, which is the outcome, not a fact known at the as-of date.
    Column("booked_at", DateTime),
    Column("status", String(32), nullable=False),
    Column("service_type", String(32), nullable=False),
    Column("telehealth", Boolean, nullable=False),
    Column("clinician_id", String(64)),
    Column("updated_at", DateTime, nullable=False),
)

alliance_measures = Table(
    "alliance_measures",
    metadata,
    Column("measure_id", String(64), primary_key=True),
    Column("episode_id", String(64), nullable=False),
    Column("client_id", String(64), nullable=False),
    Column("appointment_id", String(64)),
    Column("instrument", String(16), nullable=False),
    Column("rater", String(16), nullable=False),
    Column("administered_at", DateTime, nullable=False),
    Column("score_total", Float),
    Column("goal", Float),
    Column("task", Float),
    Column("bond", Float),
    Column("updated_at", DateTime, nullable=False),
)

alliance_items = Table(
    "alliance_items",
    metadata,
    Column("measure_id", String(64), primary_key=True),
    Column("item_number", Integer, primary_key=True),
    Column("response", Float, nullable=False),
)

TABLES: dict[str, Table] = {t.name: t for t in metadata.sorted_tables}
REQUIRED_TABLES = ("clients", "episodes", "appointments", "alliance_measures")
OPTIONAL_TABLES = ("alliance_items",)

DATE_COLUMNS = {"episodes": ("admitted_on", "planned_discharge_on", "discharged_on")}
TIMESTAMP_COLUMNS = {
    "episodes": ("updated_at",),
    "appointments": ("scheduled_at", "booked_at", "updated_at"),
    "alliance_measures": ("administered_at", "updated_at"),
}
