"""The OpenAPI 3.1 description of this API, served at /openapi.json.

Written by hand next to the routes and checked against the real responses by
schemathesis (tests/api/test_openapi.py), so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from retention.api.routes import MAX_CURSOR_LENGTH, TIERS, settings

bp = Blueprint("openapi", __name__)

JSON, PROBLEM, FHIR = "application/json", "application/problem+json", "application/fhir+json"
STR = {"type": "string"}
# Query and path text: the API refuses control characters in any of it (400).
PLAIN = r"\x00-\x1f\x7f"
TEXT = {"type": "string", "pattern": f"^[^{PLAIN}]*$"}
NULLABLE_STR = {"type": ["string", "null"]}
DATE = {"type": "string", "format": "date"}
REF = "#/components/schemas/"
# A FHIR date search value: optional prefix, then a real calendar day (29 February
# is left out of the pattern, though the server takes it in leap years).
FHIR_DATE = (r"^(eq|ge|le|gt|lt)?(?!0000)[0-9]{4}-((0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])"
             r"|(0[13-9]|1[0-2])-(29|30)|(0[13578]|1[02])-31)$")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def _obj(required: dict[str, Any], **optional: Any) -> dict[str, Any]:
    return {"type": "object", "required": list(required),
            "properties": {**required, **optional}}


def _problem(description: str, **headers: Any) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description,
                                "content": {PROBLEM: {"schema": _ref("Problem")}}}
    if headers:
        response["headers"] = headers
    return response


def _responses(ok: dict[str, Any], *extra: int, secured: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"200": ok}
    if 400 in extra or secured:
        out["400"] = _problem("A query parameter is unknown, repeated or invalid")
    if secured:
        out["401"] = _problem("No API key, or one that is unknown, expired or revoked", **{
            "WWW-Authenticate": {"required": True, "schema": STR}})
        out["403"] = _problem("The key's role may not use this endpoint")
        out["429"] = _problem("Too many requests this minute: for this key, or from this "
                              "address without a valid key", **{
            "Retry-After": {"required": True, "schema": {"type": "string",
                                                          "pattern": "^[0-9]+$"}}})
    for status in extra:
        out.setdefault(str(status), _problem({
            404: "Not found (or outside the caller's scope: the two look the same)",
            503: "A dependency (store, audit trail, rate-limit store) is unavailable",
        }[status]))
    out["500"] = _problem("Unexpected failure (no details are given)")
    return out


def json_ok(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref(schema)}}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def _schemas(max_limit: int) -> dict[str, Any]:
    reason = _obj({
        "code": STR, "family": STR,
        "direction": {"enum": ["concern", "reassuring", "context"],
                      "description": "which way the fact points: reasons are concerns, "
                                     "protective factors reassuring, context neither"},
        "title": STR, "text": STR,
        "log_odds": {"type": "number"},
        "percentage_points": {"type": "number",
                              "description": "points of the displayed risk (see points)"},
        "suggestion": {**STR, "description": "a next step; empty for what is going well"},
        "appointment_ids": {"type": "array", "items": STR},
        "measure_ids": {"type": "array", "items": STR},
    })
    prompt = _obj({"code": STR, "family": STR, "text": STR})
    number = {"type": "number"}
    points = {"oneOf": [{"type": "null"}, _obj({
        "start": number, "reasons": number, "protective": number, "context": number,
        "other": number, "risk": number})],
        "description": "Where the risk comes from, in points (percent): the starting point "
                       "(a client with typical values on every input) plus the reasons, "
                       "what is going well, the context and everything else add up to the "
                       "risk. Null for rows below the explained top of the list."}
    item = _obj({
        "rank": {"type": "integer", "minimum": 1,
                 "description": "position in what the caller may see, after the filters"},
        "client_id": STR, "episode_id": STR,
        "clinic_id": STR, "case_manager_id": NULLABLE_STR, "program": STR,
        "risk": {"type": "number", "minimum": 0, "maximum": 1},
        "tier": {"enum": list(TIERS)}, "still_engaged": {"type": "boolean"},
        "last_attended_on": {"type": ["string", "null"], "format": "date"},
        "next_booked_at": {**NULLABLE_STR, "description": "local clinic time, no offset"},
        "reasons": {"type": "array", "items": _ref("Reason"), "maxItems": 10},
        "protective": {"type": "array", "items": _ref("Reason"), "maxItems": 10},
        "context": {"type": "array", "items": _ref("Reason"), "maxItems": 10},
        "prompts": {"type": "array", "items": _ref("Prompt"), "maxItems": 10},
        "points": points,
    })
    item["additionalProperties"] = False
    freshness = {
        "as_of": DATE, "model_version": STR, "published_at": STR,
        "age_days": {"type": "integer"}, "stale": {"type": "boolean"},
        # Population stability of the list's run against the training data.
        "drift": _obj({"drifted": {"type": "boolean"},
                       "flagged": {"type": "array", "items": STR},
                       "score_psi": {"type": ["number", "null"]},
                       "explanation": {**NULLABLE_STR,
                                       "description": "what changed and what to do, when "
                                                      "drifted"}}),
    }
    history = _obj({"as_of": DATE, "episode_id": STR, "risk": {"type": "number"},
                    "tier": {"enum": list(TIERS)}, "rank": {"type": "integer"}})
    return {
        "Problem": _obj({"type": STR, "title": STR, "status": {"type": "integer"},
                         "detail": STR}, instance=STR),
        "Reason": reason,
        "Prompt": prompt,
        "ListItem": item,
        "Freshness": _obj(freshness),
        "RiskList": _obj({**freshness, "count": {"type": "integer", "minimum": 0,
                                                 "maximum": max_limit},
                          "next_cursor": NULLABLE_STR,
                          "items": {"type": "array", "items": _ref("ListItem"),
                                    "maxItems": max_limit}}),
        "ClientRisk": _obj({**freshness, "client_id": STR, "current": _ref("ListItem"),
                            "history": {"type": "array", "items": history}}),
        "Health": _obj({"status": {"const": "ok"},
                        "list": {"oneOf": [_ref("Freshness"), {"type": "null"}]}}),
        "Ready": _obj({"status": {"const": "ready"}, "list": _ref("Freshness")}),
        "Models": _obj({"items": {"type": "array", "items": _obj({
            "version": STR, "created_at": NULLABLE_STR, "trained_as_of": NULLABLE_STR,
            "current": {"type": "boolean"}})}}),
        "ModelCard": _obj({"version": STR, "current": {"type": "boolean"},
                           "features": {"type": "array", "items": _obj({"name": STR})}},
                          task=NULLABLE_STR, metrics={"type": ["object", "null"]},
                          window={"type": ["object", "null"]}),
        "Runs": _obj({"items": {"type": "array", "items": _obj({
            "run_id": {"type": "integer"}, "kind": STR, "status": STR,
            "failed": {"type": "boolean"}})}}),
        "Bundle": _obj({
            "resourceType": {"const": "Bundle"}, "type": {"const": "searchset"},
            "total": {"type": "integer", "minimum": 0},
            "entry": {"type": "array", "items": _obj({"fullUrl": STR, "resource": _obj({
                "resourceType": {"const": "RiskAssessment"}, "id": STR,
                "status": {"const": "final"}, "subject": {"type": "object"},
                "occurrenceDateTime": DATE,
                "prediction": {"type": "array", "minItems": 1}})})},
        }),
    }


def document(max_limit: int) -> dict[str, Any]:
    """The whole OpenAPI 3.1 document."""
    as_of = _query("as_of", DATE, "Date of a published list (default: the newest)")
    list_params = [
        _query("limit", {"type": "integer", "minimum": 1, "maximum": max_limit},
               f"Page size (default 50, at most {max_limit})"),
        _query("cursor", {"type": "string", "maxLength": MAX_CURSOR_LENGTH,
                          "pattern": "^[A-Za-z0-9_.-]+$"},
               "next_cursor from the previous page, with the same key and filters (signed: "
               "any other is a 400)"),
        as_of,
        _query("clinic_id", TEXT, "Only this clinic (within the key's clinics)"),
        _query("case_manager_id", TEXT, "Only this case manager's caseload"),
        _query("program", TEXT, "Only this program"),
        _query("tier", {"enum": list(TIERS)}, "Only this risk tier"),
        _query("min_risk", {"type": "number", "minimum": 0, "maximum": 1},
               "Only risk at or above this (0-1)"),
        _query("engaged_only", {"enum": ["true", "false"]},
               "true: only clients who attended recently"),
    ]
    secured: list[dict[str, list[str]]] = [{"apiKey": []}]
    client_id = {"name": "client_id", "in": "path", "required": True,
                 "schema": {"type": "string", "minLength": 1, "pattern": f"^[^/{PLAIN}]+$"}}
    paths = {
        "/v1/risk-list": {"get": {
            "operationId": "riskList", "summary": "The ranked list in the caller's scope",
            "security": secured, "parameters": list_params,
            "responses": _responses(json_ok("RiskList", "A page of the ranked list"),
                                    404, 503)}},
        "/v1/clients/{client_id}/risk": {"get": {
            "operationId": "clientRisk", "summary": "A client's risk, reasons and history",
            "security": secured, "parameters": [client_id, as_of],
            "responses": _responses(json_ok("ClientRisk", "The client's current risk"),
                                    404, 503)}},
        "/fhir/RiskAssessment": {"get": {
            "operationId": "fhirRiskAssessment",
            "summary": "FHIR R4 RiskAssessment search (probabilityDecimal on the 0-1 scale)",
            "security": secured,
            "parameters": [
                {"name": "subject", "in": "query", "required": True,
                 "schema": {"type": "string", "pattern": f"^(Patient/)?[^/{PLAIN}]+$"}},
                {"name": "date", "in": "query", "required": False,
                 "schema": {"type": "string", "pattern": FHIR_DATE}},
            ],
            "responses": _responses({"description": "A searchset Bundle",
                                     "content": {FHIR: {"schema": _ref("Bundle")}}}, 503)}},
        "/v1/models": {"get": {
            "operationId": "models", "summary": "Saved model versions", "security": secured,
            "responses": _responses(json_ok("Models", "Model versions"), 503)}},
        "/v1/models/{version}": {"get": {
            "operationId": "modelCard", "summary": "A model version's card",
            "security": secured,
            "parameters": [{"name": "version", "in": "path", "required": True,
                            "schema": {"type": "string", "minLength": 1,
                                       "pattern": f"^[^/{PLAIN}]+$"}}],
            "responses": _responses(json_ok("ModelCard", "The model card"), 404, 503)}},
        "/v1/runs": {"get": {
            "operationId": "runs", "summary": "Recent runs (analyst, admin)",
            "security": secured,
            "parameters": [_query("limit", {"type": "integer", "minimum": 1, "maximum": 200},
                                  "How many runs")],
            "responses": _responses(json_ok("Runs", "Runs, newest first"), 503)}},
        "/health": {"get": {
            "operationId": "health", "summary": "Liveness and the served list's age",
            "security": [],
            "responses": _responses(json_ok("Health", "Alive"), 503, secured=False)}},
        "/ready": {"get": {
            "operationId": "ready", "summary": "Ready: store, keys, audit, a published list",
            "security": [],
            "responses": _responses(json_ok("Ready", "Ready"), 503, secured=False)}},
        "/metrics": {"get": {
            "operationId": "metrics", "summary": "Prometheus metrics (no client data)",
            "security": [],
            "responses": {"200": {"description": "Prometheus text format",
                                  "content": {"text/plain": {"schema": STR}}},
                          "500": _problem("Unexpected failure")}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "retention", "version": "1",
                 "description": "Dropout risk for addiction-treatment clients, with reasons. "
                                "Protected health information: every read is audited."},
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer",
                                           "description": "`retention keys create`"}},
            "schemas": _schemas(max_limit),
        },
        "security": secured,
        "paths": paths,
    }


@bp.get("/openapi.json")
def openapi_document() -> ResponseReturnValue:
    """Public: the description holds no data."""
    return jsonify(document(settings().api_max_limit))
