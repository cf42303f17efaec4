"""The OpenAPI 3.1 description of this API, served at /openapi.json.

Written by hand next to the routes and checked against the real responses by
schemathesis (tests/api/test_openapi.py), so the two cannot drift apart unnoticed; a
client generated from it with openapi-python-client calls every operation
(tests/api/test_generated_client.py), so every schema must be fully typed. Errors are
problem JSON, except under /fhir (OperationOutcome) and from /oauth/token (OAuth JSON).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from retention.access.ehr_clients import NARROWED_SCOPES, SIGNING_ALGORITHMS
from retention.api.cds_hooks import HOOK, SERVICE_ID
from retention.api.fhir import MAX_COUNT, PAGE_TOKEN
from retention.api.oauth import SMART_CONFIGURATION_PATH, TOKEN_PATH
from retention.api.routes import CURSOR_PATTERN, MAX_CURSOR_LENGTH, TIERS, settings

bp = Blueprint("openapi", __name__)

JSON, PROBLEM, FHIR = "application/json", "application/problem+json", "application/fhir+json"
FORM = "application/x-www-form-urlencoded"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
STR = {"type": "string"}
# Query and path text: the API refuses control characters in any of it (400).
PLAIN = r"\x00-\x1f\x7f"
TEXT = {"type": "string", "pattern": f"^[^{PLAIN}]*$"}
NULLABLE_STR = {"type": ["string", "null"]}
DATE = {"type": "string", "format": "date"}
REF = "#/components/schemas/"
# A FHIR date search value: optional prefix, then a year, a month or a real calendar day
# (29 February is left out of the pattern, though the server takes it in leap years).
FHIR_DATE = (r"^(eq|ne|ge|le|gt|lt)?(?!0000)[0-9]{4}(-(0[1-9]|1[0-2])"
             r"|-((0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])|(0[13-9]|1[0-2])-(29|30)"
             r"|(0[13578]|1[02])-31))?$")
# One value of a FHIR search parameter: no list (","), no escapes ("\\").
FHIR_VALUE = f"[^,\\\\{PLAIN}]+"
FHIR_ID = "^[A-Za-z0-9.-]{1,64}$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def _obj(required: dict[str, Any], **optional: Any) -> dict[str, Any]:
    return {"type": "object", "required": list(required),
            "properties": {**required, **optional}}


def _problem(description: str, **headers: Any) -> dict[str, Any]:
    return _error(PROBLEM, "Problem", description, **headers)


def _outcome(description: str, **headers: Any) -> dict[str, Any]:
    """An error under /fhir: an OperationOutcome, as FHIR clients expect."""
    return _error(FHIR, "OperationOutcome", description, **headers)


def _error(content_type: str, schema: str, description: str, **headers: Any
           ) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description,
                                "content": {content_type: {"schema": _ref(schema)}}}
    if headers:
        response["headers"] = headers
    return response


ERRORS = {
    400: "A query parameter is unknown, repeated or invalid",
    404: "Not found (or outside the caller's scope: the two look the same)",
    406: "A format other than JSON was asked for",
    413: "The request body is too large",
    415: "The request body is not of the documented type",
    503: "A dependency (store, audit trail, rate-limit store) is unavailable",
}
WWW_AUTHENTICATE = {"WWW-Authenticate": {"required": True, "schema": STR}}
RETRY_AFTER = {"Retry-After": {"required": True,
                               "schema": {"type": "string", "pattern": "^[0-9]+$"}}}


def _responses(ok: dict[str, Any], *extra: int, secured: bool = True,
               error: Callable[..., dict[str, Any]] = _problem) -> dict[str, Any]:
    """``ok`` as the 200, and the errors (``error`` makes their bodies) the API may send."""
    out: dict[str, Any] = {"200": ok}
    if 400 in extra or secured:
        out["400"] = error(ERRORS[400])
    if secured:
        out["401"] = error("No credential, or one that is unknown, expired or revoked",
                           **WWW_AUTHENTICATE)
        out["403"] = error("The caller's role may not use this endpoint")
        out["429"] = error("Too many requests this minute: for this key, or from this "
                           "address without a valid key", **RETRY_AFTER)
    for status in extra:
        out.setdefault(str(status), error(ERRORS[status]))
    out["500"] = error("Unexpected failure (no details are given)")
    return out


def json_ok(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref(schema)}}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def _enum(*values: str) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


def _const(value: str) -> dict[str, Any]:
    return {"type": "string", "const": value}


def _array(items: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "array", "items": items, **extra}


def _schemas(max_limit: int) -> dict[str, Any]:
    reason = _obj({
        "code": STR, "family": STR,
        "direction": {**_enum("concern", "reassuring", "context"),
                      "description": "which way the fact points: reasons are concerns, "
                                     "protective factors reassuring, context neither"},
        "title": STR, "text": STR,
        "log_odds": {"type": "number"},
        "percentage_points": {"type": "number",
                              "description": "points of the displayed risk (see points)"},
        "suggestion": {**STR, "description": "a next step; empty for what is going well"},
        "appointment_ids": _array(STR),
        "measure_ids": _array(STR),
    }, observation_ids={**_array(STR), "description": "the therapist's session notes behind "
                        "the fact (absent from reasons stored before they were read)"})
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
        "tier": _enum(*TIERS), "still_engaged": {"type": "boolean"},
        "last_attended_on": {"type": ["string", "null"], "format": "date"},
        "next_booked_at": {**NULLABLE_STR, "description": "local clinic time, no offset"},
        "reasons": _array(_ref("Reason"), maxItems=10),
        "protective": _array(_ref("Reason"), maxItems=10),
        "context": _array(_ref("Reason"), maxItems=10),
        "prompts": _array(_ref("Prompt"), maxItems=10),
        "points": points,
    })
    item["additionalProperties"] = False
    freshness = {
        "as_of": DATE, "model_version": STR, "published_at": STR,
        "age_days": {"type": "integer"}, "stale": {"type": "boolean"},
        # Population stability of the list's run against the training data.
        "drift": _obj({"drifted": {"type": "boolean"},
                       "flagged": _array(STR),
                       "score_psi": {"type": ["number", "null"]},
                       "explanation": {**NULLABLE_STR,
                                       "description": "what changed and what to do, when "
                                                      "drifted"}}),
    }
    history = _obj({"as_of": DATE, "episode_id": STR, "risk": {"type": "number"},
                    "tier": _enum(*TIERS), "rank": {"type": "integer"}})
    # How the service stands (store.status): the same fields on /health and /ready.
    status = {
        "age_days": {"type": ["integer", "null"]}, "stale": {"type": "boolean"},
        "last_nightly_run": {"oneOf": [{"type": "null"}, _obj({}, **{
            "run_id": {"type": "integer"}, "kind": STR, "status": STR,
            "as_of": NULLABLE_STR, "started_at": NULLABLE_STR,
            "finished_at": NULLABLE_STR})]},
        "missing_tables": _array(STR),
        "problems": {**_array(STR), "description": "what is wrong, in words"},
    }
    free_form = {"type": "object", "additionalProperties": True}
    notice = {**STR, "description": "outside recipients only: the 42 CFR 2.32 notice"}
    nullable_int = {"type": ["integer", "null"]}
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
                          "items": _array(_ref("ListItem"), maxItems=max_limit)},
                         notice=notice,
                         consents={"type": "object", "additionalProperties": NULLABLE_STR,
                                   "description": "outside recipients only: by client id, "
                                                  "the consent each is disclosed under"}),
        "ClientRisk": _obj({**freshness, "client_id": STR,
                            "identifiers": {**_array(_obj({"system": STR, "value": STR})),
                                            "description": "the EHR's own identifiers for "
                                                           "the client (e.g. an MRN)"},
                            "current": _ref("ListItem"), "history": _array(history)},
                           notice=notice,
                           consent={**NULLABLE_STR, "description": "outside recipients "
                                    "only: the consent the client is disclosed under"}),
        "Health": _obj({"status": {**_enum("ok", "degraded"),
                                   "description": "degraded (still 200): see problems"},
                        "list": {"oneOf": [_ref("Freshness"), {"type": "null"}]}},
                       **status),
        "Ready": _obj({"status": _enum("ready", "degraded"), "list": _ref("Freshness")},
                      **status),
        "Models": _obj({"items": _array(_obj({
            "version": STR, "created_at": NULLABLE_STR, "trained_as_of": NULLABLE_STR,
            "current": {"type": "boolean"}}))}),
        "ModelCard": _obj(
            {"version": STR, "current": {"type": "boolean"},
             "features": _array(_obj({"name": STR}, description=NULLABLE_STR,
                                     family=NULLABLE_STR,
                                     monotone={"type": ["integer", "null"]}))},
            task=NULLABLE_STR, created_at=NULLABLE_STR, trained_as_of=NULLABLE_STR,
            horizon_days={"type": ["integer", "null"]},
            metrics={"type": ["object", "null"], "additionalProperties": free_form,
                     "description": "held-out metrics by split"},
            window={"type": ["object", "null"], "additionalProperties": STR},
            libraries={"type": ["object", "null"], "additionalProperties": STR},
            sha256={"type": ["object", "null"], "additionalProperties": STR}),
        "Runs": _obj({"items": _array(_obj({
            "run_id": {"type": "integer"}, "kind": STR, "status": STR,
            "failed": {"type": "boolean"}}, as_of=NULLABLE_STR, started_at=NULLABLE_STR,
            finished_at=NULLABLE_STR, model_version=NULLABLE_STR, rows_read=nullable_int,
            rows_changed=nullable_int, rows_quarantined=nullable_int,
            detail={**NULLABLE_STR, "description": "JSON text: what the run did"},
            host=NULLABLE_STR, pid=nullable_int))}),
        **_fhir_schemas(),
        **_ehr_schemas(),
    }


def _fhir_schemas() -> dict[str, Any]:
    """The few FHIR R4 types the API returns, reduced to the elements it sends."""
    coding = _obj({}, system=STR, code=STR, display=STR)
    concept = _obj({}, coding=_array(_ref("Coding")), text=STR)
    identifier = _obj({}, system=STR, value=STR)
    reference = _obj({}, reference=STR, identifier=_ref("Identifier"), display=STR)
    period = _obj({}, start=STR, end=STR)
    meta = _obj({}, security=_array(_ref("Coding"),
                                    description="42 CFR Part 2 security labels"),
                lastUpdated=STR, profile=_array(STR))
    prediction = _obj({}, outcome=_ref("CodeableConcept"),
                      probabilityDecimal={"type": "number", "minimum": 0, "maximum": 1},
                      qualitativeRisk=_ref("CodeableConcept"), whenPeriod=_ref("Period"),
                      rationale=STR)
    risk = _obj({"resourceType": _const("RiskAssessment"), "id": STR,
                 "status": _const("final"), "subject": _ref("Reference"),
                 "prediction": _array(prediction, minItems=1)},
                meta=_ref("Meta"), occurrenceDateTime=DATE, method=_ref("CodeableConcept"),
                basis=_array(_ref("Reference")),
                note=_array(_obj({"text": STR}),
                            description="the 42 CFR Part 2 redisclosure notice"))
    entry = _obj({"resource": _ref("RiskAssessment")}, fullUrl=STR,
                 search=_obj({}, mode=_enum("match", "include", "outcome")))
    bundle = _obj({"resourceType": _const("Bundle"), "type": _const("searchset"),
                   "total": {"type": "integer", "minimum": 0},
                   "entry": _array(entry)},
                  meta=_ref("Meta"),
                  link=_array(_obj({"relation": STR, "url": STR}),
                              description="self, and next while there are more pages"))
    issue = _obj({"severity": _enum("fatal", "error", "warning", "information"),
                  "code": STR}, diagnostics=STR, details=_ref("CodeableConcept"))
    outcome = _obj({"resourceType": _const("OperationOutcome"),
                    "issue": _array(issue, minItems=1)})
    extension: dict[str, Any] = _obj({"url": STR}, valueUri=STR,
                                     extension=_array(_ref("Extension")))
    search_param = _obj({"name": STR, "type": STR}, definition=STR, documentation=STR)
    resource = _obj({"type": STR}, interaction=_array(_obj({"code": STR})),
                    versioning=STR, readHistory={"type": "boolean"},
                    searchParam=_array(search_param))
    rest = _obj({"mode": STR}, documentation=STR, resource=_array(resource),
                security=_obj({}, cors={"type": "boolean"},
                              service=_array(_ref("CodeableConcept")), description=STR,
                              extension=_array(_ref("Extension"))))
    capability = _obj(
        {"resourceType": _const("CapabilityStatement"), "status": STR, "date": STR,
         "kind": STR, "fhirVersion": STR, "format": _array(STR)},
        publisher=STR, software=_obj({"name": STR}, version=STR),
        implementation=_obj({"description": STR}, url=STR), rest=_array(rest))
    return {"Coding": coding, "CodeableConcept": concept, "Identifier": identifier,
            "Reference": reference, "Period": period, "Meta": meta,
            "RiskAssessment": risk, "Bundle": bundle, "OperationOutcome": outcome,
            "Extension": extension, "CapabilityStatement": capability}


def _ehr_schemas() -> dict[str, Any]:
    """CDS Hooks 2.0 and SMART Backend Services (OAuth 2.0) bodies."""
    service = _obj({"hook": STR, "id": STR, "description": STR}, title=STR,
                   usageRequirements=STR,
                   prefetch={"type": "object", "additionalProperties": STR})
    request = _obj({"hook": {**_const(HOOK), "description": "the one hook served"},
                    "hookInstance": {"type": "string", "minLength": 1},
                    "context": _obj({"patientId": {"type": "string", "pattern": FHIR_ID,
                                                   "description": "the EHR's Patient id"}},
                                    userId=STR, encounterId=STR)},
                   fhirServer=STR, prefetch={"type": "object", "additionalProperties": True},
                   fhirAuthorization={"type": "object", "additionalProperties": True})
    card = _obj({"uuid": STR, "summary": {"type": "string", "maxLength": 140},
                 "indicator": _enum("info", "warning", "critical"),
                 "source": _obj({"label": STR}, url=STR)},
                detail={**STR, "description": "GitHub-flavoured Markdown"},
                links=_array(_obj({"label": STR, "url": STR,
                                   "type": _enum("absolute", "smart")})))
    token = _obj({"grant_type": _const("client_credentials"),
                  "scope": {**_enum(*sorted(NARROWED_SCOPES)),
                            "description": "granted as system/RiskAssessment.read"},
                  "client_assertion_type": _const(JWT_BEARER),
                  "client_assertion": {
                      **STR, "description": f"a JWT signed with {' or '.join(SIGNING_ALGORITHMS)}"
                                            " by a key the EHR registered: iss = sub = client "
                                            "id, aud = the token URL, exp at most 5 minutes "
                                            "ahead, a jti never used before"}})
    return {
        "CdsServices": _obj({"services": _array(_ref("CdsService"))}),
        "CdsService": service,
        "CdsRequest": request,
        "CdsResponse": _obj({"cards": _array(_ref("Card"), maxItems=1)}),
        "Card": card,
        "TokenRequest": token,
        "TokenResponse": _obj({"access_token": STR,
                               "token_type": {**STR, "description": "bearer (any case)"},
                               "expires_in": {"type": "integer", "minimum": 1},
                               "scope": STR}),
        "OAuthError": _obj({"error": STR}, error_description=STR, error_uri=STR),
        "SmartConfiguration": _obj({
            "token_endpoint": STR,
            "grant_types_supported": _array(STR),
            "token_endpoint_auth_methods_supported": _array(STR),
            "token_endpoint_auth_signing_alg_values_supported": _array(STR),
            "scopes_supported": _array(STR), "capabilities": _array(STR)}),
    }


def document(max_limit: int) -> dict[str, Any]:
    """The whole OpenAPI 3.1 document."""
    as_of = _query("as_of", DATE, "Date of a published list (default: the newest)")
    list_params = [
        _query("limit", {"type": "integer", "minimum": 1, "maximum": max_limit},
               f"Page size (default 50, at most {max_limit})"),
        _query("cursor", {"type": "string", "maxLength": MAX_CURSOR_LENGTH,
                          "pattern": CURSOR_PATTERN},
               "next_cursor from the previous page, with the same key and filters (signed: "
               "any other is a 400)"),
        as_of,
        _query("clinic_id", TEXT, "Only this clinic (within the key's clinics)"),
        _query("case_manager_id", TEXT, "Only this case manager's caseload"),
        _query("program", TEXT, "Only this program"),
        _query("tier", _enum(*TIERS), "Only this risk tier"),
        _query("min_risk", {"type": "number", "minimum": 0, "maximum": 1},
               "Only risk at or above this (0-1)"),
        _query("engaged_only", _enum("true", "false"),
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
        "/v1/client-risk": {"get": {
            "operationId": "clientRiskByIdentifier",
            "summary": "A client's risk, reasons and history, by an EHR identifier (MRN)",
            "security": secured, "parameters": [
                {"name": "identifier", "in": "query", "required": True,
                 "description": "<system>|<value>, e.g. urn:oid:...|MRN0012345",
                 "schema": {**TEXT, "pattern": f"^[^{PLAIN}|]+\\|[^{PLAIN}]+$"}}, as_of],
            "responses": _responses(json_ok("ClientRisk", "The client's current risk"),
                                    404, 503)}},
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
        **_fhir_paths(secured),
        **_ehr_paths(),
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "retention", "version": "1",
                 "description": "Dropout risk for addiction-treatment clients, with reasons. "
                                "Protected health information: every read is audited."},
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer",
                           "description": "`retention keys create`, or an access token "
                                          f"from {TOKEN_PATH}"},
                "ehrJwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                           "description": "CDS Hooks: a JWT the EHR signs for each call "
                                          "with a key it registered (ES384 or RS384; iss "
                                          "its client id, aud the service's URL)"},
            },
            "schemas": _schemas(max_limit),
        },
        "security": secured,
        "paths": paths,
    }


def _fhir_paths(secured: list[dict[str, list[str]]]) -> dict[str, Any]:
    """FHIR R4: the CapabilityStatement, RiskAssessment search and read."""
    fmt = _query("_format", _enum("json", "application/json", FHIR, "application/json+fhir"),
                 "Only JSON is served; any other format is a 406")
    patient = {"type": "string", "pattern": f"^(Patient/)?[^/,\\\\{PLAIN}]+$"}
    token = {"type": "string", "pattern": f"^[^|,\\\\{PLAIN}]+\\|{FHIR_VALUE}$"}
    name_one = " (subject, patient or identifier is required: 400 without one)"
    search = [
        _query("subject", patient, "Patient/<client id> or the client id" + name_one),
        _query("patient", patient, "As subject"),
        _query("identifier", token,
               "The patient's EHR identifier as <system>|<value> (e.g. an MRN)"),
        _query("patient.identifier", token, "As identifier"),
        _query("subject.identifier", token, "As identifier"),
        {**_query("date", _array({"type": "string", "pattern": FHIR_DATE}),
                  "The assessment's day as [eq|ne|ge|le|gt|lt]YYYY[-MM[-DD]]; repeat it "
                  "for a range (all must hold)"), "style": "form", "explode": True},
        _query("_count", {"type": "integer", "minimum": 0, "maximum": 999_999_999},
               f"Page size (default 50; more than {MAX_COUNT} is served as {MAX_COUNT}; "
               "0: the total only)"),
        _query(PAGE_TOKEN, {"type": "string", "maxLength": MAX_CURSOR_LENGTH,
                            "pattern": CURSOR_PATTERN},
               "From the Bundle's next link (signed for this search: any other is a 400)"),
        fmt,
    ]
    return {
        "/fhir/metadata": {"get": {
            "operationId": "fhirCapabilityStatement",
            "summary": "The FHIR CapabilityStatement (public: no client data)",
            "security": [],
            "parameters": [fmt, _query("mode", _enum("full"), "Only full is supported")],
            "responses": _responses(
                {"description": "What this FHIR server does",
                 "content": {FHIR: {"schema": _ref("CapabilityStatement")}}},
                400, 406, secured=False, error=_outcome)}},
        "/fhir/RiskAssessment": {"get": {
            "operationId": "fhirRiskAssessment",
            "summary": "FHIR R4 RiskAssessment search (probabilityDecimal on the 0-1 scale)",
            "description": "A client out of scope, or without a 42 CFR Part 2 consent "
                           "naming the caller's recipient, gets an empty Bundle, as an "
                           "unknown one does.",
            "security": secured, "parameters": search,
            "responses": _responses(
                {"description": "A searchset Bundle, newest first",
                 "content": {FHIR: {"schema": _ref("Bundle")}}},
                406, 503, error=_outcome)}},
        "/fhir/RiskAssessment/{resource_id}": {"get": {
            "operationId": "fhirRiskAssessmentRead",
            "summary": "One RiskAssessment, by the id a search gave",
            "security": secured,
            "parameters": [{"name": "resource_id", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": FHIR_ID}}, fmt],
            "responses": _responses(
                {"description": "The RiskAssessment",
                 "content": {FHIR: {"schema": _ref("RiskAssessment")}}},
                404, 406, 503, error=_outcome)}},
        SMART_CONFIGURATION_PATH: {"get": {
            "operationId": "smartConfiguration",
            "summary": "SMART discovery: the token endpoint and what it accepts",
            "security": [],
            "responses": _responses(
                json_ok("SmartConfiguration", "SMART Backend Services configuration"),
                404, secured=False, error=_outcome)}},
    }


def _ehr_paths() -> dict[str, Any]:
    """CDS Hooks 2.0 and the SMART Backend Services token endpoint."""
    oauth_error = {"content": {JSON: {"schema": _ref("OAuthError")}}}
    return {
        "/cds-services": {"get": {
            "operationId": "cdsDiscovery", "summary": "CDS Hooks discovery (public)",
            "security": [],
            "responses": _responses(json_ok("CdsServices", "The services offered"),
                                    secured=False)}},
        f"/cds-services/{SERVICE_ID}": {"post": {
            "operationId": "cdsDropoutRisk",
            "summary": f"A {HOOK} call: at most one card with the client's dropout risk",
            "description": "No card for a low risk, an unknown patient, or one without a "
                           "42 CFR Part 2 consent naming the EHR's recipient.",
            "security": [{"ehrJwt": []}],
            "requestBody": {"required": True,
                            "content": {JSON: {"schema": _ref("CdsRequest")}}},
            "responses": {
                **_responses(json_ok("CdsResponse", "The cards (none, or one)"),
                             400, 413, 415, 503),
                "401": _problem("No JWT, or one that does not verify (signature, issuer, "
                                "aud, exp, iat, a jti used before)", **WWW_AUTHENTICATE),
                "403": _problem("The EHR client is not registered for this scope"),
                "503": _problem("A dependency is unavailable, or public_base_url is not set "
                                "(no audience to check the JWT against)"),
            }}},
        TOKEN_PATH: {"post": {
            "operationId": "oauthToken",
            "summary": "SMART Backend Services: a client assertion for an access token",
            "security": [],
            "requestBody": {"required": True,
                            "content": {FORM: {"schema": _ref("TokenRequest")}}},
            "responses": {
                "200": {**json_ok("TokenResponse", "An access token (an ehr key)"),
                        "headers": {"Cache-Control": {"required": True, "schema": STR}}},
                "400": {"description": "The request or the assertion is refused (RFC 6749 "
                                       "section 5.2: invalid_request, invalid_client, "
                                       "invalid_scope, ...)", **oauth_error},
                "401": {"description": "The client could not be authenticated",
                        **oauth_error},
                "404": _problem("Token endpoint not configured (no public_base_url)"),
                "415": _problem(ERRORS[415]),
                "429": _problem("Too many requests from this address", **RETRY_AFTER),
                "503": _problem(ERRORS[503]),
                "500": _problem("Unexpected failure (no details are given)"),
            }}},
    }


@bp.get("/openapi.json")
def openapi_document() -> ResponseReturnValue:
    """Public: the description holds no data."""
    return jsonify(document(settings().api_max_limit))
