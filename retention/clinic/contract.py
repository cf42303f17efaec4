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
# The instruments the service knows by name. A clinic may send any other short code
# (``config/instruments.toml`` registers it): it is kept and shown, and read by the model
# only once registered.
INSTRUMENTS = ("SRS", "GSRS", "WAI-SR", "ORS", "TAS", "other")
RATERS = ("client", "therapist")
# The purposes a consent may name (42 CFR 2.31(a)(5)); a disclosure to an EHR for
# decision support is "treatment".
CONSENT_PURPOSES = (
    "treatment",
    "payment",
    "health_care_operations",
    "care_coordination",
    "research",
    "other",
)
# A consent's recipient written as a class of recipients rather than one named recipient.
RECIPIENT_CLASS_PREFIX = "class:"
# How a client prefers to be reached: the channels a case manager records an outreach by
# (``retention.casework.outreach.CHANNELS``, which a test keeps equal to these).
CONTACT_CHANNELS = ("phone", "text", "email", "in_person", "letter")

# What a therapist may note after a session (``session_observations.signs``): the
# recognised signs of a weak or broken alliance, each under the sign it belongs to.
# Inconsistent engagement is also what the appointments show; the others are seen only
# in the room.
SIGNS: dict[str, str] = {
    "lack_of_trust": "lack_of_trust",
    "communication_breakdown": "communication_breakdown",
    "inconsistent_engagement": "inconsistent_engagement",
    "rejects_suggestions": "resistance",
    "tasks_not_done": "resistance",
    "frustration": "negative_reaction",
    "anger": "negative_reaction",
    "withdrawal": "negative_reaction",
}
SIGN_GROUPS = ("lack_of_trust", "communication_breakdown", "inconsistent_engagement",
               "resistance", "negative_reaction")
# The steps of repairing a rupture (``session_observations.repair_steps``): acknowledge
# it, clarify misunderstandings, take responsibility for one's part, revisit goals and
# tasks together, and monitor it with the session rating.
REPAIR_STEPS = ("acknowledged", "clarified", "took_responsibility", "revisited_goals_tasks",
                "monitored")

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

# What the therapist noticed in a session (optional): signs of strain, whether a rupture
# was noticed and which repair steps were taken. ``signs`` and ``repair_steps`` are
# space-separated codes (``SIGNS``, ``REPAIR_STEPS``). A note counts from when it was
# written: ``recorded_at`` (the session's ``observed_at`` when the EHR does not say).
session_observations = Table(
    "session_observations",
    metadata,
    Column("observation_id", String(64), primary_key=True),
    Column("episode_id", String(64), nullable=False),
    Column("client_id", String(64), nullable=False),
    Column("appointment_id", String(64)),
    Column("observed_at", DateTime, nullable=False),
    Column("recorded_at", DateTime),
    Column("clinician_id", String(64)),
    Column("signs", String(255)),
    Column("rupture", Boolean, nullable=False),
    Column("repair_steps", String(255)),
    Column("updated_at", DateTime, nullable=False),
)

# Every record is a 42 CFR Part 2 record: a disclosure needs the client's written consent
# naming its recipient and purpose (docs/contract.md). Neither table is a model input.
consents = Table(
    "consents",
    metadata,
    Column("consent_id", String(64), primary_key=True),
    Column("client_id", String(64), nullable=False),
    # A named recipient (the id an integration key or registered EHR client carries, e.g.
    # "epic-north") or a class of recipients written "class:<name>" (e.g.
    # "class:treating_providers").
    Column("recipient", String(128), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("effective_on", Date, nullable=False),
    Column("expires_on", Date),  # null: no expiry date (until revoked)
    Column("revoked_at", DateTime),  # null: not revoked
    Column("updated_at", DateTime, nullable=False),
)

client_identifiers = Table(
    "client_identifiers",
    metadata,
    # The EHR's own identifiers for a client (system + value, e.g. an MRN); never model inputs.
    Column("system", String(255), primary_key=True),
    Column("value", String(128), primary_key=True),
    Column("client_id", String(64), nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

# How case managers reach a client from the daily list (one row per client). Shown only
# on the case managers' pages, to staff whose scope includes the client
# (``retention.casework.contacts``); never in logs, the JSON API or FHIR, and never a
# model input or a feature.
client_contacts = Table(
    "client_contacts",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("display_name", String(128)),  # the name as the clinic records it
    Column("preferred_name", String(64)),  # what the client likes to be called
    # Digits, spaces, + ( ) - . and an extension ("ext 12", "x12"): 7-15 digits before it.
    Column("phone", String(32)),
    Column("preferred_channel", String(16)),  # CONTACT_CHANNELS
    Column("may_text", Boolean),  # null: not known
    Column("may_call", Boolean),  # null: not known
    Column("language", String(35)),  # a BCP 47 tag: "en", "es", "pt-BR", "zh-Hans"
    Column("updated_at", DateTime, nullable=False),
)

TABLES: dict[str, Table] = {t.name: t for t in metadata.sorted_tables}
REQUIRED_TABLES = ("clients", "episodes", "appointments", "alliance_measures")
OPTIONAL_TABLES = ("alliance_items", "session_observations", "consents",
                   "client_identifiers", "client_contacts")
# Held for disclosure decisions, the EHR's lookups and the case managers' calls; no
# feature or model ever reads them.
NOT_MODEL_INPUTS = ("consents", "client_identifiers", "client_contacts")

DATE_COLUMNS = {
    "episodes": ("admitted_on", "planned_discharge_on", "discharged_on"),
    "consents": ("effective_on", "expires_on"),
}
TIMESTAMP_COLUMNS = {
    "episodes": ("updated_at",),
    "appointments": ("scheduled_at", "booked_at", "updated_at"),
    "alliance_measures": ("administered_at", "updated_at"),
    "session_observations": ("observed_at", "recorded_at", "updated_at"),
    "consents": ("revoked_at", "updated_at"),
    "client_identifiers": ("updated_at",),
    "client_contacts": ("updated_at",),
}
