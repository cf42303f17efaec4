"""EHRs registered for SMART Backend Services: who they are, their public keys, what they see.

An EHR's backend asks ``POST /oauth/token`` for an access token with a JWT it signs with
its own private key (``api/oauth.py``); only the public half (a JWKS) is registered here,
so the service holds no secret of the EHR's. An access token is an ordinary short-lived
``ehr`` key (``retention.access.keys``) labelled ``smart:<client id>``, so audit,
revocation, rate limits and scopes work as for any key, and revoking the client revokes
its live tokens too. Domain code without Flask: functions take a connection first and
never commit.

``find_client`` is also how another integration (CDS Hooks) checks a JWT an EHR signs:
it returns revoked clients too (``revoked_at`` set), which callers must refuse.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import Connection, and_, delete, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from retention.access.keys import RECIPIENT_RE, create_key
from retention.clock import utcnow
from retention.store.tables import api_keys, ehr_client_jtis, ehr_clients

# The one resource the service serves, read-only; ``system/*.read`` is narrowed to it.
SCOPE_READ = "system/RiskAssessment.read"
NARROWED_SCOPES = {SCOPE_READ: SCOPE_READ, "system/*.read": SCOPE_READ}
# What SMART Backend Services asks servers to support for the client's assertion.
SIGNING_ALGORITHMS = ("RS384", "ES384")
# JWK members that hold private or symmetric key material (RFC 7518 section 6).
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
MIN_RSA_BITS = 2048
CLIENT_ID_RE = re.compile(r"^[0-9a-f]{12}$")
MAX_JTI = 255
TOKEN_LABEL_PREFIX = "smart:"


class ClientError(ValueError):
    """A registration or request that cannot be honoured; the message says why."""


class ScopeError(ClientError):
    """A requested scope the service does not serve or the client was not registered for."""


@dataclass(frozen=True)
class EhrClient:
    """A registered EHR: its public keys and what its tokens may read."""

    client_id: str
    label: str | None
    jwks: dict[str, Any]
    recipient: str
    clinics: tuple[str, ...]
    scopes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def token_label(client_id: str) -> str:
    """The label of the keys minted as this client's access tokens."""
    return TOKEN_LABEL_PREFIX + client_id


def check_jwks(jwks: Any) -> dict[str, Any]:
    """The JWKS if every key is a public RS384 or ES384 key with a kid, else ClientError.

    A private member is refused outright, not stripped: a file holding the private key has
    left the EHR's hands, and the EHR should make a new pair.
    """
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) \
            or not jwks["keys"]:
        raise ClientError('a JWKS is a JSON object {"keys": [...]} with at least one key')
    kids = []
    for jwk in jwks["keys"]:
        if not isinstance(jwk, dict):
            raise ClientError("every member of keys must be a JWK object")
        kid = jwk.get("kid")
        private = sorted(PRIVATE_MEMBERS & set(jwk))
        if private:
            raise ClientError(f"key {kid!r} holds private key material ({', '.join(private)}): "
                              "register the public keys only, and make a new key pair, "
                              "since this one has been shared")
        if not isinstance(kid, str) or not kid:
            raise ClientError("every key needs a kid: assertions name their key by it")
        kids.append(kid)
        _check_key(jwk, kid)
    if len(set(kids)) != len(kids):
        raise ClientError("two keys share a kid")
    try:
        keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError) as exc:
        raise ClientError(f"the JWKS cannot be read as keys: {exc}") from None
    if any(key.is_private for key in keys):
        raise ClientError("the JWKS holds a private key: register the public keys only")
    return jwks


def _check_key(jwk: dict[str, Any], kid: str) -> None:
    """A key that can verify RS384 or ES384 signatures, and only signatures."""
    kty, alg = jwk.get("kty"), jwk.get("alg")
    if jwk.get("use", "sig") != "sig":
        raise ClientError(f"key {kid!r} is for use {jwk.get('use')!r}, not sig")
    if kty == "RSA":
        if alg not in (None, "RS384"):
            raise ClientError(f"key {kid!r} is an RSA key for {alg}; RS384 is accepted")
        size = len(_b64_bytes(jwk.get("n"), kid).lstrip(b"\0")) * 8
        if size < MIN_RSA_BITS:
            raise ClientError(f"key {kid!r} is an RSA key of {size} bits; at least "
                              f"{MIN_RSA_BITS} are needed")
    elif kty == "EC":
        if jwk.get("crv") != "P-384" or alg not in (None, "ES384"):
            raise ClientError(f"key {kid!r} must be on curve P-384 for ES384")
    else:
        raise ClientError(f"key {kid!r} has kty {kty!r}; RSA (RS384) or EC P-384 (ES384) "
                          "keys are accepted")


def _b64_bytes(value: Any, kid: str) -> bytes:
    if not isinstance(value, str):
        raise ClientError(f"key {kid!r} has no modulus n")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (ValueError, binascii.Error):
        raise ClientError(f"key {kid!r} has a modulus that is not base64url") from None


def granted_scope(requested: str | None, allowed: Iterable[str]) -> str:
    """The scope a token gets for ``requested`` (space-separated), or ScopeError.

    Every requested scope must be one the service knows; ``system/*.read`` is narrowed to
    the one resource it serves. The result must be among the client's registered scopes.
    """
    words = (requested or "").split()
    if not words:
        raise ScopeError(f"scope is required; ask for {SCOPE_READ}")
    unknown = sorted(w for w in set(words) if w not in NARROWED_SCOPES)
    if unknown:
        raise ScopeError(f"unknown scope(s) {', '.join(unknown)}; this server grants "
                         f"{SCOPE_READ} only")
    granted = sorted({NARROWED_SCOPES[w] for w in words})
    missing = [s for s in granted if s not in set(allowed)]
    if missing:
        raise ScopeError(f"the client is not registered for {', '.join(missing)}")
    return " ".join(granted)


def register_client(
    conn: Connection, *, jwks: dict[str, Any], recipient: str, clinics: Sequence[str],
    scopes: Sequence[str] = (SCOPE_READ,), label: str | None = None,
    now: datetime | None = None,
) -> str:
    """Register an EHR by its public JWKS; returns the new client id."""
    check_jwks(jwks)
    if not RECIPIENT_RE.match(recipient or ""):
        raise ClientError("the recipient is the id the clients' consents name: 1-128 "
                          f"letters, digits, '.', '_' or '-', got {recipient!r}")
    clinics = sorted({c for c in clinics if c})
    if not clinics:
        raise ClientError("an EHR client needs at least one clinic")
    unknown = sorted(set(scopes) - {SCOPE_READ})
    if not scopes or unknown:
        raise ClientError(f"a client may be registered for {SCOPE_READ} only")
    client_id = secrets.token_hex(6)
    conn.execute(insert(ehr_clients).values(
        client_id=client_id, label=label, jwks_json=json.dumps(jwks, sort_keys=True),
        recipient=recipient, clinics_json=json.dumps(clinics),
        scopes_json=json.dumps(sorted(set(scopes))), created_at=now or utcnow(),
    ))
    return client_id


def find_client(conn: Connection, client_id: str) -> EhrClient | None:
    """The registered client with this id, revoked or not; None for an unknown one."""
    if not isinstance(client_id, str) or not CLIENT_ID_RE.match(client_id):
        return None
    row = conn.execute(select(ehr_clients).where(ehr_clients.c.client_id == client_id)).first()
    return _client(row) if row is not None else None


def list_clients(conn: Connection) -> list[EhrClient]:
    """Every registered client, newest first."""
    rows = conn.execute(select(ehr_clients).order_by(ehr_clients.c.created_at.desc(),
                                                     ehr_clients.c.client_id))
    return [_client(r) for r in rows]


def revoke_client(conn: Connection, client_id: str, now: datetime | None = None) -> int:
    """Refuse the client from now on, and revoke its live access tokens; returns how many.

    Revoking twice keeps the first time. The client's row is updated first: a token being
    issued meanwhile either is seen here or sees the revocation (``issue_token``).
    """
    now = now or utcnow()
    found = find_client(conn, client_id)
    if found is None:
        raise ClientError(f"no EHR client with id {client_id!r}; "
                          "`retention ehr-clients list` shows the ids")
    conn.execute(update(ehr_clients).where(ehr_clients.c.client_id == client_id,
                                           ehr_clients.c.revoked_at.is_(None))
                 .values(revoked_at=now))
    return _revoke_tokens(conn, client_id, now)


def _revoke_tokens(conn: Connection, client_id: str, now: datetime,
                   key_id: str | None = None) -> int:
    k = api_keys.c
    conditions = [k.label == token_label(client_id), k.revoked_at.is_(None),
                  or_(k.expires_at.is_(None), k.expires_at > now)]
    if key_id is not None:
        conditions.append(k.key_id == key_id)
    result = conn.execute(update(api_keys).where(and_(*conditions)).values(revoked_at=now))
    return int(result.rowcount or 0)


def use_jti(conn: Connection, client_id: str, jti: str, expires_at: datetime,
            now: datetime) -> bool:
    """Record an assertion id; False if the client used it before (a replay).

    Kept until the assertion expires (after that the assertion itself is refused); the
    client's expired ids are deleted first. One statement decides: two requests with the
    same id at once cannot both pass.
    """
    if not jti or len(jti) > MAX_JTI:
        return False
    conn.execute(delete(ehr_client_jtis).where(ehr_client_jtis.c.client_id == client_id,
                                               ehr_client_jtis.c.expires_at < now))
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = (dialect.insert(ehr_client_jtis)
                 .values(client_id=client_id, jti=jti, expires_at=expires_at)
                 .on_conflict_do_nothing().returning(ehr_client_jtis.c.jti))
    return conn.execute(statement).first() is not None


def issue_token(conn: Connection, client: EhrClient, lifetime: timedelta,
                now: datetime) -> tuple[str, str]:
    """Mint the client's access token, an ``ehr`` key expiring after ``lifetime``; returns
    (key id, token).

    The client is read again, locked against a concurrent revocation, after the key is
    made: either the revocation's UPDATE of the keys sees this key, or this read sees the
    revocation and the key is revoked before anyone has it.
    """
    key_id, token = create_key(
        conn, "ehr", client.clinics, label=token_label(client.client_id),
        expires_at=now + lifetime, now=now, recipient=client.recipient)
    revoked = conn.execute(select(ehr_clients.c.revoked_at)
                           .where(ehr_clients.c.client_id == client.client_id)
                           .with_for_update(read=True)).scalar()
    if revoked is not None:
        _revoke_tokens(conn, client.client_id, now, key_id)
        raise ClientError(f"EHR client {client.client_id} has been revoked")
    return key_id, token


def _client(row: Any) -> EhrClient:
    return EhrClient(
        client_id=row.client_id, label=row.label, jwks=json.loads(row.jwks_json),
        recipient=row.recipient, clinics=tuple(json.loads(row.clinics_json)),
        scopes=tuple(json.loads(row.scopes_json or "[]")), created_at=row.created_at,
        revoked_at=row.revoked_at,
    )
