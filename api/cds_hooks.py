"""CDS Hooks 2.0: a dropout-risk card in the EHR when a clinician opens a client's chart.

``GET /cds-services`` lists one service, ``retention-dropout-risk`` on the
``patient-view`` hook; ``POST /cds-services/retention-dropout-risk`` answers a hook call
with at most one card. Every record here is a 42 CFR Part 2 record, so a card is a
disclosure: the EHR must be a registered client (``retention.access.ehr_clients``) and
the client's consent must name its recipient, or the answer is ``{"cards": []}``, exactly
as for a patient the service does not know. Each call leaves one audit record.

The EHR proves who it is with the JWT the specification's "Trusting CDS Clients" section
describes, signed (ES384 or RS384) with a key from the JWKS registered for it: ``iss`` is
its client id, ``aud`` this endpoint's URL built from ``public_base_url`` (never from the
Host header), ``exp`` at most five minutes ahead, ``jti`` used once. A ``jku`` header is
ignored: fetching a URL the token names would let anyone point the service at a key of
their own (and at any address it can reach); only the registered JWKS is trusted.
"""

from __future__ import annotations

import json
import logging
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, NoReturn, TypeGuard
from urllib.parse import quote

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import Connection
from werkzeug.exceptions import HTTPException

from retention.access.consent import NOTICE
from retention.access.ehr_clients import (
    CLIENT_ID_RE,
    MAX_JTI,
    SCOPE_READ,
    EhrClient,
    find_client,
    use_jti,
)
from retention.access.identifiers import client_by_identifier
from retention.access.keys import Caller
from retention.access.scope import client_exists, read_client
from retention.api.auth import (
    StaleClaim,
    audit,
    connection,
    consent_scope,
    deny,
    deny_counted,
    disclosable,
    disclosure_policy,
    rate_limit,
    read_cache,
    throttle_address,
)
from retention.api.errors import Problem
from retention.api.routes import publication
from retention.api.services import services, state
from retention.api.web.views import pct

log = logging.getLogger(__name__)

bp = Blueprint("cds_hooks", __name__, url_prefix="/cds-services")

SERVICE_ID = "retention-dropout-risk"
HOOK = "patient-view"
ACTION = "cds.patient_view"
# The specification recommends ES384 and RS384 and forbids "none" and symmetric (HS*)
# algorithms; the registered keys are checked for these two at registration.
ALGORITHMS = ("ES384", "RS384")
# "exp" at most this far ahead (the specification's five minutes), and the clock skew
# allowed between the EHR and this service on "exp" and "iat".
MAX_LIFETIME = timedelta(minutes=5)
LEEWAY = timedelta(seconds=30)
MAX_TOKEN_CHARS = 8192
MAX_BODY_BYTES = 256 * 1024
# A FHIR resource id (FHIR R4, datatypes "id").
FHIR_ID_RE = re.compile(r"^[A-Za-z0-9.-]{1,64}$")
# A high risk needs attention today, but it is not an order to stop what one is doing:
# "critical" makes many EHRs interrupt the clinician, so high is a "warning". Medium is
# "info"; a low risk gets no card (nothing to interrupt anyone for).
INDICATORS = {"high": "warning", "medium": "info"}
SUMMARY_MAX = 139  # "<140-character summary"
# When the list gives no reasons (they are worded for the top of the list only).
NEUTRAL_STEP = "Reach out before the next session; revisit goals and tasks together."
NO_CARDS: dict[str, list[Any]] = {"cards": []}


class Refused(Exception):
    """A JWT that does not prove a registered, active EHR client made this call."""

    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail


# Said for every failure that concerns who signed, so a caller learns nothing about
# which client ids exist or have been revoked; the audit record keeps the real outcome.
NOT_TRUSTED = ("the JWT's iss is not a registered EHR client, or its signature does not "
               "verify with a key registered for it")


def service_url(base_url: str) -> str:
    """This service's endpoint: what the JWT's ``aud`` must be."""
    return f"{base_url.rstrip('/')}/cds-services/{SERVICE_ID}"


def verify_jwt(conn: Connection, token: str, audience: str, now: datetime) -> EhrClient:
    """The registered client that signed ``token`` for ``audience``; Refused otherwise.

    Checked in this order: the header (alg, kid), the issuer (registered, not revoked),
    the signature with the registered key of that kid, then aud, exp, iat and jti. The jti
    is recorded last, once everything else holds, so a forged token cannot spend an id.
    """
    if len(token) > MAX_TOKEN_CHARS:
        raise Refused("unauthenticated", "the JWT is too long")
    try:
        signed = jws.extract_compact(token.encode())
        header = signed.headers()
        claims = json.loads(signed.payload or b"")
    except (JoseError, ValueError, TypeError):
        raise Refused("unauthenticated", "the bearer token is not a signed JWT") from None
    if not isinstance(claims, dict):
        raise Refused("unauthenticated", "the JWT's payload is not a JSON object")
    if header.get("alg") not in ALGORITHMS:
        raise Refused("bad_algorithm", f"the JWT must be signed with {' or '.join(ALGORITHMS)}, "
                      f"not {header.get('alg')!r}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise Refused("unauthenticated", "the JWT header must name its key (kid)")
    iss = claims.get("iss")
    client = find_client(conn, iss) if isinstance(iss, str) else None
    if client is None:
        raise Refused("unknown_client", NOT_TRUSTED)
    if not client.active:
        raise Refused("revoked", NOT_TRUSTED)
    if not _signed_by(client, signed, kid):
        raise Refused("bad_signature", NOT_TRUSTED)
    _check_claims(claims, audience, now)
    expires = datetime.fromtimestamp(claims["exp"], UTC).replace(tzinfo=None) + LEEWAY
    if not use_jti(conn, client.client_id, claims["jti"], expires, now):
        raise Refused("replayed", "this JWT's jti has been used before; sign a new JWT for "
                      "each call")
    return client


def _signed_by(client: EhrClient, signed: jws.CompactSignature, kid: str) -> bool:
    """Whether the registered key ``kid`` of ``client`` made the signature."""
    try:
        key = KeySet.import_key_set(client.jwks).get_by_kid(kid)  # type: ignore[arg-type]
    except JoseError:  # no key of that kid
        return False
    except (ValueError, TypeError, KeyError):
        log.error("the JWKS registered for EHR client %s cannot be read", client.client_id)
        return False
    try:
        return jws.validate_compact(signed, key, algorithms=ALGORITHMS)
    except (JoseError, ValueError, TypeError):  # e.g. an RSA key named for an ES384 JWT
        return False


def _check_claims(claims: Mapping[str, Any], audience: str, now: datetime) -> None:
    """aud names this endpoint; exp is ahead, by at most five minutes; iat is not ahead."""
    aud = claims.get("aud")
    if not (aud == audience or (isinstance(aud, list) and audience in aud)):
        raise Refused("bad_audience", f"the JWT's aud must be {audience}")
    exp, iat, jti = claims.get("exp"), claims.get("iat"), claims.get("jti")
    if not _number(exp) or not _number(iat):
        raise Refused("unauthenticated", "the JWT needs exp and iat, in seconds since 1970")
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI:
        raise Refused("unauthenticated", f"the JWT needs a jti of 1 to {MAX_JTI} characters, "
                      "unique to each call")
    at = now.replace(tzinfo=UTC).timestamp()
    leeway = LEEWAY.total_seconds()
    if exp <= at - leeway:
        raise Refused("expired", "the JWT has expired")
    if exp > at + MAX_LIFETIME.total_seconds() + leeway:
        raise Refused("exp_too_far", "the JWT's exp must be at most five minutes ahead")
    if iat > at + leeway:
        raise Refused("not_yet_valid", "the JWT's iat is in the future; check the EHR's clock")


def _number(value: Any) -> TypeGuard[int | float]:
    """A JSON number that is a time: not a bool, and not NaN or infinite (which Python's
    JSON reader accepts, and which every comparison would let through)."""
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value)


@dataclass(frozen=True)
class HookCall:
    """What a valid ``patient-view`` call asks about."""

    hook_instance: str
    patient_id: str


def parse_hook_call(body: Any) -> HookCall:
    """The call's hook instance and patient id; Problem 400 if the body is not one."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object (a CDS Hooks request)")
    if body.get("hook") != HOOK:
        raise ValueError(f"this service answers the {HOOK} hook, not {body.get('hook')!r}")
    instance, context = body.get("hookInstance"), body.get("context")
    if not isinstance(instance, str) or not instance:
        raise ValueError("hookInstance is required")
    if not isinstance(context, dict):
        raise ValueError("context is required, with patientId")
    patient = context.get("patientId")
    if not isinstance(patient, str) or not FHIR_ID_RE.match(patient):
        raise ValueError("context.patientId must be a FHIR Patient id")
    return HookCall(instance, patient)


def resolve_patient(conn: Connection, patient_id: str, system: str) -> str | None:
    """The client a FHIR Patient id names: through ``system`` if one is set, else itself.

    With a system configured, an id not found under it is unknown: read as one of the
    service's own client ids it could name another person (a wrong-patient card). The
    copy holds each (system, value) once, so an identifier names at most one client.
    """
    return client_by_identifier(conn, system, patient_id) if system else patient_id


def card(row: Mapping[str, Any], pub: Mapping[str, Any], base_url: str, horizon_days: int,
         today: date) -> dict[str, Any] | None:
    """The card for one published row; None for a low risk (nothing to act on)."""
    indicator = INDICATORS.get(row["tier"])
    if indicator is None:
        return None
    risk, reasons = pct(row["risk"]), list(row.get("reasons") or [])
    lead = f"Dropout risk {row['tier'].upper()} ({risk})"
    summary = lead
    for words in ([reasons[0]["text"], reasons[0]["title"]] if reasons else []):
        if words and len(f"{lead} — {words}") <= SUMMARY_MAX:
            summary = f"{lead} — {words}"
            break
    as_of: date = pub["as_of"]
    lines = [f"**{risk}** risk of disengaging in the next {horizon_days} days "
             f"({row['tier']} tier), from the list of {as_of.isoformat()} "
             f"(model {pub['model_version']})."]
    age = (today - as_of).days
    if age > 1:
        lines.append(f"This list is {age} days old: the nightly run has not published since.")
    if reasons:
        lines.append("**Why**")
        lines.append("\n".join(_reason_lines(i, r) for i, r in enumerate(reasons, start=1)))
    else:
        lines.append(f"No single reason stands out on the list. **Next step:** {NEUTRAL_STEP}")
    scope = consent_scope(row["client_id"])
    lines += ["---", *([scope] if scope else []), NOTICE]
    client_url = f"{base_url.rstrip('/')}/web/clients/{quote(row['client_id'], safe='')}"
    return {
        "uuid": str(uuid.uuid4()),
        "summary": summary,
        "indicator": indicator,
        "detail": "\n\n".join(lines),
        "source": {"label": "retention"},
        "links": [{"label": "Open in retention", "url": client_url, "type": "absolute"}],
    }


def _reason_lines(number: int, reason: Mapping[str, Any]) -> str:
    line = f"{number}. {reason['text']}"
    if reason.get("suggestion"):
        line += f"  \n   **Next step:** {reason['suggestion']}"
    return line


def discovery_entry(horizon_days: int) -> dict[str, Any]:
    """The one service this server offers, as the discovery response lists it."""
    return {
        "hook": HOOK,
        "id": SERVICE_ID,
        "title": "Dropout risk",
        "description": (
            f"The client's risk of disengaging from treatment in the next {horizon_days} "
            "days, from the clinic's latest published list, with its reasons and a "
            "suggested next step. A high risk is a warning card, a medium one an info "
            "card; a low risk, or a client not on the list, returns no card."),
        "usageRequirements": (
            "The EHR is registered with the service by its public JWKS and signs each call "
            "(ES384 or RS384; iss is its client id, aud this service's URL). A card is a "
            "disclosure under 42 CFR Part 2: without the client's consent naming the EHR's "
            "recipient id for treatment, no card is returned. context.patientId is matched "
            "to the client through the identifier system the clinic configured."),
    }


@bp.get("")
def discovery() -> ResponseReturnValue:
    """The services offered: public, since it names no client (a JWT sent is ignored)."""
    return jsonify({"services": [discovery_entry(services().settings.horizon_days)]})


@bp.post(f"/{SERVICE_ID}")
def dropout_risk() -> ResponseReturnValue:
    """Answer a ``patient-view`` call: the client's card, or none."""
    base_url = services().settings.public_base_url
    if not base_url:
        raise deny(ACTION, 503, "error", "the service's public_base_url is not set, so the "
                   "JWT's aud cannot be checked; the operator must set it", "CDS Hooks "
                   "unavailable")
    client = _authenticate(service_url(base_url))
    current = state()
    current.caller = Caller(key_id=client.client_id, role="ehr", clinics=client.clinics,
                            recipient=client.recipient)
    rate_limit(ACTION, f"ehr:{client.client_id}", "calls a minute from this EHR client")
    if SCOPE_READ not in client.scopes:
        raise deny(ACTION, 403, "forbidden", f"the EHR client is not registered for "
                   f"{SCOPE_READ}", "Forbidden")
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise deny(ACTION, 413, "bad_request", f"the request body is larger than "
                   f"{MAX_BODY_BYTES} bytes", "Request too large")
    try:
        call = parse_hook_call(request.get_json(force=True, silent=True))
    except ValueError as exc:
        raise deny(ACTION, 400, "bad_request", str(exc), "Invalid CDS Hooks request") from None
    try:
        return _serve(call, base_url)
    except StaleClaim:
        _forget_publications()
    try:  # from the database this time
        return _serve(call, base_url)
    except StaleClaim:
        _forget_publications()
        raise deny(ACTION, 503, "error", "the list was replaced while this request read "
                   "it; retry", "List changed") from None


def _authenticate(audience: str) -> EhrClient:
    """The EHR client whose JWT this request carries; 401 (or 429) audited otherwise."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        _refuse(Refused("unauthenticated", "send the EHR's signed JWT as "
                        "'Authorization: Bearer <JWT>'"))
    current = state()
    current.claimed_key_id = _claimed_issuer(token)
    conn = connection()
    try:
        client = verify_jwt(conn, token, audience, services().clock.now())
    except Refused as refused:
        _refuse(refused)
    # The jti is spent from now on, whatever happens next (SQLite needs the commit;
    # PostgreSQL runs the API's statements in autocommit).
    conn.commit()
    return client


def _claimed_issuer(token: str) -> str | None:
    """The client id an unverified JWT claims, for the audit record of its refusal."""
    if len(token) > MAX_TOKEN_CHARS:
        return None
    try:
        iss = json.loads(jws.extract_compact(token.encode()).payload or b"").get("iss")
    except (JoseError, ValueError, TypeError, AttributeError):
        return None
    return iss if isinstance(iss, str) and CLIENT_ID_RE.match(iss) else None


def _refuse(refused: Refused) -> NoReturn:
    """401, audited; counted against the address, so a flood of bad JWTs meets 429."""
    throttle_address(ACTION)
    problem = deny_counted(ACTION, 401, refused.outcome, refused.detail,
                           "Authentication required")
    problem.headers = {"WWW-Authenticate": 'Bearer realm="retention", error="invalid_token"'}
    raise problem


def _serve(call: HookCall, base_url: str) -> ResponseReturnValue:
    """Decide, audit (one record), then answer; an error is audited as the API does."""
    try:
        body, outcome, client_ids = _decide(call, base_url)
    except HTTPException as exc:
        status = exc.code or 500
        audit(ACTION, "bad_request" if status == 400 else "error", status, after_error=True)
        raise
    except Exception:
        audit(ACTION, "error", 500, after_error=True)
        raise
    audit(ACTION, outcome, 200, client_ids)
    return jsonify(body)


def _decide(call: HookCall, base_url: str) -> tuple[dict[str, Any], str, tuple[str, ...]]:
    """The response body, and the audit record's outcome and client ids."""
    found = services()
    conn = connection()
    client_id = resolve_patient(conn, call.patient_id, found.settings.cds_patient_id_system)
    if client_id is None:
        return NO_CARDS, "not_found", ()
    try:
        pub = publication(None)
    except Problem as exc:
        if exc.code != 404:
            raise
        return NO_CARDS, "not_found", (client_id,)
    who = state().caller
    assert who is not None
    if client_id not in disclosable([client_id]):
        seen = client_exists(conn, client_id, pub["as_of"])
        return NO_CARDS, "denied" if seen else "not_found", (client_id,)
    rows = read_client(conn, who, client_id, pub["as_of"], 1, policy=disclosure_policy())
    if not rows or rows[0]["as_of"] != pub["as_of"]:
        # Outside the EHR's clinics and absent look the same to it; the audit knows.
        seen = client_exists(conn, client_id, pub["as_of"])
        return NO_CARDS, "denied" if seen else "not_found", (client_id,)
    made = card(rows[0], pub, base_url, found.settings.horizon_days, found.clock.today())
    return {"cards": [made] if made else []}, "ok", (client_id,)


def _forget_publications() -> None:
    """The list turned out replaced: read it again from the database."""
    read_cache().publications.clear()
    current = state()
    current.publication_claim = None
    current.disclosure = {}
