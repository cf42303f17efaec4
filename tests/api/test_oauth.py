"""SMART Backend Services over HTTP: a signed assertion for a token, the token on the API,
and every way an assertion is refused, each answered in OAuth's JSON and audited.

The app runs on a clock the tests move; assertions are signed with that clock's time, so
nothing here reads the wall clock.
"""

from __future__ import annotations

import uuid
from calendar import timegm
from collections.abc import Iterator
from datetime import datetime, time, timedelta
from typing import Any

import pytest
from authlib.oauth2.rfc7523 import private_key_jwt_sign
from flask import Flask
from flask.testing import FlaskClient
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from sqlalchemy import Engine, create_engine, select

from retention.access.ehr_clients import SCOPE_READ, register_client, revoke_client
from retention.api import create_app
from retention.clock import MovableClock
from retention.store import schema, tables
from tests.conftest import Scored
from tests.support.apps import keyed_client, make_key

BASE = "https://risk.clinic.example/api"
TOKEN_URL = BASE + "/oauth/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_SECONDS = 120


@pytest.fixture(scope="module")
def start(scored: Scored) -> datetime:
    return datetime.combine(scored.as_of, time(9))


@pytest.fixture(scope="module")
def clock(start: datetime) -> MovableClock:
    return MovableClock(start)


@pytest.fixture(autouse=True)
def clock_at_start(clock: MovableClock, start: datetime) -> Iterator[None]:
    clock.at = start
    yield
    clock.at = start


@pytest.fixture(scope="module")
def app(scored: Scored, clock: MovableClock) -> Flask:
    settings = scored.settings.with_overrides(public_base_url=BASE + "/",
                                              smart_token_seconds=TOKEN_SECONDS)
    return create_app(settings, TESTING=True, clock=clock)


@pytest.fixture(scope="module")
def clinic(app: Flask, scored: Scored) -> str:
    items = keyed_client(app, make_key(scored.store, "admin")).get(
        "/v1/risk-list?limit=500").get_json()["items"]
    return str(sorted({i["clinic_id"] for i in items})[0])


@pytest.fixture(scope="module")
def rsa() -> RSAKey:
    return RSAKey.generate_key(2048, {"kid": "rsa-2026", "alg": "RS384"})


@pytest.fixture(scope="module")
def ec() -> ECKey:
    return ECKey.generate_key("P-384", {"kid": "ec-2026", "alg": "ES384"})


def register(scored: Scored | Engine, clinic: str, *keys: Any) -> str:
    store = scored if isinstance(scored, Engine) else scored.store
    with store.begin() as conn:
        schema.upgrade(conn)
        return register_client(conn, jwks={"keys": [k.as_dict(private=False) for k in keys]},
                               recipient="demo-ehr", clinics=[clinic], label="test EHR")


@pytest.fixture(scope="module")
def client_id(scored: Scored, clinic: str, rsa: RSAKey, ec: ECKey) -> str:
    return register(scored, clinic, rsa, ec)


def seconds(at: datetime) -> int:
    return timegm(at.timetuple())


def assertion(key: Any, client_id: str, at: datetime, **changes: Any) -> str:
    """A client assertion as SMART asks for it, signed at ``at``; ``changes`` alter claims."""
    alg = changes.pop("alg", "RS384" if isinstance(key, RSAKey) else "ES384")
    kid = changes.pop("kid", key.kid)
    claims = {"iss": client_id, "sub": client_id, "aud": TOKEN_URL,
              "exp": seconds(at) + 300, "iat": seconds(at), "jti": uuid.uuid4().hex}
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}  # None: left out
    header = {"alg": alg, "typ": "JWT", **({"kid": kid} if kid else {})}
    if key.get("alg") not in (None, alg):  # the same key, signing with another algorithm
        key = type(key).import_key({k: v for k, v in key.as_dict(private=True).items()
                                    if k != "alg"})
    return jwt.encode(header, claims, key, algorithms=[alg])


def ask(app: Flask, signed: str, scope: str = SCOPE_READ, **form: str) -> Any:
    """POST the token request (the response echoes its X-Request-ID)."""
    rid = uuid.uuid4().hex
    data = {"grant_type": "client_credentials", "scope": scope,
            "client_assertion_type": ASSERTION_TYPE, "client_assertion": signed, **form}
    return app.test_client().post("/oauth/token", data=data, headers={"X-Request-ID": rid})


def audit_rows(scored: Scored | Engine, request_id: str) -> list[dict[str, Any]]:
    store = scored if isinstance(scored, Engine) else scored.store
    with store.connect() as conn:
        rows = conn.execute(tables.audit_log.select()
                            .where(tables.audit_log.c.request_id == request_id))
        return [dict(r._mapping) for r in rows]


def rid_of(response: Any) -> str:
    return str(response.headers["X-Request-ID"])


def bearer(app: Flask, token: str) -> FlaskClient:
    return keyed_client(app, token)


@pytest.mark.parametrize("which", ["rsa", "ec"])
def test_an_assertion_buys_a_token_that_reads_the_clinic_and_is_audited(
        app: Flask, scored: Scored, clock: MovableClock, client_id: str, clinic: str,
        rsa: RSAKey, ec: ECKey, which: str) -> None:
    key = rsa if which == "rsa" else ec
    if which == "rsa":  # as an EHR using Authlib's own client signs it
        signed = private_key_jwt_sign(key, client_id, TOKEN_URL, alg="RS384",
                                      header={"kid": key.kid}, issued_at=seconds(clock.at),
                                      expires_in=300)
    else:
        signed = assertion(key, client_id, clock.at)
    response = ask(app, signed)
    assert response.status_code == 200, response.get_json()
    assert response.mimetype == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert (body["token_type"], body["expires_in"], body["scope"]) == (
        "bearer", TOKEN_SECONDS, SCOPE_READ)
    token = body["access_token"]
    key_id = token.split("_")[1]
    with scored.store.connect() as conn:
        minted = conn.execute(select(tables.api_keys)
                              .where(tables.api_keys.c.key_id == key_id)).one()
    assert (minted.role, minted.clinics_json, minted.label, minted.recipient,
            minted.expires_at) == ("ehr", f'["{clinic}"]', f"smart:{client_id}", "demo-ehr",
                                   clock.at + timedelta(seconds=TOKEN_SECONDS))
    [issued] = audit_rows(scored, rid_of(response))
    assert (issued["action"], issued["outcome"], issued["status"], issued["key_id"],
            issued["role"]) == ("oauth.token", "ok", 200, key_id, "ehr")

    # The token is an ehr key with the client's clinic and recipient: it sees what one sees.
    plain = make_key(scored.store, "ehr", [clinic], recipient="demo-ehr")
    listed = bearer(app, token).get("/v1/risk-list?limit=500",
                                    headers={"X-Request-ID": (rid := uuid.uuid4().hex)})
    assert listed.status_code == 200
    items = listed.get_json()["items"]
    assert items == bearer(app, plain).get("/v1/risk-list?limit=500").get_json()["items"]
    assert {i["clinic_id"] for i in items} <= {clinic}
    [read] = audit_rows(scored, rid)
    assert (read["key_id"], read["role"], read["outcome"]) == (key_id, "ehr", "ok")

    subject = items[0]["client_id"] if items else "C000001"
    fhir = bearer(app, token).get(f"/fhir/RiskAssessment?subject=Patient/{subject}",
                                  headers={"X-Request-ID": (rid := uuid.uuid4().hex)})
    assert fhir.status_code == 200 and fhir.get_json()["resourceType"] == "Bundle"
    assert audit_rows(scored, rid)[0]["key_id"] == key_id
    assert token not in str(audit_rows(scored, rid_of(response)))


def test_system_star_read_is_narrowed_to_risk_assessments(
        app: Flask, clock: MovableClock, client_id: str, ec: ECKey) -> None:
    response = ask(app, assertion(ec, client_id, clock.at), scope="system/*.read")
    assert response.status_code == 200
    assert response.get_json()["scope"] == SCOPE_READ


REFUSALS: dict[str, tuple[dict[str, Any], dict[str, str], str]] = {
    # case: (claims changed, None to leave one out; form fields changed; the OAuth error)
    "wrong audience": ({"aud": "https://elsewhere.example/oauth/token"}, {}, "invalid_client"),
    "audience from the host": ({"aud": "http://localhost/oauth/token"}, {}, "invalid_client"),
    "expired": ({"exp": -120, "iat": -420}, {}, "invalid_client"),
    "lives too long": ({"exp": 600}, {}, "invalid_client"),
    "no jti": ({"jti": None}, {}, "invalid_client"),
    "iss is not sub": ({"iss": "0123456789ab"}, {}, "invalid_client"),
    "RS256": ({"alg": "RS256"}, {}, "invalid_client"),
    "no kid": ({"kid": None}, {}, "invalid_client"),
    "unknown scope": ({}, {"scope": "system/Patient.read"}, "invalid_scope"),
    "two scopes, one unknown": ({}, {"scope": f"{SCOPE_READ} system/Observation.read"},
                                "invalid_scope"),
    "no scope": ({}, {"scope": ""}, "invalid_scope"),
    "another grant": ({}, {"grant_type": "password"}, "unsupported_grant_type"),
    "another assertion type": ({}, {"client_assertion_type": "urn:x"}, "invalid_client"),
    "no assertion": ({}, {"client_assertion": ""}, "invalid_client"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_assertions_get_an_oauth_error_and_are_audited(
        app: Flask, scored: Scored, clock: MovableClock, client_id: str, rsa: RSAKey,
        case: str) -> None:
    claims, form, error = REFUSALS[case]
    now = seconds(clock.at)
    signed = assertion(rsa, client_id, clock.at, **{
        k: now + v if k in ("exp", "iat") else v for k, v in claims.items()})
    response = ask(app, signed, **form)
    refused(scored, response, error)


def refused(scored: Scored | Engine, response: Any, error: str, status: int = 400) -> None:
    assert response.status_code == status, response.get_json()
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["error"] == error and "access_token" not in body
    [record] = audit_rows(scored, rid_of(response))
    assert (record["action"], record["outcome"], record["status"]) == (
        "oauth.token", "denied", status)


def test_a_replayed_assertion_is_refused(app: Flask, scored: Scored, clock: MovableClock,
                                         client_id: str, ec: ECKey) -> None:
    signed = assertion(ec, client_id, clock.at)
    assert ask(app, signed).status_code == 200
    clock.at += timedelta(seconds=30)
    replay = ask(app, signed)
    refused(scored, replay, "invalid_client")
    assert "jti" in replay.get_json()["error_description"]
    assert audit_rows(scored, rid_of(replay))[0]["key_id"] == client_id


def test_an_unknown_client_is_refused(app: Flask, scored: Scored, clock: MovableClock,
                                      rsa: RSAKey) -> None:
    response = ask(app, assertion(rsa, "0123456789ab", clock.at))
    refused(scored, response, "invalid_client")
    assert audit_rows(scored, rid_of(response))[0]["key_id"] == "0123456789ab"
    wild = ask(app, assertion(rsa, "not-a-client-id-at-all", clock.at))
    refused(scored, wild, "invalid_client")
    assert audit_rows(scored, rid_of(wild))[0]["key_id"] is None


def test_a_signature_by_another_key_is_refused(app: Flask, scored: Scored,
                                               clock: MovableClock, client_id: str) -> None:
    impostor = RSAKey.generate_key(2048, {"kid": "rsa-2026"})  # the registered key's kid
    response = ask(app, assertion(impostor, client_id, clock.at))
    refused(scored, response, "invalid_client")
    assert audit_rows(scored, rid_of(response))[0]["key_id"] == client_id


def test_a_token_expires_after_smart_token_seconds(app: Flask, clock: MovableClock,
                                                   client_id: str, ec: ECKey) -> None:
    token = ask(app, assertion(ec, client_id, clock.at)).get_json()["access_token"]
    clock.at += timedelta(seconds=TOKEN_SECONDS - 1)
    assert bearer(app, token).get("/v1/risk-list?limit=1").status_code == 200
    clock.at += timedelta(seconds=1)
    expired = bearer(app, token).get("/v1/risk-list?limit=1")
    assert expired.status_code == 401 and "items" not in expired.get_json()


def test_revoking_the_client_refuses_its_live_token_and_its_assertions(
        app: Flask, scored: Scored, clock: MovableClock, clinic: str, ec: ECKey) -> None:
    client_id = register(scored, clinic, ec)
    token = ask(app, assertion(ec, client_id, clock.at)).get_json()["access_token"]
    assert bearer(app, token).get("/v1/risk-list?limit=1").status_code == 200
    with scored.store.begin() as conn:
        assert revoke_client(conn, client_id, now=clock.at) == 1
    response = bearer(app, token).get("/v1/risk-list?limit=1")
    assert response.status_code == 401 and "items" not in response.get_json()
    again = ask(app, assertion(ec, client_id, clock.at))
    refused(scored, again, "invalid_client")
    assert audit_rows(scored, rid_of(again))[0]["key_id"] == client_id


def test_parameters_in_the_url_are_refused(app: Flask, scored: Scored, clock: MovableClock,
                                           client_id: str, ec: ECKey) -> None:
    rid = uuid.uuid4().hex
    response = app.test_client().post(
        "/oauth/token?grant_type=client_credentials",
        data={"client_assertion_type": ASSERTION_TYPE,
              "client_assertion": assertion(ec, client_id, clock.at), "scope": SCOPE_READ},
        headers={"X-Request-ID": rid})
    refused(scored, response, "invalid_request")


def test_smart_configuration_names_the_token_endpoint(app: Flask) -> None:
    response = app.test_client().get("/fhir/.well-known/smart-configuration")
    assert response.status_code == 200
    found = response.get_json()
    assert found["token_endpoint"] == TOKEN_URL
    assert found["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert found["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    assert found["grant_types_supported"] == ["client_credentials"]


def test_without_a_public_base_url_the_endpoint_says_it_must_be_configured(
        scored: Scored, clock: MovableClock, client_id: str, ec: ECKey) -> None:
    off = create_app(scored.settings.with_overrides(public_base_url=""), TESTING=True,
                     clock=clock)
    response = off.test_client().post("/oauth/token", data={
        "grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion(ec, client_id, clock.at), "scope": SCOPE_READ})
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    assert "public_base_url" in response.get_json()["detail"]
    assert off.test_client().get("/fhir/.well-known/smart-configuration").status_code == 404


def test_on_postgresql_a_jti_passes_once_and_revocation_reaches_the_token(
        scored: Scored, pg_url: str, clock: MovableClock, ec: ECKey) -> None:
    """The API's autocommit connection: each statement commits as it runs."""
    engine = create_engine(pg_url)
    client_id = register(engine, "clinic-east", ec)
    pg_app = create_app(scored.settings.with_overrides(store_url=pg_url, public_base_url=BASE),
                        TESTING=True, clock=clock)
    signed = assertion(ec, client_id, clock.at)
    issued = ask(pg_app, signed)
    assert issued.status_code == 200
    refused(engine, ask(pg_app, signed), "invalid_client")
    token = bearer(pg_app, issued.get_json()["access_token"])
    assert token.get("/v1/risk-list").status_code == 404  # authenticated; no list here yet
    with engine.begin() as conn:
        assert revoke_client(conn, client_id, now=clock.at) == 1
    assert token.get("/v1/risk-list").status_code == 401
    refused(engine, ask(pg_app, assertion(ec, client_id, clock.at)), "invalid_client")
    engine.dispose()
