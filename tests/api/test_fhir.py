"""FHIR RiskAssessment search: valid R4 resources (fhir.resources R4B models), scoped like the API.

fhir.resources 8 models R5 by default; its R4B subpackage is the closest to R4 it
ships, and RiskAssessment did not change between R4 and R4B.
"""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.riskassessment import RiskAssessment
from flask import Flask

from retention.api import create_app
from retention.settings import ConfigError
from tests.conftest import Scored
from tests.support.apps import clock_on, keyed_client, make_key


@pytest.fixture(scope="module")
def app(scored: Scored) -> Flask:
    return create_app(scored.settings, clock=clock_on(scored.as_of))


@pytest.fixture(scope="module")
def top(app: Flask, scored: Scored) -> dict:
    token = make_key(scored.store, "admin")
    return keyed_client(app, token).get("/v1/risk-list?limit=1").get_json()["items"][0]


def test_a_bundle_of_valid_risk_assessments(app: Flask, scored: Scored, top: dict) -> None:
    client = keyed_client(app, make_key(scored.store, "ehr", [top["clinic_id"]]))
    response = client.get(f"/fhir/RiskAssessment?subject=Patient/{top['client_id']}")
    assert response.status_code == 200 and response.mimetype == "application/fhir+json"
    bundle = Bundle.model_validate(response.get_json())
    assert bundle.type == "searchset" and bundle.total == len(bundle.entry) >= 1
    resource = RiskAssessment.model_validate(response.get_json()["entry"][0]["resource"])
    assert resource.status == "final"
    assert resource.subject.reference == f"Patient/{top['client_id']}"
    assert str(resource.occurrenceDateTime) == scored.as_of.isoformat()
    assert resource.method.coding[0].code == scored.model.version
    [prediction] = resource.prediction
    assert float(prediction.probabilityDecimal) == top["risk"]  # 0-1 scale
    assert prediction.qualitativeRisk.coding[0].code == {
        "high": "high", "medium": "moderate", "low": "low"}[top["tier"]]
    for reason in top["reasons"]:
        assert reason["text"] in prediction.rationale
    expected = {f"Appointment/{a}" for r in top["reasons"] for a in r["appointment_ids"]} | {
        f"QuestionnaireResponse/{m}" for r in top["reasons"] for m in r["measure_ids"]}
    assert {b.reference for b in resource.basis or []} == expected and expected


def test_search_by_date(app: Flask, scored: Scored, top: dict) -> None:
    client = keyed_client(app, make_key(scored.store, "admin"))
    base = f"/fhir/RiskAssessment?subject=Patient/{top['client_id']}"
    assert client.get(f"{base}&date={scored.as_of}").get_json()["total"] == 1
    assert client.get(f"{base}&date=lt{scored.as_of}").get_json()["total"] == 0
    assert client.get(f"{base}&date=ge2000-01-01").get_json()["total"] == 1
    bad = client.get(f"{base}&date=yesterday")
    assert bad.status_code == 400 and bad.mimetype == "application/problem+json"
    assert client.get("/fhir/RiskAssessment").status_code == 400


def test_scope_applies_to_fhir(app: Flask, scored: Scored, top: dict) -> None:
    other = make_key(scored.store, "ehr", ["no-such-clinic"])
    body = keyed_client(app, other).get(
        f"/fhir/RiskAssessment?subject=Patient/{top['client_id']}").get_json()
    assert body["total"] == 0 and body["entry"] == []
    assert top["client_id"] not in str(body["entry"])
    assert app.test_client().get(
        f"/fhir/RiskAssessment?subject=Patient/{top['client_id']}").status_code == 401


def test_links_never_come_from_the_host_header(app: Flask, scored: Scored, top: dict) -> None:
    """Without a configured base the links are relative; with one, absolute from it."""
    token = make_key(scored.store, "admin")
    url = f"/fhir/RiskAssessment?subject=Patient/{top['client_id']}&date=ge2000-01-01"
    forged = {"Host": "evil.example", "X-Forwarded-Host": "evil.example"}
    body = keyed_client(app, token).get(url, headers=forged).get_json()
    assert "evil.example" not in str(body)
    search = urlencode([("subject", f"Patient/{top['client_id']}"), ("date", "ge2000-01-01")])
    assert body["link"][0]["url"] == f"/fhir/RiskAssessment?{search}"
    assert all("fullUrl" not in entry for entry in body["entry"]) and body["entry"]
    Bundle.model_validate(body)

    base = "https://risk.clinic.example/api"
    configured = create_app(scored.settings.with_overrides(public_base_url=base + "/"),
                            clock=clock_on(scored.as_of))
    body = keyed_client(configured, token).get(url, headers=forged).get_json()
    assert "evil.example" not in str(body)
    assert body["link"][0]["url"] == f"{base}/fhir/RiskAssessment?{search}"
    [entry] = body["entry"]
    assert entry["fullUrl"] == f"{base}/fhir/RiskAssessment/{entry['resource']['id']}"
    Bundle.model_validate(body)


def test_a_base_url_with_a_query_or_another_scheme_is_refused(scored: Scored) -> None:
    for bad in ("ftp://risk.example", "https://risk.example/?x=1", "risk.example"):
        with pytest.raises(ConfigError):
            scored.settings.with_overrides(public_base_url=bad)
