"""CDS Hooks: discovery, the patient-view card, and every way a call is refused, audited."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Any

import pytest
from flask import Flask
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey
from sqlalchemy import Engine, insert, select

from retention.access.consent import NOTICE
from retention.access.ehr_clients import register_client, revoke_client
from retention.api import create_app
from retention.api.cds_hooks import SERVICE_ID
from retention.api.web.views import pct
from retention.clock import FixedClock
from retention.db.engines import store_engine
from retention.settings import Settings
from retention.store import schema, tables
from tests.conftest import Scored
from tests.support.apps import clock_on, copied_store, keyed_client, make_key

BASE = "https://risk.clinic.example"
AUDIENCE = f"{BASE}/cds-services/{SERVICE_ID}"
PATH = f"/cds-services/{SERVICE_ID}"
# No synthetic consent names it: the consents here are all the ones the test makes.
RECIPIENT = "cds-test-ehr"
IDENTIFIERS = "urn:oid:2.16.840.1.113883.19.5"
PROBLEM = "application/problem+json"
# Enough that no refusal in this module is counted instead of written, or met with 429.
GENEROUS = {"audit_denials_per_minute": 10_000,
            "api_rate_limit_per_address_per_minute": 10_000}


@dataclass
class Ehr:
    """A registered EHR client, its private keys, and the store and clock it is called on."""

    client_id: str
    ec: ECKey
    rsa: RSAKey
    store: Engine
    settings: Settings
    clock: FixedClock
    clients: dict[str, dict[str, Any]]  # a consented client per tier, as the API lists it
    admin: str

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(self.clock.now().replace(tzinfo=UTC).timestamp())
        return {"iss": self.client_id, "sub": self.client_id, "aud": AUDIENCE,
                "iat": now, "exp": now + 240, "jti": uuid.uuid4().hex, **changes}

    def token(self, alg: str = "ES384", header: dict[str, Any] | None = None,
              **changes: Any) -> str:
        key = self.ec if alg == "ES384" else self.rsa
        head = {"alg": alg, "typ": "JWT", "kid": key.kid, **(header or {})}
        return jwt.encode(head, self.claims(**changes), key, algorithms=[alg])


def hook_call(patient_id: str) -> dict[str, Any]:
    return {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "fhirServer": "https://ehr.example/fhir",
            "context": {"patientId": patient_id, "userId": "Practitioner/example"}}


def call(app: Flask, token: str, patient_id: str) -> tuple[Any, str]:
    """POST a patient-view call; returns the response and its request id."""
    rid = uuid.uuid4().hex
    response = app.test_client().post(
        PATH, json=hook_call(patient_id),
        headers={"Authorization": f"Bearer {token}", "X-Request-ID": rid})
    return response, rid


def audit_rows(store: Engine, request_id: str) -> list[dict[str, Any]]:
    with store.connect() as conn:
        rows = conn.execute(select(tables.audit_log)
                            .where(tables.audit_log.c.request_id == request_id)).fetchall()
    return [dict(r._mapping) for r in rows]


def only_audit(store: Engine, request_id: str) -> dict[str, Any]:
    rows = audit_rows(store, request_id)
    assert len(rows) == 1, rows
    return rows[0]


@pytest.fixture(scope="module")
def ehr(scored: Scored, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ehr]:
    """A copy of the scored store with an EHR client registered for every clinic and one
    consented client per tier (and none for a second high-risk client)."""
    settings = copied_store(scored.settings, tmp_path_factory.mktemp("cds")).with_overrides(
        public_base_url=BASE, **GENEROUS)
    store = store_engine(settings.store_url)
    clock = clock_on(scored.as_of)
    admin = make_key(store, "admin")
    api = create_app(settings, TESTING=True, clock=clock)
    items = keyed_client(api, admin).get("/v1/risk-list?limit=500").get_json()["items"]
    by_tier: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        by_tier.setdefault(item["tier"], []).append(item)
    assert {"high", "medium", "low"} <= by_tier.keys() and len(by_tier["high"]) > 1
    clients = {tier: rows[0] for tier, rows in by_tier.items()}
    clients["unconsented"] = by_tier["high"][1]
    ec = ECKey.generate_key("P-384", parameters={"kid": "ec-1"})
    rsa = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
    jwks = {"keys": [ec.as_dict(private=False), rsa.as_dict(private=False)]}
    with store.begin() as conn:
        schema.upgrade(conn)
        client_id = register_client(conn, jwks=jwks, recipient=RECIPIENT,
                                    clinics=sorted({i["clinic_id"] for i in items}),
                                    label="test EHR", now=clock.now())
        for tier in ("high", "medium", "low"):
            conn.execute(insert(tables.copies["consents"]).values(
                consent_id=f"consent-{tier}", client_id=clients[tier]["client_id"],
                recipient=RECIPIENT, purpose="treatment",
                effective_on=scored.as_of - timedelta(days=30), expires_on=None,
                revoked_at=None, updated_at=clock.now()))
    yield Ehr(client_id, ec, rsa, store, settings, clock, clients, admin)
    store.dispose()


@pytest.fixture(scope="module")
def app(ehr: Ehr) -> Flask:
    return create_app(ehr.settings, TESTING=True, clock=ehr.clock)


def test_discovery_lists_the_one_patient_view_service(app: Flask) -> None:
    response = app.test_client().get("/cds-services")
    assert response.status_code == 200
    (service,) = response.get_json()["services"]
    assert service["id"] == SERVICE_ID and service["hook"] == "patient-view"
    assert service["title"] and service["description"] and service["usageRequirements"]
    assert "prefetch" not in service  # context.patientId is all it needs
    assert "no card" in service["description"]


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_a_high_risk_client_gets_a_warning_card_with_the_apis_reasons(
        app: Flask, ehr: Ehr, alg: str) -> None:
    client = ehr.clients["high"]
    response, rid = call(app, ehr.token(alg), client["client_id"])
    assert response.status_code == 200, response.get_json()
    (found,) = response.get_json()["cards"]
    risk = keyed_client(app, ehr.admin).get(
        f"/v1/clients/{client['client_id']}/risk").get_json()
    assert found["indicator"] == "warning"
    assert found["summary"].startswith("Dropout risk HIGH (")
    assert len(found["summary"]) < 140
    assert f"({pct(risk['current']['risk'])})" in found["summary"]  # as the pages show it
    texts = [r["text"] for r in risk["current"]["reasons"]]
    positions = [found["detail"].index(t) for t in texts]
    assert positions == sorted(positions)  # every reason, in the API's order
    assert risk["as_of"] in found["detail"] and risk["model_version"] in found["detail"]
    assert found["detail"].endswith(NOTICE)
    assert found["links"] == [{"label": "Open in retention", "type": "absolute",
                               "url": f"{BASE}/web/clients/{client['client_id']}"}]
    assert found["source"]["label"] == "retention" and uuid.UUID(found["uuid"])
    record = only_audit(ehr.store, rid)
    assert (record["action"], record["outcome"], record["status"]) == (
        "cds.patient_view", "ok", 200)
    assert record["key_id"] == ehr.client_id and record["recipient"] == RECIPIENT
    assert json.loads(record["client_ids_json"]) == [client["client_id"]]
    assert json.loads(record["detail"])["consents"] == {client["client_id"]: "consent-high"}


def test_a_medium_risk_is_an_info_card_and_a_low_risk_no_card(app: Flask, ehr: Ehr) -> None:
    response, _ = call(app, ehr.token(), ehr.clients["medium"]["client_id"])
    assert [c["indicator"] for c in response.get_json()["cards"]] == ["info"]
    low = ehr.clients["low"]["client_id"]
    response, rid = call(app, ehr.token(), low)
    assert response.status_code == 200 and response.get_json() == {"cards": []}
    assert only_audit(ehr.store, rid)["outcome"] == "ok"


def test_without_consent_no_card_and_the_denial_is_audited(app: Flask, ehr: Ehr) -> None:
    withheld = ehr.clients["unconsented"]["client_id"]
    response, rid = call(app, ehr.token(), withheld)
    assert response.status_code == 200 and response.get_json() == {"cards": []}
    record = only_audit(ehr.store, rid)
    assert (record["outcome"], record["status"]) == ("denied", 200)
    assert json.loads(record["client_ids_json"]) == [withheld]
    detail = json.loads(record["detail"])
    # The synthetic clinic's own consents name other recipients, if any: none names this one.
    assert detail["consents"] == {} and list(detail["withheld"]) == [withheld]
    assert detail["withheld"][withheld] in ("no_consent", "consent_for_another_recipient")


def test_an_unknown_patient_gets_no_card(app: Flask, ehr: Ehr) -> None:
    response, rid = call(app, ehr.token(), "no-such-patient")
    assert response.status_code == 200 and response.get_json() == {"cards": []}
    assert only_audit(ehr.store, rid)["outcome"] == "not_found"


def test_an_ehr_patient_id_is_found_through_the_identifier_system(ehr: Ehr) -> None:
    client_id = ehr.clients["high"]["client_id"]
    with ehr.store.begin() as conn:
        conn.execute(insert(tables.copies["client_identifiers"]).values(
            system=IDENTIFIERS, value="ehr-4711", client_id=client_id,
            updated_at=ehr.clock.now()))
    app = create_app(ehr.settings.with_overrides(cds_patient_id_system=IDENTIFIERS),
                     TESTING=True, clock=ehr.clock)
    response, _ = call(app, ehr.token(), "ehr-4711")
    (found,) = response.get_json()["cards"]
    assert found["links"][0]["url"].endswith(f"/web/clients/{client_id}")
    # With a system set, the service's own id is not tried: it could be another person.
    response, rid = call(app, ehr.token(), client_id)
    assert response.get_json() == {"cards": []}
    assert only_audit(ehr.store, rid)["outcome"] == "not_found"


def _none_token(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'JWT', 'kid': 'ec-1'})}.{part(claims)}."


def _refusals(ehr: Ehr) -> dict[str, tuple[str, str]]:
    """Tokens that must be refused, each with the audit outcome it leaves."""
    now = int(ehr.clock.now().replace(tzinfo=UTC).timestamp())
    stranger = ECKey.generate_key("P-384", parameters={"kid": "ec-1"})
    with ehr.store.begin() as conn:
        jwks = {"keys": [ehr.ec.as_dict(private=False)]}
        revoked = register_client(conn, jwks=jwks, recipient=RECIPIENT, clinics=["x"],
                                  now=ehr.clock.now())
        revoke_client(conn, revoked, now=ehr.clock.now())
    header = {"alg": "ES384", "typ": "JWT", "kid": "ec-1"}
    return {
        "wrong aud": (ehr.token(aud=f"{BASE}/cds-services"), "bad_audience"),
        "aud of another host": (ehr.token(aud=f"https://evil.example/cds-services/{SERVICE_ID}"),
                                "bad_audience"),
        "expired": (ehr.token(iat=now - 400, exp=now - 60), "expired"),
        "exp too far ahead": (ehr.token(exp=now + 3600), "exp_too_far"),
        "iat in the future": (ehr.token(iat=now + 120), "not_yet_valid"),
        "no jti": (ehr.token(jti=""), "unauthenticated"),
        "jti too long": (ehr.token(jti="j" * 256), "unauthenticated"),
        "exp not a number": (ehr.token(exp=float("nan")), "unauthenticated"),
        "iat not a number": (ehr.token(iat="now"), "unauthenticated"),
        "alg none": (_none_token(ehr.claims()), "bad_algorithm"),
        "HS256": (jwt.encode({**header, "alg": "HS256"}, ehr.claims(),
                             OctKey.import_key(b"a shared secret of thirty-two bytes!"),
                             algorithms=["HS256"]), "bad_algorithm"),
        "unknown iss": (ehr.token(iss="0123456789ab"), "unknown_client"),
        "revoked client": (ehr.token(iss=revoked), "revoked"),
        "another key, same kid": (jwt.encode(header, ehr.claims(), stranger,
                                             algorithms=["ES384"]), "bad_signature"),
        # jku is never fetched: a key it points to is not a registered one.
        "jku to the signer's own keys": (
            jwt.encode({**header, "kid": "attacker", "jku": "https://evil.example/jwks"},
                       ehr.claims(), stranger, algorithms=["ES384"]), "bad_signature"),
        "kid of the other key type": (
            jwt.encode({**header, "kid": "rsa-1"}, ehr.claims(), stranger,
                       algorithms=["ES384"]), "bad_signature"),
        "not a JWT": ("rk_0123456789ab_" + "x" * 43, "unauthenticated"),
    }


def test_every_bad_jwt_is_refused_with_401_and_audited(app: Flask, ehr: Ehr) -> None:
    client_id = ehr.clients["high"]["client_id"]
    for name, (token, outcome) in _refusals(ehr).items():
        response, rid = call(app, token, client_id)
        assert response.status_code == 401, name
        assert response.mimetype == PROBLEM, name
        assert "cards" not in response.get_json(), name
        assert response.headers["WWW-Authenticate"].startswith("Bearer"), name
        record = only_audit(ehr.store, rid)
        assert (record["outcome"], record["status"], record["action"]) == (
            outcome, 401, "cds.patient_view"), name
        assert json.loads(record["client_ids_json"]) == [], name


def test_a_jti_is_accepted_once(app: Flask, ehr: Ehr) -> None:
    token = ehr.token()
    client_id = ehr.clients["high"]["client_id"]
    assert call(app, token, client_id)[0].status_code == 200
    response, rid = call(app, token, client_id)
    assert response.status_code == 401
    assert only_audit(ehr.store, rid)["outcome"] == "replayed"


def test_an_audience_list_naming_this_service_is_accepted(app: Flask, ehr: Ehr) -> None:
    token = ehr.token(aud=["https://other.example/cds-services", AUDIENCE])
    assert call(app, token, ehr.clients["high"]["client_id"])[0].status_code == 200


def test_no_authorization_header_is_refused(app: Flask, ehr: Ehr) -> None:
    rid = uuid.uuid4().hex
    response = app.test_client().post(PATH, json=hook_call("C000001"),
                                      headers={"X-Request-ID": rid})
    assert response.status_code == 401
    assert only_audit(ehr.store, rid)["outcome"] == "unauthenticated"


@pytest.mark.parametrize("body", [
    {"hook": "order-sign", "hookInstance": "x", "context": {"patientId": "C1"}},
    {"hook": "patient-view", "context": {"patientId": "C1"}},
    {"hook": "patient-view", "hookInstance": "x", "context": {}},
    {"hook": "patient-view", "hookInstance": "x", "context": {"patientId": "a/b"}},
    ["not", "an", "object"],
])
def test_a_malformed_hook_call_is_a_400_after_authentication(app: Flask, ehr: Ehr,
                                                             body: Any) -> None:
    rid = uuid.uuid4().hex
    response = app.test_client().post(
        PATH, json=body, headers={"Authorization": f"Bearer {ehr.token()}", "X-Request-ID": rid})
    assert response.status_code == 400 and response.mimetype == PROBLEM
    record = only_audit(ehr.store, rid)
    assert (record["outcome"], record["key_id"]) == ("bad_request", ehr.client_id)


def test_without_a_public_base_url_the_service_refuses_with_503(ehr: Ehr) -> None:
    app = create_app(ehr.settings.with_overrides(public_base_url=""), TESTING=True,
                     clock=ehr.clock)
    response, rid = call(app, ehr.token(), ehr.clients["high"]["client_id"])
    assert response.status_code == 503
    assert "public_base_url" in response.get_json()["detail"]
    assert only_audit(ehr.store, rid)["outcome"] == "error"


def test_an_ehr_client_over_its_rate_limit_gets_429(ehr: Ehr) -> None:
    app = create_app(ehr.settings.with_overrides(api_rate_limit_per_minute=1), TESTING=True,
                     clock=ehr.clock)
    client_id = ehr.clients["high"]["client_id"]
    assert call(app, ehr.token(), client_id)[0].status_code == 200
    response, rid = call(app, ehr.token(), client_id)
    assert response.status_code == 429 and "Retry-After" in response.headers
    record = only_audit(ehr.store, rid)
    assert (record["outcome"], record["key_id"]) == ("rate_limited", ehr.client_id)
