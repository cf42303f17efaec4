"""Who may read what: API keys, roles, caseload scopes and the append-only audit trail.

Domain code without Flask: the CLI creates and revokes keys, the API authenticates
callers and writes the audit trail with these functions. Functions take a connection
first and never commit.

Keys are ``rk_<key id>_<secret>`` with a 256-bit random secret. Only the SHA-256 of
the whole token is stored: the secret is far too long to guess, so a slow password
hash would add latency to every request and no protection, and a pepper would be one
more secret to distribute to every worker and the CLI for no gain against a 2^256
search. The key id is stored in clear so a key can be found, listed and revoked.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import (
    DDL,
    Column,
    Connection,
    DateTime,
    Index,
    Integer,
    String,
    Table,
    Text,
    bindparam,
    event,
    exists,
    insert,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ColumnElement, Insert

from retention import bulk, store

ROLES = ("case_manager", "ehr", "analyst", "admin")
# Roles that read client data unless the key carries the client-data grant.
CLIENT_DATA_ROLES = frozenset({"case_manager", "ehr", "admin"})
# Roles that see models and runs.
OPERATIONS_ROLES = frozenset({"analyst", "admin"})
GRANT_CLIENT_DATA = "client_data"
TOKEN_RE = re.compile(r"^rk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")

api_keys = Table(
    "api_keys",
    store.metadata,
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
)

# Append-only: triggers (below) reject UPDATE and DELETE on SQLite and PostgreSQL.
audit_log = Table(
    "audit_log",
    store.metadata,
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
    Index("ix_audit_log_at", "at"),
)

_APPEND_ONLY = "audit_log is append-only"
for _verb in ("UPDATE", "DELETE"):
    event.listen(audit_log, "after_create", DDL(
        f"CREATE TRIGGER audit_log_no_{_verb.lower()} BEFORE {_verb} ON audit_log "
        f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END"
    ).execute_if(dialect="sqlite"))
event.listen(audit_log, "after_create", DDL(
    "CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger "
    f"LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION '{_APPEND_ONLY}'; END $$"
).execute_if(dialect="postgresql"))
event.listen(audit_log, "after_create", DDL(
    "CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log "
    "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()"
).execute_if(dialect="postgresql"))
event.listen(audit_log, "after_create", DDL(
    "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()"
).execute_if(dialect="postgresql"))


class AccessError(ValueError):
    """A key request that cannot be honoured (unknown role, missing clinic, unknown key)."""


@dataclass(frozen=True)
class Caller:
    """An authenticated credential and what it may see."""

    key_id: str
    role: str
    clinics: tuple[str, ...] | None  # None: every clinic (admin)
    case_manager_id: str | None = None
    grants: frozenset[str] = frozenset()

    @property
    def reads_client_data(self) -> bool:
        return self.role in CLIENT_DATA_ROLES or GRANT_CLIENT_DATA in self.grants

    @property
    def reads_operations(self) -> bool:
        return self.role in OPERATIONS_ROLES

    def sees(self, clinic_id: str, case_manager_id: str | None) -> bool:
        """Whether one published row is inside this caller's scope."""
        if not self.reads_client_data:
            return False
        if self.clinics is not None and clinic_id not in self.clinics:
            return False
        return self.case_manager_id is None or case_manager_id == self.case_manager_id


def create_schema(connection: Connection) -> None:
    """Bring the store's schema up to date, key and audit tables (and triggers) included.

    The store's own ``create_schema`` does it: these tables are part of its schema
    (Alembic revision 0002 where migrations are in use).
    """
    from retention import scoped_reads  # noqa: F401  (defines the list's paging index)

    store.create_schema(connection)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_key(
    connection: Connection,
    role: str,
    clinics: Sequence[str] = (),
    *,
    case_manager_id: str | None = None,
    grants: Iterable[str] = (),
    label: str | None = None,
) -> tuple[str, str]:
    """Make a key; returns (key id, token). The token is not stored and cannot be shown again."""
    grants = sorted(set(grants))
    if role not in ROLES:
        raise AccessError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    if role != "admin" and not clinics:
        raise AccessError(f"a {role} key needs at least one --clinic")
    if case_manager_id and role != "case_manager":
        raise AccessError("--case-manager applies to case_manager keys only")
    if set(grants) - {GRANT_CLIENT_DATA}:
        raise AccessError(f"unknown grant(s); the only grant is {GRANT_CLIENT_DATA!r}")
    key_id = secrets.token_hex(6)
    token = f"rk_{key_id}_{secrets.token_urlsafe(32)}"
    connection.execute(insert(api_keys).values(
        key_id=key_id, token_sha256=token_digest(token), role=role,
        clinics_json=json.dumps(sorted(set(clinics))) if clinics else None,
        case_manager_id=case_manager_id or None, grants_json=json.dumps(grants),
        label=label, created_at=store.utcnow(),
    ))
    return key_id, token


def revoke_key(connection: Connection, key_id: str) -> None:
    """Revoke a key from now on; revoking twice keeps the first time."""
    row = connection.execute(select(api_keys.c.revoked_at).where(api_keys.c.key_id == key_id))
    found = row.first()
    if found is None:
        raise AccessError(f"no key with id {key_id!r}; `retention keys list` shows the ids")
    if found.revoked_at is None:
        connection.execute(update(api_keys).where(api_keys.c.key_id == key_id)
                           .values(revoked_at=store.utcnow()))


def list_keys(connection: Connection) -> list[dict[str, Any]]:
    """Every key without its hash, newest first."""
    cols = [c for c in api_keys.c if c.name != "token_sha256"]
    rows = connection.execute(select(*cols).order_by(api_keys.c.created_at.desc()))
    return [dict(r._mapping) for r in rows]


def authenticate(connection: Connection, token: str) -> Caller | None:
    """The caller behind a bearer token, or None for a malformed, unknown or revoked key."""
    match = TOKEN_RE.match(token)
    if match is None:
        return None
    row = connection.execute(select(api_keys).where(api_keys.c.key_id == match.group(1))).first()
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.token_sha256, token_digest(token)):
        return None
    return Caller(
        key_id=row.key_id,
        role=row.role,
        clinics=tuple(json.loads(row.clinics_json)) if row.clinics_json else None,
        case_manager_id=row.case_manager_id,
        grants=frozenset(json.loads(row.grants_json or "[]")),
    )


def key_id_of(token: str) -> str | None:
    """The key id a presented token claims (for auditing a failed attempt), if well formed."""
    match = TOKEN_RE.match(token)
    return match.group(1) if match else None


# --- audit trail ---------------------------------------------------------------------


@dataclass(frozen=True)
class AuditRecord:
    """One read of client data or one denial."""

    action: str
    outcome: str  # "ok", "denied", "not_found", "unauthenticated", "forbidden"
    status: int
    request_id: str
    key_id: str | None = None
    role: str | None = None
    client_ids: tuple[str, ...] = ()
    source: str | None = None
    at: datetime | None = None


@dataclass(frozen=True)
class Condition:
    """A test for the audit INSERT to make in its own statement, built once with bind parameters.

    ``name`` tells statements apart: the INSERT for each set of names is built once.
    """

    name: str
    clause: ColumnElement[bool]
    params: dict[str, Any]


_AUDIT_COLUMNS = ("at", "key_id", "role", "action", "client_ids_json", "request_id", "source",
                  "outcome", "status")
_conditional_inserts: dict[tuple[str, ...], Insert] = {}
_compiled_for_psycopg: dict[tuple[str, ...], str] = {}

_KEY_STILL_VALID = exists().where(
    api_keys.c.key_id == bindparam("claim_key_id"),
    api_keys.c.token_sha256 == bindparam("claim_token_sha256"),
    api_keys.c.revoked_at.is_(None),
)


def write_audit(
    connection: Connection, record: AuditRecord, only_if: Sequence[Condition] = ()
) -> bool:
    """Append one record; the caller commits before any data leaves the service.

    With ``only_if`` the record is written only if every condition holds when the
    statement runs (one statement: the test and the write see the same snapshot)
    and the return value says whether it was.
    """
    values = {
        "at": record.at or store.utcnow(), "key_id": record.key_id, "role": record.role,
        "action": record.action, "client_ids_json": orjson.dumps(record.client_ids).decode(),
        "request_id": record.request_id, "source": record.source, "outcome": record.outcome,
        "status": record.status,
    }
    if not only_if:
        connection.execute(insert(audit_log), values)
        return True
    names = tuple(c.name for c in only_if)
    statement = _conditional_inserts.get(names)
    if statement is None:
        row = select(*(bindparam(k, type_=audit_log.c[k].type) for k in _AUDIT_COLUMNS))
        statement = (insert(audit_log)
                     .from_select(list(_AUDIT_COLUMNS), row.where(*(c.clause for c in only_if)))
                     .returning(audit_log.c.audit_id))
        _conditional_inserts[names] = statement
    for condition in only_if:
        values.update(condition.params)
    if connection.dialect.name == "postgresql":
        return _write_through_driver(connection, names, statement, values)
    # RETURNING, not rowcount: psycopg reports -1 for INSERT ... SELECT through SQLAlchemy.
    return connection.execute(statement, values).first() is not None


def _write_through_driver(
    connection: Connection, names: tuple[str, ...], statement: Insert, values: dict[str, Any]
) -> bool:
    """The same statement, compiled once and run as a prepared statement by psycopg.

    This is every API request's one write: SQLAlchemy's execution machinery costs
    about three times psycopg's own execute of it (160 against 50 microseconds of
    CPU), a fifth of a cached list request. psycopg adapts the values as SQLAlchemy
    would (naive datetimes, text, integers), and the statement runs in the caller's
    transaction like any other.
    """
    sql = _compiled_for_psycopg.get(names)
    if sql is None:
        sql = _compiled_for_psycopg[names] = str(statement.compile(dialect=connection.dialect))
    raw = connection.connection.driver_connection
    # In autocommit (the API's held connections) the INSERT is its own transaction and
    # durable when it returns; otherwise it joins the caller's, begun where SQLAlchemy sees it.
    driver = raw if raw is not None and raw.autocommit else bulk.driver(connection)
    try:
        cursor = _audit_cursor(connection, driver)
        cursor.execute(sql, values, prepare=True)
        return cursor.fetchone() is not None
    except driver.Error as exc:
        # As SQLAlchemy would have raised it: callers catch SQLAlchemyError, and a
        # connection that broke is marked so, never handed out again. The values
        # (client ids) stay out of the message.
        lost = bool(driver.closed or driver.broken)
        if lost:
            connection.invalidate()
        raise DBAPIError.instance(sql, None, exc, driver.Error, hide_parameters=True,
                                  connection_invalidated=lost, dialect=connection.dialect
                                  ) from exc


def _audit_cursor(connection: Connection, driver: Any) -> Any:
    """One cursor per DBAPI connection, kept for its audit writes.

    A new cursor costs a third of the write (15 of 45 microseconds of CPU): it starts
    with no adapters looked up for the parameters' types. The pool clears ``info`` when
    it replaces a connection, so a kept cursor never outlives the connection it is on.
    """
    info = connection.connection.info
    cursor = info.get("retention_audit_cursor")
    if cursor is None or cursor.closed or cursor.connection is not driver:
        cursor = info["retention_audit_cursor"] = driver.cursor()
    return cursor


def key_still_valid(key_id: str, token_sha256: str) -> Condition:
    """The key exists with this token and is not revoked, as of the statement that tests it.

    Only revocation ever changes a key (role, clinics and grants are set at creation),
    so a caller read earlier from a key that still passes this is still that caller.
    """
    return Condition("key", _KEY_STILL_VALID,
                     {"claim_key_id": key_id, "claim_token_sha256": token_sha256})


def read_audit(connection: Connection, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Records with ``start <= at < end`` (naive UTC), oldest first."""
    rows = connection.execute(
        select(audit_log).where(audit_log.c.at >= start).where(audit_log.c.at < end)
        .order_by(audit_log.c.audit_id)
    )
    out = []
    for r in rows:
        record = dict(r._mapping)
        record["client_ids"] = json.loads(record.pop("client_ids_json"))
        out.append(record)
    return out
