"""The OpenAPI document against the real app: schemathesis in-process, default checks."""

from __future__ import annotations

import re

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import checks
from schemathesis.generation.modes import GenerationMode

from retention.api import create_app
from retention.api.oauth import TOKEN_PATH
from tests.conftest import Scored
from tests.support.apps import clock_on, make_key


@pytest.fixture(scope="module")
def app(scored: Scored) -> Flask:
    # A limit high enough for the run: 429 is documented but would hide the other checks.
    # A public base URL turns the CDS Hooks and SMART token endpoints on (their 503, 404).
    return create_app(scored.settings.with_overrides(
        api_rate_limit_per_minute=100_000, api_rate_limit_per_address_per_minute=100_000,
        public_base_url="https://risk.clinic.example"),
        clock=clock_on(scored.as_of))


@pytest.fixture(scope="module")
def token(scored: Scored) -> str:
    return make_key(scored.store, "admin", label="schemathesis")


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_api_matches_its_openapi_document(app: Flask, token: str,
                                              mode: GenerationMode) -> None:
    """Every operation, generated data of one mode, schemathesis's default checks.

    The operations are looped here rather than through ``schema.parametrize`` with
    ``from_fixture``, which does not run under pytest 9.
    """
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    paths = app.test_client().get("/openapi.json").get_json()["paths"]
    assert len(operations) == sum(len(item) for item in paths.values())
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=25, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            if mode is GenerationMode.POSITIVE and case.query:
                # A cursor is one the API signed: no schema-valid string is one (a made-up
                # cursor is a 400, checked in the negative mode and test_fastpath).
                case.query.pop("cursor", None)
                case.query.pop("_page_token", None)
            if mode is GenerationMode.POSITIVE and case.operation.path == "/fhir/RiskAssessment":
                # One of these names the patient; OpenAPI cannot say "at least one of".
                query = case.query if case.query is not None else {}
                if not query.keys() & PATIENT_PARAMS:
                    case.query = {**query, "subject": "Patient/someone"}
            # A negative case may negate the Authorization header itself: sending our key
            # over it would make a valid request that schemathesis still counts as negative.
            keyed = not (mode is GenerationMode.NEGATIVE and _negates_authorization(case))
            # A schema-valid token request still carries no valid signed assertion, and
            # OAuth refuses that with 400 (RFC 6749 5.2), not the 401 this check expects.
            unsigned = mode is GenerationMode.POSITIVE and case.operation.path == TOKEN_PATH
            case.call_and_validate(
                headers={"Authorization": f"Bearer {token}"} if keyed else None,
                excluded_checks=[checks.positive_data_acceptance] if unsigned else None)

        try:
            check()
        except Unsatisfiable:
            # No parameters, so no invalid request to make: nothing to check in this mode.
            assert mode is GenerationMode.NEGATIVE, operation.label
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)


PATIENT_PARAMS = {"subject", "patient", "identifier", "patient.identifier",
                  "subject.identifier"}


def _negates_authorization(case: schemathesis.Case) -> bool:
    """Whether schemathesis made this negative case by changing or removing Authorization."""
    data = case.meta.phase.data if case.meta else None
    names = {getattr(data, "parameter", None)}
    names |= {m.parameter for m in getattr(data, "mutations", ())}
    return any(n is not None and n.lower() == "authorization" for n in names)


def test_the_document_is_openapi_3_1_and_covers_every_route(app: Flask) -> None:
    """Every method and path the app serves is described, and nothing else is."""
    doc = app.test_client().get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1")
    # The case managers' HTML pages (blueprint "web") are not part of the JSON API.
    served = {(method.lower(), re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule.rule))
              for rule in app.url_map.iter_rules()
              if rule.endpoint != "static" and not rule.endpoint.startswith("web.")
              for method in rule.methods or () if method not in ("HEAD", "OPTIONS")}
    described = {(method, path) for path, item in doc["paths"].items() for method in item}
    assert served - {("get", "/openapi.json")} == described
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)), "operationIds must be unique"


# Keywords whose value is one schema, or a list or mapping of schemas.
ONE_SCHEMA = ("items", "additionalProperties", "not", "contains", "propertyNames")
SCHEMA_LISTS = ("oneOf", "anyOf", "allOf", "prefixItems")


def test_every_schema_is_typed_and_every_ref_resolves(app: Flask) -> None:
    """What client generators need: openapi-python-client silently drops a model that
    has an array without items (it did: the FHIR Bundle)."""
    doc = app.test_client().get("/openapi.json").get_json()
    problems = typing_problems(doc)
    assert not problems, "\n".join(problems)


def test_the_typing_check_finds_what_it_looks_for() -> None:
    doc = {"paths": {"/x": {"get": {"responses": {"200": {"content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Missing"}}}}}}}},
        "components": {"schemas": {"Bundle": {"type": "object", "properties": {
            "entry": {"type": "array"}, "subject": {"type": "object"},
            "tier": {"enum": ["high"]}, "ok": {"oneOf": [{"type": "null"}, {"$ref": "#/x"}]},
        }}}}}
    assert sorted(typing_problems(doc)) == sorted([
        "#/paths/~1x/get/responses/200/content/application~1json/schema: "
        "$ref #/components/schemas/Missing does not resolve",
        "#/components/schemas/Bundle/properties/ok/oneOf[1]: $ref #/x does not resolve",
        "#/components/schemas/Bundle.entry: array without items",
        "#/components/schemas/Bundle.subject: object without properties or "
        "additionalProperties",
        "#/components/schemas/Bundle.tier: property without a type or $ref",
    ])


def typing_problems(doc: dict) -> list[str]:
    """Arrays without items, objects without properties, untyped properties and schemas,
    and $refs that do not resolve, anywhere in an OpenAPI document.

    A property may be a oneOf/anyOf whose branches are each typed (a nullable object).
    """
    problems: list[str] = []

    def resolves(ref: str) -> bool:
        node: object = doc
        for part in ref.removeprefix("#/").split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return ref.startswith("#/") and isinstance(node, dict)

    def typed(schema: object) -> bool:
        if not isinstance(schema, dict):
            return False
        branches = schema.get("oneOf") or schema.get("anyOf")
        if branches:
            return all(typed(b) for b in branches)
        return "type" in schema or "$ref" in schema

    def walk_schema(schema: object, where: str) -> None:
        if not isinstance(schema, dict):
            if schema is not True:
                problems.append(f"{where}: not a schema: {schema!r}")
            return
        types = schema.get("type", [])
        types = [types] if isinstance(types, str) else types
        if "array" in types and "items" not in schema and "prefixItems" not in schema:
            problems.append(f"{where}: array without items")
        if "object" in types and "properties" not in schema \
                and "additionalProperties" not in schema:
            problems.append(f"{where}: object without properties or additionalProperties")
        for name, prop in schema.get("properties", {}).items():
            if not typed(prop):
                problems.append(f"{where}.{name}: property without a type or $ref")
            walk_schema(prop, f"{where}.{name}")
        for key in ONE_SCHEMA:
            if key in schema and schema[key] is not False:
                walk_schema(schema[key], f"{where}/{key}")
        for key in SCHEMA_LISTS:
            for i, branch in enumerate(schema.get(key, [])):
                walk_schema(branch, f"{where}/{key}[{i}]")

    def walk(node: object, where: str) -> None:
        """Every $ref in the document, and every schema where OpenAPI puts one."""
        if isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")
        elif isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and not resolves(ref):
                problems.append(f"{where}: $ref {ref} does not resolve")
            for key, value in node.items():
                if key == "schema":
                    if not typed(value):
                        problems.append(f"{where}: schema without a type or $ref")
                    walk_schema(value, f"{where}/schema")
                walk(value, f"{where}/{key.replace('/', '~1')}")

    walk(doc, "#")
    for name, schema in doc.get("components", {}).get("schemas", {}).items():
        if not typed(schema):
            problems.append(f"#/components/schemas/{name}: no type")
        walk_schema(schema, f"#/components/schemas/{name}")
    return problems
