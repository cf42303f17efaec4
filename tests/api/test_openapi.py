"""The OpenAPI document against the real app: schemathesis in-process, default checks."""

from __future__ import annotations

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode

from retention.api import create_app
from tests.conftest import Scored
from tests.support.apps import clock_on, make_key


@pytest.fixture(scope="module")
def app(scored: Scored) -> Flask:
    # A limit high enough for the run: 429 is documented but would hide the other checks.
    return create_app(scored.settings.with_overrides(
        api_rate_limit_per_minute=100_000, api_rate_limit_per_address_per_minute=100_000),
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
    assert len(operations) >= 9
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=25, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            if mode is GenerationMode.POSITIVE and case.query:
                # A cursor is one the API signed: no schema-valid string is one (a made-up
                # cursor is a 400, checked in the negative mode and test_fastpath).
                case.query.pop("cursor", None)
            # A negative case may negate the Authorization header itself: sending our key
            # over it would make a valid request that schemathesis still counts as negative.
            keyed = not (mode is GenerationMode.NEGATIVE and _negates_authorization(case))
            case.call_and_validate(
                headers={"Authorization": f"Bearer {token}"} if keyed else None)

        try:
            check()
        except Unsatisfiable:
            # No parameters, so no invalid request to make: nothing to check in this mode.
            assert mode is GenerationMode.NEGATIVE, operation.label
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)


def _negates_authorization(case: schemathesis.Case) -> bool:
    """Whether schemathesis made this negative case by changing or removing Authorization."""
    data = case.meta.phase.data if case.meta else None
    names = {getattr(data, "parameter", None)}
    names |= {m.parameter for m in getattr(data, "mutations", ())}
    return any(n is not None and n.lower() == "authorization" for n in names)


def test_the_document_is_openapi_3_1_and_covers_every_route(app: Flask) -> None:
    doc = app.test_client().get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1")
    # The case managers' HTML pages (blueprint "web") are not part of the JSON API.
    routes = {r.rule.replace("<", "{").replace(">", "}") for r in app.url_map.iter_rules()
              if r.endpoint != "static" and not r.endpoint.startswith("web.")}
    assert routes - {"/openapi.json"} == set(doc["paths"])
