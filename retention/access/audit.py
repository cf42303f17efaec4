"""The append-only audit trail: one record per read of client data and per denial.

A record is written, and committed, before any data leaves the service. With
conditions (``only_if``) the write also re-checks, in the same statement, what
the response was built from (the key still valid, the list still the one served),
so a revoked key or a replaced list is caught by the very statement that would
have let data out. Functions take a connection first and never commit.

A flood of denials (requests without a valid key, or over a rate limit) would otherwise
write a record per request. Past the first few a minute from one address or key, the
API counts them instead (``count_denial``): one row per minute, address, key, action
and outcome in ``audit_denials``, whose count can only grow. The record that they
happened, and how many, is kept; the trail's size is bounded by time, not by traffic.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, DateTime, bindparam, exists, insert, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ColumnElement, Insert

from retention.access.keys import Caller
from retention.clock import utcnow
from retention.db import bulk
from retention.store.tables import api_keys, audit_denials, audit_log


@dataclass(frozen=True)
class AuditRecord:
    """One read of client data or one denial."""

    action: str
    # "ok", "denied", "not_found", "unauthenticated", "expired", "forbidden", "rate_limited"
    outcome: str
    status: int
    request_id: str
    key_id: str | None = None
    role: str | None = None
    client_ids: tuple[str, ...] = ()
    source: str | None = None
    at: datetime | None = None
    # An outside recipient's disclosure: who received it, and per client the consent it
    # was made under or why the client was withheld (``retention.access.consent``).
    recipient: str | None = None
    detail: dict[str, Any] | None = None


def audit_record(
    action: str, outcome: str, status: int, *, request_id: str, remote_addr: str | None,
    caller: Caller | None = None, key_id: str | None = None,
    client_ids: Iterable[str] = (), at: datetime | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditRecord:
    """The record of one request, however it was served (API, cached list, pages).

    Who is the authenticated caller, or else the key id a refused token claimed;
    the source is the client's address, cut to the column's width.
    """
    return AuditRecord(
        action=action, outcome=outcome, status=status, request_id=request_id,
        key_id=caller.key_id if caller is not None else key_id,
        role=caller.role if caller is not None else None,
        client_ids=tuple(client_ids), source=(remote_addr or "")[:64] or None, at=at,
        recipient=caller.recipient if caller is not None else None, detail=detail,
    )


@dataclass(frozen=True)
class Condition:
    """A test for the audit INSERT to make in its own statement, built once with bind parameters.

    ``name`` tells statements apart: the INSERT for each set of names is built once.
    """

    name: str
    clause: ColumnElement[bool]
    params: dict[str, Any]


_AUDIT_COLUMNS = ("at", "key_id", "role", "action", "client_ids_json", "request_id", "source",
                  "outcome", "status", "recipient", "detail")
_conditional_inserts: dict[tuple[str, ...], Insert] = {}
_compiled_for_psycopg: dict[tuple[str, ...], str] = {}

_KEY_STILL_VALID = exists().where(
    api_keys.c.key_id == bindparam("claim_key_id"),
    api_keys.c.token_sha256 == bindparam("claim_token_sha256"),
    api_keys.c.revoked_at.is_(None),
    or_(api_keys.c.expires_at.is_(None),
        api_keys.c.expires_at > bindparam("claim_now", type_=DateTime())),
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
        "at": record.at or utcnow(), "key_id": record.key_id, "role": record.role,
        "action": record.action, "client_ids_json": orjson.dumps(record.client_ids).decode(),
        "request_id": record.request_id, "source": record.source, "outcome": record.outcome,
        "status": record.status, "recipient": record.recipient,
        "detail": orjson.dumps(record.detail).decode() if record.detail is not None else None,
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
    several times psycopg's own execute of it. psycopg adapts the values as SQLAlchemy
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

    A new cursor is a large share of the write's cost: it starts with no adapters looked
    up for the parameters' types. The pool clears ``info`` when it replaces a
    connection, so a kept cursor never outlives the connection it is on.
    """
    info = connection.connection.info
    cursor = info.get("retention_audit_cursor")
    if cursor is None or cursor.closed or cursor.connection is not driver:
        cursor = info["retention_audit_cursor"] = driver.cursor()
    return cursor


def key_still_valid(key_id: str, token_sha256: str, now: datetime) -> Condition:
    """The key exists with this token, is not revoked and has not expired by ``now``, as of
    the statement that tests it.

    Only revocation and expiry ever change a key (role, clinics and grants are set at
    creation), so a caller read earlier from a key that still passes this is still that
    caller.
    """
    return Condition("key", _KEY_STILL_VALID,
                     {"claim_key_id": key_id, "claim_token_sha256": token_sha256,
                      "claim_now": now})


def window_start(at: datetime, seconds: int = 60) -> datetime:
    """The start of the counting window ``at`` falls in (whole minutes since midnight)."""
    midnight = at.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight + timedelta(seconds=(at - midnight).seconds // seconds * seconds)


def count_denial(connection: Connection, record: AuditRecord) -> None:
    """Count one denial in its minute's row instead of writing a record of its own.

    An upsert on one row: the first denial of its kind in the minute inserts it, later
    ones add one and note their time and request id.
    """
    at = record.at or utcnow()
    values = {"window_start": window_start(at), "source": record.source or "",
              "key_id": record.key_id or "", "action": record.action,
              "outcome": record.outcome, "status": record.status, "denials": 1,
              "first_at": at, "last_at": at, "last_request_id": record.request_id}
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(audit_denials).values(values)
    connection.execute(statement.on_conflict_do_update(
        index_elements=[c.name for c in audit_denials.primary_key.columns],
        set_={"denials": audit_denials.c.denials + 1, "last_at": statement.excluded.last_at,
              "last_request_id": statement.excluded.last_request_id},
    ))


def read_denials(connection: Connection, start: datetime, end: datetime
                 ) -> list[dict[str, Any]]:
    """Counted denials of the minutes starting in ``[start, end)``, oldest first."""
    d = audit_denials.c
    rows = connection.execute(
        select(audit_denials).where(d.window_start >= start, d.window_start < end)
        .order_by(d.window_start, d.source, d.key_id, d.action, d.outcome, d.status))
    return [dict(r._mapping) for r in rows]


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
        record["detail"] = json.loads(record["detail"]) if record["detail"] else None
        out.append(record)
    return out
