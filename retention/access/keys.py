"""Who may read what: API keys, roles and caseload scopes, and who may use the pages.

Domain code without Flask: the CLI creates and revokes keys, the API and the pages
authenticate callers with these functions. Functions take a connection first and
never commit.

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
from typing import Any

from sqlalchemy import Connection, insert, select, update

from retention.clock import utcnow
from retention.store.tables import api_keys

ROLES = ("case_manager", "ehr", "analyst", "admin")
# Roles that read client data unless the key carries the client-data grant.
CLIENT_DATA_ROLES = frozenset({"case_manager", "ehr", "admin"})
# Roles that see models and runs.
OPERATIONS_ROLES = frozenset({"analyst", "admin"})
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
        label=label, created_at=utcnow(),
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
                           .values(revoked_at=utcnow()))


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
    return _caller(row)


def _caller(row: Any) -> Caller:
    """The caller a stored key row describes."""
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


# --- the pages -----------------------------------------------------------------------

# Only case managers and administrators use the pages; other roles keep to the API. The
# pages keep only the key id in their cookie and look the key up on every request.
PAGE_ROLES = frozenset({"case_manager", "admin"})


def page_caller(connection: Connection, key_id: str) -> Caller | None:
    """The caller of a key that exists, is not revoked and may use the pages; else None."""
    row = connection.execute(select(api_keys).where(api_keys.c.key_id == key_id)).first()
    if row is None or row.revoked_at is not None or row.role not in PAGE_ROLES:
        return None
    return _caller(row)


def key_label(connection: Connection, key_id: str) -> str | None:
    """The label the key was created with (who holds it), to greet them; no client data."""
    value = connection.execute(select(api_keys.c.label).where(api_keys.c.key_id == key_id))
    return value.scalar()
