"""A client generated from /openapi.json calls every operation and parses every answer.

openapi-python-client (what EHR teams use) writes a package from the live document into
a temporary folder; each operation in the document is then called through it against
the app on a real port. A model the generator dropped, or a content type it did not
map, shows up here as a warning, ``UnexpectedStatus`` or an unparsed answer.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey
from openapi_python_client.strings import PythonIdentifier, pascal_case
from sqlalchemy import insert
from werkzeug.serving import make_server

from retention.access.ehr_clients import SCOPE_READ, register_client
from retention.api import create_app
from retention.api.cds_hooks import SERVICE_ID
from retention.clock import FixedClock
from retention.db.engines import store_engine
from retention.store import tables
from tests.conftest import Scored
from tests.support.apps import clock_on, copied_store, make_key

pytestmark = pytest.mark.slow

PACKAGE = "retention_generated_client"
# No post hooks: they run ruff over the output, which these tests do not need. The
# overrides are for generator versions that do not read "+json" as JSON by themselves.
GENERATOR_CONFIG = {
    "post_hooks": [],
    "content_type_overrides": {"application/fhir+json": "application/json",
                               "application/problem+json": "application/json"},
}
FIELD_PREFIX = "field_"
# Only the audience of JWTs: the server checks it, nothing connects to it.
BASE = "https://risk.clinic.example"
RECIPIENT = "generated-client-ehr"


@dataclass(frozen=True)
class Live:
    """The app on a real port, a registered EHR, and real rows to name."""

    url: str
    token: str
    client_id: str
    resource_id: str
    model_version: str
    ehr_id: str
    ehr_key: ECKey
    clock: FixedClock
    identifier: str  # the top client's MRN, as system|value

    def signed(self, audience: str) -> str:
        """A JWT from the registered EHR for ``audience``: a fresh jti, five minutes' life."""
        now = int(self.clock.now().replace(tzinfo=UTC).timestamp())
        claims = {"iss": self.ehr_id, "sub": self.ehr_id, "aud": audience, "iat": now,
                  "exp": now + 240, "jti": uuid.uuid4().hex}
        return jwt.encode({"alg": "ES384", "kid": self.ehr_key.kid}, claims, self.ehr_key,
                          algorithms=["ES384"])


# The credential each security scheme in the document takes.
CREDENTIALS: dict[str, Callable[[Live], str]] = {
    "apiKey": lambda live: live.token,
    "ehrJwt": lambda live: live.signed(f"{BASE}/cds-services/{SERVICE_ID}"),
}


@dataclass(frozen=True)
class Call:
    """One operation's arguments (given the live app and the generated models module),
    and the status its answer should have."""

    kwargs: Callable[[Live, Any], dict[str, Any]]
    status: int = 200


def _no_arguments(live: Live, models: Any) -> dict[str, Any]:
    return {}


# One per operationId in the document: a new operation fails the test until it is added.
CALLS: dict[str, Call] = {
    "riskList": Call(lambda live, models: {"limit": 2}),
    "clientRisk": Call(lambda live, models: {"client_id": live.client_id}),
    "clientRiskByIdentifier": Call(lambda live, models: {"identifier": live.identifier}),
    "fhirCapabilityStatement": Call(_no_arguments),
    "fhirRiskAssessment": Call(lambda live, models: {
        "subject": f"Patient/{live.client_id}", "date": ["ge2000-01", "le9998"],
        "field_count": 1}),
    "fhirRiskAssessmentRead": Call(lambda live, models: {"resource_id": live.resource_id}),
    "smartConfiguration": Call(_no_arguments),
    "models": Call(_no_arguments),
    "modelCard": Call(lambda live, models: {"version": live.model_version}),
    "runs": Call(lambda live, models: {"limit": 5}),
    "health": Call(_no_arguments),
    "ready": Call(_no_arguments),
    "metrics": Call(_no_arguments),
    "cdsDiscovery": Call(_no_arguments),
    "cdsDropoutRisk": Call(lambda live, models: {"body": models.CdsRequest.from_dict({
        "hook": "patient-view", "hookInstance": str(uuid.uuid4()),
        "context": {"patientId": live.client_id}})}),
    "oauthToken": Call(lambda live, models: {"body": models.TokenRequest.from_dict({
        "grant_type": "client_credentials", "scope": SCOPE_READ,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": live.signed(f"{BASE}/oauth/token")})}),
}


@pytest.fixture(scope="module")
def live(scored: Scored, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The API on 127.0.0.1 over a copy of the scored store, with an EHR client registered
    and the top client's consent to it."""
    settings = copied_store(scored.settings, tmp_path_factory.mktemp("live")).with_overrides(
        public_base_url=BASE)
    store = store_engine(settings.store_url)
    clock = clock_on(scored.as_of)
    token = make_key(store, "admin", label="generated client")
    key = ECKey.generate_key("P-384", parameters={"kid": "ec-1"})
    app = create_app(settings, clock=clock)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
            top = http.get("/v1/risk-list", params={"limit": 1}).json()["items"][0]
            found = http.get("/fhir/RiskAssessment", params={"subject": top["client_id"]})
            mrn = http.get(f"/v1/clients/{top['client_id']}/risk").json()["identifiers"][0]
        with store.begin() as conn:
            ehr_id = register_client(conn, jwks={"keys": [key.as_dict(private=False)]},
                                     recipient=RECIPIENT, clinics=[top["clinic_id"]],
                                     now=clock.now())
            conn.execute(insert(tables.copies["consents"]).values(
                consent_id="generated-client", client_id=top["client_id"],
                recipient=RECIPIENT, purpose="treatment",
                effective_on=scored.as_of - timedelta(days=30), expires_on=None,
                revoked_at=None, updated_at=clock.now()))
        yield Live(url, token, top["client_id"], found.json()["entry"][0]["resource"]["id"],
                   scored.model.version, ehr_id, key, clock, f"{mrn['system']}|{mrn['value']}")
    finally:
        server.shutdown()
        thread.join()
        store.dispose()


@pytest.fixture(scope="module")
def generated(live: Live, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[dict[str, Any], ModuleType]]:
    """The live document, and the client package generated from it (importable)."""
    root = tmp_path_factory.mktemp("generated")
    spec = httpx.get(f"{live.url}/openapi.json").json()
    (root / "openapi.json").write_text(json.dumps(spec))
    (root / "config.json").write_text(json.dumps(GENERATOR_CONFIG))
    run = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate",
         "--path", str(root / "openapi.json"), "--config", str(root / "config.json"),
         "--output-path", str(root / PACKAGE), "--meta", "none"],
        capture_output=True, text=True, timeout=120, check=False)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    # A schema the generator cannot read is dropped with a warning, and the client built.
    assert "Warning" not in output and "WARNING" not in output, output
    sys.path.insert(0, str(root))
    try:
        yield spec, importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(root))
        for name in [n for n in sys.modules if n.partition(".")[0] == PACKAGE]:
            del sys.modules[name]


def test_the_generated_client_calls_every_operation(
        live: Live, generated: tuple[dict[str, Any], ModuleType]) -> None:
    """Each operation answers with its documented status, parsed into its model."""
    spec, package = generated
    clients = importlib.import_module(f"{PACKAGE}.client")
    models = importlib.import_module(f"{PACKAGE}.models")
    called: set[str] = set()
    failures: list[str] = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            name = operation["operationId"]
            label = f"{method.upper()} {path} ({name})"
            if name not in CALLS:
                failures.append(f"{label}: not called; add it to CALLS")
                continue
            call = CALLS[name]
            schemes = [s for r in operation.get("security", spec.get("security", []))
                       for s in r]
            if schemes:
                client = clients.AuthenticatedClient(
                    base_url=live.url, token=CREDENTIALS[schemes[0]](live),
                    raise_on_unexpected_status=True)
            else:
                client = clients.Client(base_url=live.url, raise_on_unexpected_status=True)
            try:
                response = _module(package, name).sync_detailed(
                    client=client, **call.kwargs(live, models))
            except Exception as exc:  # UnexpectedStatus, KeyError in from_dict, ...
                failures.append(f"{label}: {type(exc).__name__}: {exc}")
                continue
            called.add(name)
            problem = _check(operation, call.status, response)
            if problem:
                failures.append(f"{label}: {problem}")
    assert not failures, "\n".join(failures)
    assert called == set(CALLS), f"CALLS names operations the document lacks: " \
                                 f"{sorted(set(CALLS) - called)}"


def test_an_ehr_gets_a_token_a_bundle_and_a_card_through_the_generated_client(
        live: Live, generated: tuple[dict[str, Any], ModuleType]) -> None:
    """The EHR's path: a SMART token, a FHIR search with it, and a CDS Hooks card."""
    _, package = generated
    clients = importlib.import_module(f"{PACKAGE}.client")
    models = importlib.import_module(f"{PACKAGE}.models")
    granted = _module(package, "oauthToken").sync(
        client=clients.Client(base_url=live.url, raise_on_unexpected_status=True),
        **CALLS["oauthToken"].kwargs(live, models))
    assert granted.scope == SCOPE_READ, granted
    with_token = clients.AuthenticatedClient(base_url=live.url, token=granted.access_token,
                                             raise_on_unexpected_status=True)
    bundle = _module(package, "fhirRiskAssessment").sync(
        client=with_token, subject=f"Patient/{live.client_id}")
    assert bundle.total >= 1 and bundle.entry[0].resource.id == live.resource_id
    # An outside recipient's answers carry the 42 CFR Part 2 notice and consents.
    page = _module(package, "riskList").sync(client=with_token, limit=1)
    risk = _module(package, "clientRisk").sync(client=with_token, client_id=live.client_id)
    assert page.notice and page.consents.additional_properties and risk.consent, (page, risk)
    assert not (_undocumented(page, "RiskList") + _undocumented(risk, "ClientRisk")
                + _undocumented(bundle, "Bundle"))
    signed = clients.AuthenticatedClient(base_url=live.url, token=CREDENTIALS["ehrJwt"](live),
                                         raise_on_unexpected_status=True)
    answer = _module(package, "cdsDropoutRisk").sync(
        client=signed, **CALLS["cdsDropoutRisk"].kwargs(live, models))
    [card] = answer.cards  # the top of the list: a high risk, with consent
    assert card.indicator == "warning" and card.summary.startswith("Dropout risk HIGH")


def _module(package: ModuleType, operation_id: str) -> ModuleType:
    """The generated module of an operation, under whichever tag folder it went."""
    module = PythonIdentifier(operation_id, prefix=FIELD_PREFIX)
    folders = sorted(p.name for p in (Path(package.__path__[0]) / "api").iterdir()
                     if (p / f"{module}.py").exists())
    assert len(folders) == 1, f"{operation_id}: generated as {module}.py in {folders}"
    return importlib.import_module(f"{PACKAGE}.api.{folders[0]}.{module}")


def _check(operation: dict[str, Any], status: int, response: Any) -> str | None:
    """What is wrong with a generated client's answer, or None."""
    if response.status_code != status:
        return f"status {response.status_code}, expected {status}: {response.content[:300]!r}"
    [(content_type, media)] = operation["responses"][str(status)]["content"].items()
    ref = media["schema"].get("$ref")
    if ref is None:
        expected: type = str if content_type.startswith("text/") else object
    else:
        expected = getattr(importlib.import_module(f"{PACKAGE}.models"),
                           pascal_case(ref.rsplit("/", 1)[-1]))
    parsed = response.parsed
    if parsed is None or not isinstance(parsed, expected):
        return f"parsed as {type(parsed).__name__}, expected {expected.__name__}"
    extra = _undocumented(parsed, expected.__name__)
    return f"fields the document lacks: {'; '.join(extra)}" if extra else None


def _undocumented(value: Any, where: str) -> list[str]:
    """Fields of a parsed answer its schema does not name, at any depth.

    The generated models keep such fields in ``additional_properties``; a model with no
    other field is a free-form map the document declares as one (model metrics).
    """
    if isinstance(value, list):
        return [e for i, v in enumerate(value) for e in _undocumented(v, f"{where}[{i}]")]
    if not attrs.has(type(value)):
        return []
    declared = [f.name for f in attrs.fields(type(value)) if f.name != "additional_properties"]
    extra = getattr(value, "additional_properties", {})  # none if additionalProperties: false
    found = [f"{where}: {sorted(extra)}"] if declared and extra else []
    children = [(n, getattr(value, n)) for n in declared] or list(extra.items())
    return found + [e for n, v in children for e in _undocumented(v, f"{where}.{n}")]
