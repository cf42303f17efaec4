"""HL7 FHIR R4 RiskAssessment search, for EHRs that show the risk next to the chart.

``GET /fhir/RiskAssessment?subject=Patient/<id>[&date=[ge|le|gt|lt|eq]YYYY-MM-DD]``
returns a searchset Bundle with one RiskAssessment per published list the client
is on, within the caller's scope. A subject outside the scope gives an empty
Bundle, exactly as an unknown one does. ``probabilityDecimal`` is on the 0-1 scale.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue

from retention.access.scope import client_exists, read_client
from retention.api.auth import CLIENT_DATA, caller, connection, requires, returning
from retention.api.errors import Problem
from retention.api.routes import check_params, settings

bp = Blueprint("fhir", __name__, url_prefix="/fhir")

FHIR_JSON = "application/fhir+json"
RISK_PROBABILITY = "http://terminology.hl7.org/CodeSystem/risk-probability"
MODEL_SYSTEM = "urn:retention:model-version"
OUTCOME_SYSTEM = "urn:retention:outcome"
QUALITATIVE = {"high": ("high", "High likelihood"), "medium": ("moderate", "Moderate likelihood"),
               "low": ("low", "Low likelihood")}
DATE_RE = re.compile(r"^(eq|ge|le|gt|lt)?(\d{4}-\d{2}-\d{2})$")
COMPARE: dict[str, Callable[[date, date], bool]] = {
    "eq": lambda a, b: a == b, "ge": lambda a, b: a >= b, "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b, "lt": lambda a, b: a < b,
}
INVALID = "Invalid search parameter"
SEARCH_PATH = "/fhir/RiskAssessment"
HISTORY_LIMIT = 200


def _subject() -> str:
    raw = request.args.get("subject") or ""
    client_id = raw.removeprefix("Patient/")
    if not client_id or "/" in client_id:
        raise Problem(400, "subject is required, as Patient/<client id>", INVALID)
    return client_id


def _date_tests() -> list[tuple[str, date]]:
    tests = []
    for raw in request.args.getlist("date"):
        match = DATE_RE.match(raw)
        try:
            day = date.fromisoformat(match.group(2)) if match else None
        except ValueError:
            day = None
        if match is None or day is None:
            raise Problem(400, f"date must be [eq|ge|le|gt|lt]YYYY-MM-DD, got {raw!r}", INVALID)
        tests.append((match.group(1) or "eq", day))
    return tests


def _fhir_id(episode_id: str, as_of: date) -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "-", f"{episode_id}.{as_of:%Y%m%d}")[:64]


def risk_assessment(row: dict[str, Any], horizon_days: int) -> dict[str, Any]:
    """One published row as a FHIR R4 RiskAssessment (reasons as rationale, evidence as basis)."""
    as_of: date = row["as_of"]
    code, display = QUALITATIVE.get(row["tier"], ("low", "Low likelihood"))
    basis: list[str] = []
    for reason in row["reasons"]:
        basis += [f"Appointment/{a}" for a in reason.get("appointment_ids", [])]
        basis += [f"QuestionnaireResponse/{m}" for m in reason.get("measure_ids", [])]
    rationale = "; ".join(r["text"] for r in row["reasons"]) or "No risk-raising factors found"
    return {
        "resourceType": "RiskAssessment",
        "id": _fhir_id(row["episode_id"], as_of),
        "status": "final",
        "subject": {"reference": f"Patient/{row['client_id']}"},
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
    }


@bp.get("/RiskAssessment")
@requires(CLIENT_DATA, "fhir.risk_assessment.search")
def search_risk_assessments() -> ResponseReturnValue:
    """A searchset Bundle of a client's RiskAssessments, newest first."""
    check_params({"subject", "date"})
    client_id = _subject()
    tests = _date_tests()
    conn = connection()
    rows = read_client(conn, caller(), client_id, date.max, HISTORY_LIMIT)
    if not rows:
        exists = client_exists(conn, client_id)
        returning([client_id], "denied" if exists else "not_found")
    rows = [r for r in rows if all(COMPARE[op](r["as_of"], day) for op, day in tests)]
    if rows:
        returning([client_id])
    horizon = settings().horizon_days
    resources = [risk_assessment(r, horizon) for r in rows]
    # Never from the Host header: a client could name any server in our links. Without
    # a configured base the self link is relative and entries carry no fullUrl (0..1).
    base = settings().public_base_url.rstrip("/")
    search = urlencode([("subject", f"Patient/{client_id}"),
                        *(("date", raw) for raw in request.args.getlist("date"))])
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "link": [{"relation": "self", "url": f"{base}{SEARCH_PATH}?{search}"}],
        "entry": [{**({"fullUrl": f"{base}{SEARCH_PATH}/{r['id']}"} if base else {}),
                   "resource": r, "search": {"mode": "match"}} for r in resources],
    }
    response: Response = jsonify(bundle)
    response.mimetype = FHIR_JSON
    return response
