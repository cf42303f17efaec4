"""Every table and index of the service's own database, in one place.

The store holds a copy of the clinic data, features, scores and the published
lists, runs, the quarantine, API keys and the audit trail, outreach and drift.
SQLAlchemy reads these definitions; the tables are created and changed only by
the Alembic migrations in ``migrations/`` (``retention migrate``, or
``retention.store.schema.upgrade``), whose autogenerate compares against
``metadata`` here. Functions that read and write them live beside this module.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

from retention.clinic import contract

# Notes kept with an outreach entry are short (the case manager's own words).
NOTE_MAX = 280

COPY_PREFIX = "clinic_"

metadata = MetaData()

# The service's copy of the clinic tables, named clinic_<contract name>: the rows of
# the clinic's source that passed validation, as of the last ETL run.
copies = {
    name: table.to_metadata(metadata, name=COPY_PREFIX + name)
    for name, table in contract.TABLES.items()
}
# Reads for one as-of date go by episode: the scoped read of the nightly run.
Index("ix_clinic_appointments_episode", copies["appointments"].c.episode_id,
      copies["appointments"].c.scheduled_at)
Index("ix_clinic_alliance_measures_latest", *(copies["alliance_measures"].c[c] for c in (
    "episode_id", "instrument", "rater", "administered_at")))
Index("ix_clinic_episodes_client", copies["episodes"].c.client_id)
Index("ix_clinic_session_observations_episode", copies["session_observations"].c.episode_id,
      copies["session_observations"].c.observed_at)
# A disclosure looks up one client's consents, and the client an EHR's identifier names.
Index("ix_clinic_consents_client", copies["consents"].c.client_id)
Index("ix_clinic_client_identifiers_client", copies["client_identifiers"].c.client_id)
# Contacts are one row per client, read by client id (their key): no index of their own.

runs = Table(
    "runs",
    metadata,
    Column("run_id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("as_of", Date),
    Column("started_at", DateTime, nullable=False),
    Column("finished_at", DateTime),
    Column("status", String(16), nullable=False),
    Column("rows_read", Integer),
    Column("rows_changed", Integer),
    Column("rows_quarantined", Integer),
    Column("model_version", String(64)),
    Column("error", Text),
    # JSON: what the run did in more detail (full or incremental, counts per table).
    Column("detail", Text),
    # Where it runs, for the operator; whether it still does is its lock's to say
    # (retention.db.locks.live_runs), since a pid is reused and hosts share a store.
    Column("host", String(255)),
    Column("pid", Integer),
)

features = Table(
    "features",
    metadata,
    Column("as_of", Date, primary_key=True),
    Column("episode_id", String(64), primary_key=True),
    Column("client_id", String(64), nullable=False),
    Column("clinic_id", String(64), nullable=False),
    Column("case_manager_id", String(64)),
    # The run that last changed this row; a re-run that computes the same values keeps it.
    Column("run_id", Integer, nullable=False),
    Column("values_json", Text, nullable=False),
)

scores = Table(
    "scores",
    metadata,
    Column("as_of", Date, primary_key=True),
    Column("episode_id", String(64), primary_key=True),
    Column("client_id", String(64), nullable=False, index=True),
    Column("clinic_id", String(64), nullable=False),
    Column("case_manager_id", String(64)),
    Column("program", String(32), nullable=False),
    Column("rank", Integer, nullable=False),
    Column("risk", Float, nullable=False),
    Column("tier", String(16), nullable=False),
    Column("still_engaged", Boolean, nullable=False),
    Column("last_attended_on", Date),
    Column("next_booked_at", DateTime),
    Column("model_version", String(64), nullable=False),
    Column("run_id", Integer, nullable=False),
    Column("reasons_json", Text, nullable=False),
)

# Paging walks the list by rank within one as-of date; without this index every page
# sorts the whole list.
Index("ix_scores_as_of_rank", scores.c.as_of, scores.c.rank)

# One row per published list; the newest is what readers see. Written in the
# same transaction as the scores, so a list is visible whole or not at all.
publications = Table(
    "publications",
    metadata,
    Column("as_of", Date, primary_key=True),
    Column("run_id", Integer, nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("published_at", DateTime, nullable=False),
    Column("n_scored", Integer, nullable=False),
    # What the list was computed from (model, data version, settings): a re-run with
    # the same inputs leaves the published list as it is.
    Column("inputs_digest", String(64)),
)

# How far each source table has been read: rows with updated_at at or after
# (high_water - overlap) are read again by the next incremental run.
watermarks = Table(
    "watermarks",
    metadata,
    Column("table_name", String(64), primary_key=True),
    Column("high_water", DateTime),
    Column("run_id", Integer, nullable=False),
)

# Source rows that broke the contract, kept with the rule they broke until they are
# fixed at the source. ``rows_json`` holds the raw row(s) under that key (several for
# a duplicate key), so every run can check them again.
quarantine = Table(
    "quarantine",
    metadata,
    Column("table_name", String(64), primary_key=True),
    Column("row_key", String(200), primary_key=True),
    Column("rule", String(64), nullable=False),
    Column("detail", Text, nullable=False),
    Column("run_id", Integer, nullable=False),
    Column("quarantined_at", DateTime, nullable=False),
    Column("rows_json", Text, nullable=False),
    Index("ix_quarantine_rule", "table_name", "rule"),
)

# Tables whose content a run changes; ``runs`` only grows and is left out of checksums.
DATA_TABLES = (*(t.name for t in copies.values()), "features", "scores", "publications",
               "watermarks", "quarantine")

# --- access: keys and the audit trail ------------------------------------------

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(12), primary_key=True),
    Column("token_sha256", String(64), nullable=False),
    Column("role", String(16), nullable=False),
    # JSON list of clinic ids; null only for admin keys (every clinic).
    Column("clinics_json", Text),
    Column("case_manager_id", String(64)),
    Column("grants_json", Text, nullable=False, default="[]"),
    Column("label", String(200)),
    Column("created_at", DateTime, nullable=False),
    Column("revoked_at", DateTime),
    # Refused from this time on, like a revoked key (null: no expiry). Rotation sets it on
    # the old key to the end of the overlap; ``rotated_from`` names the key a new one replaced.
    Column("expires_at", DateTime),
    Column("rotated_from", String(12)),
    # The outside recipient an ehr key acts for (what consents name); null for staff keys.
    Column("recipient", String(128)),
)

# Append-only: triggers made by migration 0002 reject UPDATE and DELETE (and TRUNCATE
# on PostgreSQL).
audit_log = Table(
    "audit_log",
    metadata,
    Column("audit_id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime, nullable=False),  # naive UTC
    Column("key_id", String(12)),
    Column("role", String(16)),
    Column("action", String(64), nullable=False),
    Column("client_ids_json", Text, nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("source", String(64)),
    Column("outcome", String(16), nullable=False),
    Column("status", Integer, nullable=False),
    # The outside recipient of a disclosure (null: the clinic's own staff), and JSON of
    # the consent each returned client was disclosed under or why a client was withheld:
    # together the accounting of disclosures (``retention audit disclosures``).
    Column("recipient", String(128)),
    Column("detail", Text),
    Index("ix_audit_log_at", "at"),
)

# Denials past the first ``audit_denials_per_minute`` from one address (or key) in a
# minute, counted instead of written one by one: a flood leaves a bounded trail and every
# denial is still counted. Triggers made by migration 0007 let a row's count only grow.
audit_denials = Table(
    "audit_denials",
    metadata,
    Column("window_start", DateTime, primary_key=True),  # naive UTC, the minute's start
    Column("source", String(64), primary_key=True),  # "" when unknown
    Column("key_id", String(12), primary_key=True),  # the key (or claimed key id); "" for none
    Column("action", String(64), primary_key=True),
    Column("outcome", String(16), primary_key=True),
    Column("status", Integer, primary_key=True, autoincrement=False),
    Column("denials", Integer, nullable=False),
    Column("first_at", DateTime, nullable=False),
    Column("last_at", DateTime, nullable=False),
    Column("last_request_id", String(64), nullable=False),
)

# The pages' sessions: the cookie holds a random session id, the store only its SHA-256.
# Ended at sign-out, when the key is revoked, or by the idle and absolute timeouts.
web_sessions = Table(
    "web_sessions",
    metadata,
    Column("session_sha256", String(64), primary_key=True),
    Column("key_id", String(12), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("last_seen_at", DateTime, nullable=False),
    Column("ended_at", DateTime),
    Column("end_reason", String(16)),
    Index("ix_web_sessions_key", "key_id"),
)

# Keys the service signs its own tokens with (the list's paging cursors), made by
# migration 0007; every worker and host that serves from this store shares them.
signing_keys = Table(
    "signing_keys",
    metadata,
    Column("purpose", String(32), primary_key=True),
    Column("secret", String(128), nullable=False),
    Column("created_at", DateTime, nullable=False),
)

# EHRs registered for SMART Backend Services (``retention.access.ehr_clients``): each signs
# its token requests with a private key whose public half is kept here. The client id has
# the key id's form, so the audit log's key_id column names a client's refused requests.
ehr_clients = Table(
    "ehr_clients",
    metadata,
    Column("client_id", String(12), primary_key=True),
    Column("label", String(200)),
    Column("jwks_json", Text, nullable=False),  # public keys only, checked at registration
    # The recipient id consents name ("demo-ehr"); its tokens carry it.
    Column("recipient", String(128), nullable=False),
    Column("clinics_json", Text, nullable=False),
    Column("scopes_json", Text, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("revoked_at", DateTime),
)

# Assertion ids (jti) seen from each client until the assertion expires: one is never
# accepted twice. Rows past their expiry are deleted as new ones arrive.
ehr_client_jtis = Table(
    "ehr_client_jtis",
    metadata,
    Column("client_id", String(12), primary_key=True),
    Column("jti", String(255), primary_key=True),
    Column("expires_at", DateTime, nullable=False),
)

# --- casework: what case managers did about the list ---------------------------

outreach = Table(
    "outreach",
    metadata,
    Column("outreach_id", Integer, primary_key=True, autoincrement=True),
    Column("recorded_at", DateTime, nullable=False),  # naive UTC
    Column("client_id", String(64), nullable=False),
    Column("episode_id", String(64), nullable=False),
    Column("clinic_id", String(64), nullable=False),
    # The list the case manager acted on, and what it said about the client then.
    Column("list_as_of", Date, nullable=False),
    Column("risk", Float, nullable=False),
    Column("tier", String(16), nullable=False),
    Column("key_id", String(12), nullable=False),
    Column("case_manager_id", String(64)),
    Column("reached", Boolean, nullable=False),
    Column("channel", String(16), nullable=False),
    # Only when the client was reached.
    Column("outcome", String(16)),
    Column("note", String(NOTE_MAX)),
    Index("ix_outreach_client", "client_id", "recorded_at"),
    Index("ix_outreach_list", "list_as_of", "episode_id"),
)

# --- drift: each scoring run's population stability, by input ----------------

drift = Table(
    "drift",
    metadata,
    Column("run_id", Integer, primary_key=True),
    Column("feature", String(64), primary_key=True),
    Column("as_of", Date, nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("psi", Float, nullable=False),
    Column("flagged", Boolean, nullable=False),
)
