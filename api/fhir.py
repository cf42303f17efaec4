"""HL7 FHIR R4 for EHRs that show the risk next to the chart (docs/fhir.md).

``GET /fhir/metadata`` is the CapabilityStatement (public: it holds no client data).
``GET /fhir/RiskAssessment?subject=...`` searches, ``GET /fhir/RiskAssessment/<id>``
reads one. Every answer is within the caller's scope and, for an outside recipient,
under a 42 CFR Part 2 consent naming it (``auth.disclosable``): a client out of scope
or without consent gets exactly the answer an unknown one gets (an empty Bundle, a
404). Every resource disclosed carries the Part 2 labels and notice (``fhir_labels``).
``probabilityDecimal`` is on the 0-1 scale.

Unknown search parameters are refused (400), whatever ``Prefer: handling`` says:
dropping a filter the client relies on would disclose more than it asked for.
"""

from __future__ import annotations

import calendar
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue
from itsdangerous import BadData
from sqlalchemy import ColumnElement, Connection, and_, func, not_, select

from retention import __version__
from retention.access.identifiers import client_by_identifier, identifiers_of
from retention.access.keys import Caller
from retention.access.scope import client_exists, scope_clause, scope_of
from retention.api.auth import (
    CLIENT_DATA,
    caller,
    connection,
    consent_scope,
    disclosable,
    disclosure_policy,
    outside,
    requires,
    returning,
)
from retention.api.errors import Problem
from retention.api.fhir_labels import label
from retention.api.routes import CURSOR_PATTERN, MAX_CURSOR_LENGTH, MAX_POSITION, cursors, settings
from retention.api.services import services
from retention.store.lists import score_row
from retention.store.tables import publications, scores

bp = Blueprint("fhir", __name__, url_prefix="/fhir")

FHIR_JSON = "application/fhir+json"
FHIR_VERSION = "4.0.1"
RISK_PROBABILITY = "http://terminology.hl7.org/CodeSystem/risk-probability"
MODEL_SYSTEM = "urn:retention:model-version"
OUTCOME_SYSTEM = "urn:retention:outcome"
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"
QUALITATIVE = {"high": ("high", "High likelihood"), "medium": ("moderate", "Moderate likelihood"),
               "low": ("low", "Low likelihood")}
INVALID = "Invalid search parameter"
SEARCH_PATH = "/fhir/RiskAssessment"

# --- parameters -------------------------------------------------------------------------

PAGE_TOKEN = "_page_token"
PATIENT_PARAMS = ("subject", "patient")
IDENTIFIER_PARAMS = ("identifier", "patient.identifier", "subject.identifier")
SEARCH_PARAMS = frozenset({*PATIENT_PARAMS, *IDENTIFIER_PARAMS, "date", "_count", "_format",
                           PAGE_TOKEN})
REPEATABLE = frozenset({"date"})  # each one more condition (AND)
DEFAULT_COUNT, MAX_COUNT = 50, 200
# "+" in a query string is a space unless the client encodes it: both spellings count.
JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json",
                          "application/json+fhir", "application/fhir json",
                          "application/json fhir"})
DATE_RE = re.compile(r"^(eq|ne|ge|le|gt|lt)?(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")
# An id is [A-Za-z0-9.-]{1,64}; ours are "<episode>.<yyyymmdd>" (see ``fhir_id``).
ID_RE = re.compile(r"^([A-Za-z0-9.-]{0,55})\.(\d{8})$")
SAFE_RE = re.compile(r"[A-Za-z0-9-]")
ESCAPE_RE = re.compile(r"\.([0-9A-F]{2})")
DIGEST_PREFIX = ".h"  # never produced by escaping: "h" is not an upper-case hex digit
DIGEST_CHARS = 40
MAX_EPISODE_PART = 64 - len(".yyyymmdd")


def check_format() -> None:
    """Only JSON is served: ``_format`` may ask for it, anything else is a 406."""
    values = request.args.getlist("_format")
    if len(values) > 1:
        raise Problem(400, "_format given more than once", INVALID)
    if values and values[0].strip().lower() not in JSON_FORMATS:
        raise Problem(406, f"only JSON is served (_format=json or application/fhir+json), "
                      f"not {values[0]!r}", "Not Acceptable")


def check_params(allowed: Iterable[str]) -> None:
    """Strict handling: an unknown or repeated parameter is a 400, never ignored."""
    unknown = sorted(request.args.keys() - set(allowed))
    if unknown:
        raise Problem(400, f"unknown search parameter(s): {', '.join(unknown)}; supported: "
                      f"{', '.join(sorted(allowed))} (this server ignores none)", INVALID)
    repeated = sorted(k for k, v in request.args.lists() if len(v) > 1 and k not in REPEATABLE)
    if repeated:
        raise Problem(400, f"search parameter(s) given more than once: {', '.join(repeated)}",
                      INVALID)


def _unescape(value: str, name: str) -> str:
    """One value of a search parameter: a list (unescaped ",") is not supported."""
    if re.search(r"(?<!\\),", value.replace("\\\\", "")):
        raise Problem(400, f"{name} takes one value; lists (a,b) are not supported", INVALID)
    return re.sub(r"\\([\\,$|])", r"\1", value)


def _patient_id(name: str, raw: str) -> str:
    client_id = _unescape(raw, name).removeprefix("Patient/")
    if not client_id or "/" in client_id:
        raise Problem(400, f"{name} must be Patient/<client id> or a client id", INVALID)
    return client_id


def _identifier(name: str, raw: str) -> tuple[str, str]:
    system, value = _split_token(raw)
    if not system or not value:
        raise Problem(400, f"{name} must be <system>|<value>, e.g. an MRN with its system",
                      INVALID)
    return _unescape(system, name), _unescape(value, name)


def _split_token(raw: str) -> tuple[str, str]:
    """``system|value`` split at the first unescaped "|" (no "|": no system, no value)."""
    parts = re.split(r"(?<!\\)\|", raw, maxsplit=1)
    return (parts[0], parts[1]) if len(parts) == 2 else ("", "")


@dataclass(frozen=True)
class DateTest:
    """One ``date`` parameter: a prefix and the days its value covers (a year, month or day)."""

    prefix: str
    first: date
    last: date

    def clause(self) -> ColumnElement[bool]:
        day = scores.c.as_of
        return {
            "eq": day.between(self.first, self.last),
            "ne": not_(day.between(self.first, self.last)),
            "ge": day >= self.first, "gt": day > self.last,
            "le": day <= self.last, "lt": day < self.first,
        }[self.prefix]


def _date_tests() -> list[DateTest]:
    """Each ``date`` parameter as the days it covers; 400 for one that is not a date."""
    tests = []
    for raw in request.args.getlist("date"):
        match = DATE_RE.match(raw)
        try:
            if match is None:
                raise ValueError(raw)
            prefix, year, month, day = match.groups()
            first = date(int(year), int(month or 1), int(day or 1))
        except ValueError:
            raise Problem(400, f"date must be [eq|ne|ge|le|gt|lt]YYYY[-MM[-DD]], got {raw!r}",
                          INVALID) from None
        if day:
            last = first
        elif month:  # to the month's last day (December 9999 included)
            last = first.replace(day=calendar.monthrange(first.year, first.month)[1])
        else:
            last = first.replace(month=12, day=31)
        tests.append(DateTest(prefix or "eq", first, last))
    return tests


def _count() -> int:
    """Page size: above the maximum is served as the maximum (FHIR lets a server cap it)."""
    raw = request.args.get("_count", str(DEFAULT_COUNT))
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9):
        raise Problem(400, f"_count must be a whole number (at most {MAX_COUNT} are served)",
                      INVALID)
    return min(int(raw), MAX_COUNT)


# --- ids --------------------------------------------------------------------------------


def fhir_id(episode_id: str, as_of: date) -> str:
    """``<episode>.<yyyymmdd>``: letters, digits and "-" as they are, any other character as
    ".XX" per UTF-8 byte (upper-case hex), so the id gives back the episode exactly.

    An episode id that would not fit FHIR's 64 characters escaped is named by a digest
    (".h" + 40 hex digits); reading one compares digests of that day's episodes.
    """
    encoded = "".join(c if SAFE_RE.fullmatch(c) else
                      "".join(f".{b:02X}" for b in c.encode()) for c in episode_id)
    if len(encoded) > MAX_EPISODE_PART:
        encoded = DIGEST_PREFIX + _digest(episode_id)
    return f"{encoded}.{as_of:%Y%m%d}"


def _digest(episode_id: str) -> str:
    return hashlib.sha256(episode_id.encode()).hexdigest()[:DIGEST_CHARS]


@dataclass(frozen=True)
class ParsedId:
    """What an id names: the day, and the episode (or, for a long one, its digest)."""

    as_of: date
    episode_id: str | None = None
    digest: str | None = None


def parse_id(raw: str) -> ParsedId | None:
    """The episode and day of an id ``fhir_id`` made; None for any other string."""
    match = ID_RE.match(raw)
    if match is None:
        return None
    encoded, day = match.groups()
    try:
        as_of = date(int(day[:4]), int(day[4:6]), int(day[6:]))
    except ValueError:
        return None
    if encoded.startswith(DIGEST_PREFIX):
        digest = encoded.removeprefix(DIGEST_PREFIX)
        ok = re.fullmatch(f"[0-9a-f]{{{DIGEST_CHARS}}}", digest) is not None
        return ParsedId(as_of, digest=digest) if ok else None
    raw_bytes = bytearray()
    for i, part in enumerate(ESCAPE_RE.split(encoded)):  # text, hex, text, ..., text
        raw_bytes += bytes.fromhex(part) if i % 2 else part.encode()
    try:
        episode_id = raw_bytes.decode("utf-8")
    except UnicodeDecodeError:
        return None
    # One spelling per resource: "A" written ".41" names nothing.
    return ParsedId(as_of, episode_id) if fhir_id(episode_id, as_of) == raw else None


# --- reads ------------------------------------------------------------------------------


def _scope(who: Caller) -> ColumnElement[bool]:
    """The caller's scope; for an outside recipient, only consented clients (as well as
    the ``disclosable`` check, which also records why a client was withheld)."""
    return scope_clause(who, policy=disclosure_policy() if outside() else None)


def _published(until: date) -> ColumnElement[bool]:
    return and_(scores.c.as_of <= until, scores.c.as_of.in_(select(publications.c.as_of)))


def newest_list(conn: Connection) -> date:
    """The newest published list's day: a search's pages are all read up to it."""
    found = conn.execute(select(func.max(publications.c.as_of))).scalar()
    return found if isinstance(found, date) else date.min


def search_rows(conn: Connection, who: Caller, client_id: str, tests: list[DateTest],
                until: date, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    """One page of a client's published rows in the caller's scope, newest first; and
    how many there are in all."""
    where = and_(scores.c.client_id == client_id, _published(until), _scope(who),
                 *(t.clause() for t in tests))
    total = conn.execute(select(func.count()).select_from(scores).where(where)).scalar_one()
    if not limit:  # _count=0: the total only
        return [], int(total)
    rows = conn.execute(select(scores).where(where)
                        .order_by(scores.c.as_of.desc(), scores.c.episode_id)
                        .offset(offset).limit(limit))
    return [score_row(r._mapping) for r in rows], int(total)


def read_row(conn: Connection, who: Caller, parsed: ParsedId) -> dict[str, Any] | None:
    """The published row an id names, if it is in the caller's scope."""
    query = select(scores).where(scores.c.as_of == parsed.as_of, _published(parsed.as_of),
                                 _scope(who))
    if parsed.episode_id is not None:
        found = conn.execute(query.where(scores.c.episode_id == parsed.episode_id)).first()
        return score_row(found._mapping) if found is not None else None
    # A long episode id: only its digest is in the id. That day's ids are few enough.
    for r in conn.execute(query):
        if _digest(r.episode_id) == parsed.digest:
            return score_row(r._mapping)
    return None


def client_of(conn: Connection, parsed: ParsedId) -> str | None:
    """Whose row the id names, whatever the scope: for the audit record of a denial."""
    query = select(scores.c.client_id, scores.c.episode_id).where(
        scores.c.as_of == parsed.as_of)
    if parsed.episode_id is not None:
        found = conn.execute(query.where(scores.c.episode_id == parsed.episode_id)).first()
        return found.client_id if found is not None else None
    return next((r.client_id for r in conn.execute(query)
                 if _digest(r.episode_id) == parsed.digest), None)


# --- resources --------------------------------------------------------------------------


def risk_assessment(row: dict[str, Any], horizon_days: int,
                    identifier: tuple[str, str] | None = None,
                    consent: str | None = None) -> dict[str, Any]:
    """One published row as a labelled FHIR R4 RiskAssessment (reasons as rationale,
    evidence as basis); ``identifier`` is the EHR's own for the patient, if it has one;
    ``consent`` the scope of the consent an outside recipient is given it under, which
    travels with the notice (42 CFR 2.32(b))."""
    as_of: date = row["as_of"]
    code, display = QUALITATIVE.get(row["tier"], ("low", "Low likelihood"))
    basis: list[str] = []
    for reason in row["reasons"]:
        basis += [f"Appointment/{a}" for a in reason.get("appointment_ids", [])]
        basis += [f"QuestionnaireResponse/{m}" for m in reason.get("measure_ids", [])]
    rationale = "; ".join(r["text"] for r in row["reasons"]) or "No risk-raising factors found"
    subject: dict[str, Any] = {"reference": f"Patient/{row['client_id']}"}
    if identifier is not None:
        subject["identifier"] = {"system": identifier[0], "value": identifier[1]}
    resource = label({
        "resourceType": "RiskAssessment",
        "id": fhir_id(row["episode_id"], as_of),
        "status": "final",
        "subject": subject,
        "occurrenceDateTime": as_of.isoformat(),
        "method": {
            "coding": [{"system": MODEL_SYSTEM, "code": row["model_version"]}],
            "text": f"retention dropout model {row['model_version']}",
        },
        "basis": [{"reference": ref} for ref in dict.fromkeys(basis)],
        "prediction": [{
            "outcome": {
                "coding": [{"system": OUTCOME_SYSTEM, "code": f"disengagement-{horizon_days}d"}],
                "text": f"Disengagement from treatment: no attended session and no planned "
                        f"discharge within {horizon_days} days",
            },
            "probabilityDecimal": row["risk"],
            "qualitativeRisk": {"coding": [{"system": RISK_PROBABILITY, "code": code,
                                            "display": display}]},
            "whenPeriod": {"start": as_of.isoformat(),
                           "end": (as_of + timedelta(days=horizon_days)).isoformat()},
            "rationale": rationale,
        }],
    })
    if consent is not None:
        resource["note"].append({"text": consent})
    return resource


def fhir_response(body: dict[str, Any]) -> Response:
    response: Response = jsonify(body)
    response.mimetype = FHIR_JSON
    return response


def base_url() -> str:
    """Absolute links only from the configured base, never from the Host header: a client
    could name any server there. Empty: links are relative and entries have no fullUrl."""
    return settings().public_base_url.rstrip("/")


# --- metadata ---------------------------------------------------------------------------

SEARCH_PARAM_DOCS = [
    {"name": "subject", "type": "reference",
     "definition": "http://hl7.org/fhir/SearchParameter/RiskAssessment-subject",
     "documentation": "Patient/<client id> or the bare client id; one value."},
    {"name": "patient", "type": "reference",
     "definition": "http://hl7.org/fhir/SearchParameter/clinical-patient",
     "documentation": "As subject. The chain patient.identifier=<system>|<value> (and "
                      "subject.identifier) finds the patient by the EHR's identifier."},
    {"name": "identifier", "type": "token",
     "documentation": "Not RiskAssessment.identifier (these resources have none): the "
                      "patient's EHR identifier as <system>|<value>, e.g. an MRN; the "
                      "same as patient.identifier."},
    {"name": "date", "type": "date",
     "definition": "http://hl7.org/fhir/SearchParameter/clinical-date",
     "documentation": "The assessment's day (occurrenceDateTime), as [eq|ne|ge|le|gt|lt]"
                      "YYYY[-MM[-DD]]; repeat it for a range (all must hold)."},
]


@bp.get("/metadata")
def capability_statement() -> ResponseReturnValue:
    """What this server does, for FHIR clients to discover; public, with no client data."""
    check_format()
    check_params({"_format", "mode"})
    if request.args.get("mode", "full") != "full":
        raise Problem(400, "only mode=full is supported", INVALID)
    base = base_url()
    security: dict[str, Any] = {
        "cors": False,
        "service": [{"coding": [{"system": SECURITY_SERVICE, "code": "SMART-on-FHIR"}],
                     "text": "SMART Backend Services (client credentials) or an API key, "
                             "sent as 'Authorization: Bearer <token>'"}],
        "description": "Every record is a 42 CFR Part 2 record: an outside recipient is "
                       "given a patient's data only under the patient's consent naming it.",
    }
    if base:  # SMART clients need an absolute token URL, and only the base gives one
        security["extension"] = [{"url": OAUTH_URIS, "extension": [
            {"url": "token", "valueUri": f"{base}/oauth/token"}]}]
    implementation: dict[str, Any] = {"description": "retention risk assessments"}
    if base:
        implementation["url"] = base
    statement = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": services().clock.today().isoformat(),
        "publisher": "retention",
        "kind": "instance",
        "software": {"name": "retention", "version": __version__},
        "implementation": implementation,
        "fhirVersion": FHIR_VERSION,
        "format": ["json", FHIR_JSON],
        "rest": [{
            "mode": "server",
            "documentation": "Strict search handling: an unknown search parameter is a 400 "
                             "(OperationOutcome), whatever Prefer: handling says, because "
                             "ignoring a filter would disclose more than was asked for. "
                             f"_count defaults to {DEFAULT_COUNT}, at most {MAX_COUNT}.",
            "security": security,
            "resource": [{
                "type": "RiskAssessment",
                "interaction": [{"code": "read"}, {"code": "search-type"}],
                "versioning": "no-version",
                "readHistory": False,
                "searchParam": SEARCH_PARAM_DOCS,
            }],
        }],
    }
    return fhir_response(statement)


# --- search and read --------------------------------------------------------------------


def _subject() -> tuple[str | None, tuple[str, str] | None]:
    """The client named by subject/patient and by an identifier (either may be absent)."""
    named = [(n, request.args[n]) for n in PATIENT_PARAMS if n in request.args]
    by_id = [(n, request.args[n]) for n in IDENTIFIER_PARAMS if n in request.args]
    if not named and not by_id:
        raise Problem(400, "name the patient: subject or patient (Patient/<client id>), or "
                      "identifier (<system>|<value>)", INVALID)
    ids = {_patient_id(n, raw) for n, raw in named}
    tokens = {_identifier(n, raw) for n, raw in by_id}
    if len(ids) > 1 or len(tokens) > 1:  # AND of two patients: nobody
        return None, None
    return next(iter(ids), None), next(iter(tokens), None)


def _view(who: Caller, client_id: str, tests: list[DateTest]) -> str:
    """What a page token belongs to: the caller's scope and the search, not the position."""
    seen = repr((scope_of(who), who.recipient, client_id, tests)).encode()
    return f"retention.fhir.page:{hashlib.sha256(seen).hexdigest()}"


def _page_token() -> str | None:
    """The request's page token, if any; one that cannot be a token of ours (its length,
    its characters) is a 400 before anything is looked up."""
    raw = request.args.get(PAGE_TOKEN)
    if raw is not None and (len(raw) > MAX_CURSOR_LENGTH
                            or not re.fullmatch(CURSOR_PATTERN, raw)):
        raise _not_our_token()
    return raw


def _not_our_token() -> Problem:
    return Problem(400, f"{PAGE_TOKEN} is not one this server returned for this search; "
                   "start again without it", INVALID)


def _page(raw: str | None, view: str, conn: Connection) -> tuple[date, int]:
    """Where this page starts: the token's pinned list day and offset, or the first page."""
    if raw is None:
        return newest_list(conn), 0
    try:
        body = cursors().loads(raw, salt=view)
        until, position = date.fromisoformat(body["until"]), body["pos"]
        if type(position) is not int or not 0 <= position <= MAX_POSITION:
            raise ValueError(position)
    except (BadData, ValueError, KeyError, TypeError):
        raise _not_our_token() from None
    return until, position


def _link(relation: str, base: str, **changes: str) -> dict[str, str]:
    """The request's own search (minus _format), with ``changes``."""
    params = [(k, v) for k, v in request.args.items(multi=True)
              if k != "_format" and k not in changes]
    return {"relation": relation,
            "url": f"{base}{SEARCH_PATH}?{urlencode([*params, *changes.items()])}"}


def _bundle(resources: list[dict[str, Any]], total: int, links: list[dict[str, str]],
            base: str) -> dict[str, Any]:
    return label({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": [{**({"fullUrl": f"{base}{SEARCH_PATH}/{r['id']}"} if base else {}),
                   "resource": r, "search": {"mode": "match"}} for r in resources],
    })


@bp.get("/RiskAssessment")
@requires(CLIENT_DATA, "fhir.risk_assessment.search")
def search_risk_assessments() -> ResponseReturnValue:
    """A searchset Bundle of a client's RiskAssessments, newest first, a page at a time."""
    check_format()
    check_params(SEARCH_PARAMS)
    client_id, by_identifier = _subject()
    tests = _date_tests()
    count = _count()
    token = _page_token()
    conn = connection()
    base = base_url()
    if by_identifier is not None:
        found = client_by_identifier(conn, *by_identifier)
        client_id = found if client_id in (None, found) else None
    rows: list[dict[str, Any]] = []
    total, links = 0, [_link("self", base)]
    if client_id is None or not disclosable([client_id]):
        # A denied client is answered as an unknown one, a page token included: no search
        # that finds no one gave one out.
        if token is not None:
            raise _not_our_token()
        if client_id is None:
            returning([], "not_found")
        else:
            returning([client_id], "denied")
    else:
        who = caller()
        view = _view(who, client_id, tests)
        until, offset = _page(token, view, conn)
        rows, total = search_rows(conn, who, client_id, tests, until, offset, count)
        if rows or total:
            returning([client_id])
        else:
            returning([client_id], "denied" if client_exists(conn, client_id) else "not_found")
        if count and offset + len(rows) < total:
            following = str(cursors().dumps({"until": until.isoformat(),
                                             "pos": offset + len(rows)}, salt=view))
            links.append(_link("next", base, _count=str(count), **{PAGE_TOKEN: following}))
    if rows and by_identifier is None:
        known = identifiers_of(conn, rows[0]["client_id"])
        by_identifier = known[0] if known else None
    horizon = settings().horizon_days
    resources = [risk_assessment(r, horizon, by_identifier, consent_scope(r["client_id"]))
                 for r in rows]
    return fhir_response(_bundle(resources, total, links, base))


@bp.get("/RiskAssessment/<string:resource_id>")
@requires(CLIENT_DATA, "fhir.risk_assessment.read")
def read_risk_assessment(resource_id: str) -> ResponseReturnValue:
    """One RiskAssessment by the id a search gave; unknown, out of scope and without
    consent are the same 404."""
    check_format()
    check_params({"_format"})
    conn = connection()
    parsed = parse_id(resource_id)
    row = read_row(conn, caller(), parsed) if parsed is not None else None
    if row is None or not disclosable([row["client_id"]]):
        owner = row["client_id"] if row is not None else (
            client_of(conn, parsed) if parsed is not None else None)
        returning([owner] if owner else [], "denied" if owner else "not_found")
        raise Problem(404, f"RiskAssessment/{resource_id} is not known", "Not Found")
    returning([row["client_id"]])
    known = identifiers_of(conn, row["client_id"])
    return fhir_response(risk_assessment(row, settings().horizon_days,
                                         known[0] if known else None,
                                         consent_scope(row["client_id"])))
