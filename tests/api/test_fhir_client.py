"""The FHIR endpoints through a real FHIR client library (fhirpy's sync client) over HTTP.

The app runs under werkzeug's server on 127.0.0.1, on a port the system picks, with
``public_base_url`` set to that address: what a vendor's client would meet behind a
proxy that the base names.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.riskassessment import RiskAssessment
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import AuthorizationError, OperationOutcome, ResourceNotFound
from werkzeug.serving import make_server

from retention.access.consent import NOTICE
from retention.api import create_app
from tests.api.test_fhir import MRN, RECIPIENT, WEEKS, Store, build_store
from tests.conftest import Scored
from tests.support.apps import clock_on, make_key


@pytest.fixture(scope="module")
def store(scored: Scored, tmp_path_factory: pytest.TempPathFactory) -> Store:
    return build_store(scored, tmp_path_factory.mktemp("fhir-client"))


@pytest.fixture(scope="module")
def base(store: Store, scored: Scored) -> Iterator[str]:
    """The server's base URL; the app is built once the port is known, as its base."""
    apps: dict[str, Any] = {}
    server = make_server("127.0.0.1", 0, lambda env, start: apps["app"](env, start),
                         threaded=True)
    url = f"http://127.0.0.1:{server.server_port}"
    apps["app"] = create_app(store.settings.with_overrides(public_base_url=url),
                             clock=clock_on(scored.as_of))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield url
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def fhir(base: str, store: Store) -> SyncFHIRClient:
    """An EHR's client: an ehr key whose recipient the top client's consent names."""
    token = make_key(store.engine, "ehr", [store.top["clinic_id"]], recipient=RECIPIENT)
    return SyncFHIRClient(f"{base}/fhir", authorization=f"Bearer {token}")


def _valid(resources: list[Any]) -> list[str]:
    ids = []
    for resource in resources:
        model = RiskAssessment.model_validate(resource.serialize())
        assert model.note is not None and model.note[0].text == NOTICE
        assert model.meta is not None and len(model.meta.security or []) == 4
        ids.append(str(model.id))
    return ids


def test_the_client_reads_the_capability_statement(fhir: SyncFHIRClient, base: str) -> None:
    statement = CapabilityStatement.model_validate(fhir.execute("metadata", method="get"))
    assert statement.fhirVersion == "4.0.1" and statement.implementation.url == base


def test_searches_page_and_reads_through_the_client(fhir: SyncFHIRClient, store: Store,
                                                    scored: Scored) -> None:
    cid = store.top["client_id"]
    risks = fhir.resources("RiskAssessment")
    everything = _valid(risks.search(subject=f"Patient/{cid}").limit(200).fetch())
    assert len(everything) >= WEEKS + 1
    assert len(set(everything)) == len(everything)
    # fetch_all follows the next links: every resource once, in the same order.
    assert _valid(risks.search(patient=cid).limit(3).fetch_all()) == everything
    assert _valid(risks.search(identifier=f"{MRN}|MRN-0001").limit(200).fetch()) == everything
    assert _valid(risks.search(patient__identifier=f"{MRN}|MRN-0001").limit(200)
                  .fetch()) == everything
    start = scored.as_of - timedelta(weeks=3)
    ranged = risks.search(subject=f"Patient/{cid}", date__ge=start.isoformat(),
                          date__lt=scored.as_of.isoformat()).fetch_all()
    assert sorted(r["occurrenceDateTime"] for r in ranged) == sorted(
        (scored.as_of - timedelta(weeks=w)).isoformat() for w in (1, 2, 3))
    for resource_id in everything[:3]:
        read = fhir.reference("RiskAssessment", resource_id).to_resource()
        assert _valid([read]) == [resource_id]
        assert read["subject"]["reference"] == f"Patient/{cid}"


def test_the_client_sees_errors_as_operation_outcomes(fhir: SyncFHIRClient, base: str,
                                                      store: Store) -> None:
    risks = fhir.resources("RiskAssessment")
    with pytest.raises(OperationOutcome) as invalid:
        risks.search(subject=store.top["client_id"], _sort="date").fetch()
    assert "_sort" in str(invalid.value)
    with pytest.raises(ResourceNotFound):
        fhir.reference("RiskAssessment", "NO-SUCH.20260601").to_resource()
    with pytest.raises(AuthorizationError):
        SyncFHIRClient(f"{base}/fhir").resources("RiskAssessment").search(
            subject=store.top["client_id"]).fetch()
