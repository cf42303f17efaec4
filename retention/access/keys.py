"""Who may read what: API keys, roles and caseload scopes, and who may use the pages.

Domain code without Flask: the CLI creates and revokes keys, the API and the pages
authenticate callers with these functions. Functions take a connection first and
never commit.

Keys are ``rk_<key id>_<secret>`` with a 256-bit random secret. Only the SHA-256 of
the whole token is stored: the secret is far too long to guess, so a slow password
hash would add latency to every request and no protection, and a pepper would be one
more secret to distribute to every worker and the CLI for no gain against a 2^256
search. The key id is stored in clear so a key can be found, listed and revoked.

A key may expire (``expires_at``): from then on it is refused like a revoked one.
Rotation makes a new key with the same role and scope and lets the old one expire at
the end of an overlap window, so an integration can switch without an outage.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, insert, select, update

from retention.clock import utcnow
from retention.store.tables import api_keys, signing_keys, web_sessions

ROLES = ("case_manager", "ehr", "analyst", "admin")
# Roles that read client data unless the key carries the client-data grant.
CLIENT_DATA_ROLES = frozenset({"case_manager", "ehr", "admin"})
# Roles that see models and runs.
OPERATIONS_ROLES = frozenset({"analyst", "admin"})
# Roles that act for a recipient outside the clinic: their keys name it, and they are
# given a client's data only under that client's consent (retention.access.consent).
RECIPIENT_ROLES = frozenset({"ehr"})
# No ":": consents name a class as "class:<name>", and a recipient id that looked like
# one would be covered by every consent for that class.
RECIPIENT_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
GRANT_CLIENT_DATA = "client_data"
TOKEN_RE = re.compile(r"^rk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


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
    # From this time on the key is refused (None: it does not expire).
    expires_at: datetime | None = None
    # The outside recipient an integration acts for (ehr keys, SMART and CDS Hooks
    # clients): what a 42 CFR Part 2 consent names. None: the clinic's own staff.
    recipient: str | None = None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

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


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def a_key(role: str) -> str:
    """"an ehr key", "a case_manager key": a role's key in a sentence."""
    return f"{'an' if role[:1] in 'aeiou' else 'a'} {role} key"


def create_key(
    connection: Connection,
    role: str,
    clinics: Sequence[str] = (),
    *,
    case_manager_id: str | None = None,
    grants: Iterable[str] = (),
    label: str | None = None,
    expires_at: datetime | None = None,
    now: datetime | None = None,
    rotated_from: str | None = None,
    recipient: str | None = None,
) -> tuple[str, str]:
    """Make a key; returns (key id, token). The token is not stored and cannot be shown again.

    An ``ehr`` key acts for an outside recipient and must name it: consents name
    recipients, so a key without one could never be given client data.
    """
    grants = sorted(set(grants))
    now = now or utcnow()
    if role not in ROLES:
        raise AccessError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    if role != "admin" and not clinics:
        raise AccessError(f"{a_key(role)} needs at least one --clinic")
    if case_manager_id and role != "case_manager":
        raise AccessError("--case-manager applies to case_manager keys only")
    if set(grants) - {GRANT_CLIENT_DATA}:
        raise AccessError(f"unknown grant(s); the only grant is {GRANT_CLIENT_DATA!r}")
    if expires_at is not None and expires_at <= now:
        raise AccessError("the expiry must be in the future")
    if role in RECIPIENT_ROLES and not recipient:
        raise AccessError(f"{a_key(role)} acts for an outside recipient: name it with "
                          "--recipient (the id the clients' consents name)")
    if recipient and role not in RECIPIENT_ROLES:
        raise AccessError("--recipient applies to ehr keys only: the other roles are the "
                          "clinic's own staff")
    if recipient is not None and not RECIPIENT_RE.match(recipient):
        raise AccessError(f"a recipient id is 1-128 letters, digits, '.', '_' or '-', "
                          f"got {recipient!r}")
    key_id = secrets.token_hex(6)
    token = f"rk_{key_id}_{secrets.token_urlsafe(32)}"
    connection.execute(insert(api_keys).values(
        key_id=key_id, token_sha256=token_digest(token), role=role,
        clinics_json=json.dumps(sorted(set(clinics))) if clinics else None,
        case_manager_id=case_manager_id or None, grants_json=json.dumps(grants),
        label=label, created_at=now, expires_at=expires_at, rotated_from=rotated_from,
        recipient=recipient,
    ))
    return key_id, token


def revoke_key(connection: Connection, key_id: str, now: datetime | None = None) -> None:
    """Revoke a key from now on, and end its page sessions; revoking twice keeps the first time."""
    row = connection.execute(select(api_keys.c.revoked_at).where(api_keys.c.key_id == key_id))
    found = row.first()
    if found is None:
        raise AccessError(f"no key with id {key_id!r}; `retention keys list` shows the ids")
    now = now or utcnow()
    if found.revoked_at is None:
        connection.execute(update(api_keys).where(api_keys.c.key_id == key_id)
                           .values(revoked_at=now))
    connection.execute(update(web_sessions).where(web_sessions.c.key_id == key_id,
                                                  web_sessions.c.ended_at.is_(None))
                       .values(ended_at=now, end_reason="revoked"))


def rotate_key(connection: Connection, key_id: str, overlap: timedelta,
               expires_at: datetime | None = None, now: datetime | None = None
               ) -> tuple[str, str]:
    """A new key with the old one's role, scope, grants and label; the old one expires
    ``overlap`` from now (or sooner, if it already would). Returns (new key id, token).

    The new key expires at ``expires_at``; if not given, after as long a life as the old
    key was given (none if the old key had no expiry).
    """
    now = now or utcnow()
    old = connection.execute(select(api_keys).where(api_keys.c.key_id == key_id)).first()
    if old is None:
        raise AccessError(f"no key with id {key_id!r}; `retention keys list` shows the ids")
    if old.revoked_at is not None or (old.expires_at is not None and old.expires_at <= now):
        raise AccessError(f"key {key_id} is revoked or expired; create a new key instead")
    if overlap < timedelta(0):
        raise AccessError("the overlap cannot be negative")
    if expires_at is None and old.expires_at is not None:
        expires_at = now + (old.expires_at - old.created_at)
    caller = _caller(old)
    new_id, token = create_key(
        connection, caller.role, caller.clinics or (), case_manager_id=caller.case_manager_id,
        grants=caller.grants, label=old.label, expires_at=expires_at, now=now,
        rotated_from=key_id, recipient=caller.recipient)
    ends = now + overlap
    if old.expires_at is None or old.expires_at > ends:
        connection.execute(update(api_keys).where(api_keys.c.key_id == key_id)
                           .values(expires_at=ends))
    return new_id, token


def list_keys(connection: Connection) -> list[dict[str, Any]]:
    """Every key without its hash, newest first."""
    cols = [c for c in api_keys.c if c.name != "token_sha256"]
    rows = connection.execute(select(*cols).order_by(api_keys.c.created_at.desc()))
    return [dict(r._mapping) for r in rows]


@dataclass(frozen=True)
class KeyCheck:
    """What a presented token turned out to be: its caller, or why it was refused.

    ``outcome`` is what the audit records: "ok", "expired" (a real key past its expiry)
    or "unauthenticated" (malformed, unknown, forged or revoked).
    """

    caller: Caller | None
    outcome: str


def check_key(connection: Connection, token: str, now: datetime | None = None) -> KeyCheck:
    """The caller behind a bearer token, or why there is none."""
    match = TOKEN_RE.match(token)
    if match is None:
        return KeyCheck(None, "unauthenticated")
    row = connection.execute(select(api_keys).where(api_keys.c.key_id == match.group(1))).first()
    if row is None or row.revoked_at is not None:
        return KeyCheck(None, "unauthenticated")
    if not hmac.compare_digest(row.token_sha256, token_digest(token)):
        return KeyCheck(None, "unauthenticated")
    caller = _caller(row)
    if caller.expired(now or utcnow()):
        return KeyCheck(None, "expired")
    return KeyCheck(caller, "ok")


def authenticate(connection: Connection, token: str, now: datetime | None = None
                 ) -> Caller | None:
    """The caller behind a bearer token, or None for a malformed, unknown, revoked or
    expired key."""
    return check_key(connection, token, now).caller


def _caller(row: Any) -> Caller:
    """The caller a stored key row describes."""
    return Caller(
        key_id=row.key_id,
        role=row.role,
        clinics=tuple(json.loads(row.clinics_json)) if row.clinics_json else None,
        case_manager_id=row.case_manager_id,
        grants=frozenset(json.loads(row.grants_json or "[]")),
        expires_at=row.expires_at,
        recipient=row.recipient,
    )


def key_id_of(token: str) -> str | None:
    """The key id a presented token claims (for auditing a failed attempt), if well formed."""
    match = TOKEN_RE.match(token)
    return match.group(1) if match else None


# --- the pages -----------------------------------------------------------------------

# Only case managers and administrators use the pages; other roles keep to the API. A
# page session (``access.sessions``) names its key, which is looked up on every request.
PAGE_ROLES = frozenset({"case_manager", "admin"})


def page_caller(connection: Connection, key_id: str, now: datetime | None = None
                ) -> Caller | None:
    """The caller of a key that exists, is neither revoked nor expired and may use the
    pages; else None."""
    row = connection.execute(select(api_keys).where(api_keys.c.key_id == key_id)).first()
    if row is None or row.revoked_at is not None or row.role not in PAGE_ROLES:
        return None
    caller = _caller(row)
    return None if caller.expired(now or utcnow()) else caller


def key_label(connection: Connection, key_id: str) -> str | None:
    """The label the key was created with (who holds it), to greet them; no client data."""
    value = connection.execute(select(api_keys.c.label).where(api_keys.c.key_id == key_id))
    return value.scalar()


# --- the service's own signing keys ---------------------------------------------------


def signing_key(connection: Connection, purpose: str) -> str | None:
    """The secret the service signs its own tokens for ``purpose`` with (migration 0007
    makes the "cursor" key); None if the store has none."""
    value = connection.execute(select(signing_keys.c.secret)
                               .where(signing_keys.c.purpose == purpose)).scalar()
    return str(value) if value is not None else None
