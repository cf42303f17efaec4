"""Who gets in and what each caller sees over the API: keys, roles, clinic and caseload scope."""

from __future__ import annotations

import uuid

import pytest
from flask import Flask

from retention.access.keys import create_key, revoke_key
from retention.store import tables
from tests.conftest import Scored
from tests.support.apps import keyed_client, make_key

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def everyone(app: Flask, scored: Scored) -> list[dict]:
    token = make_key(scored.store, "admin")
    items = keyed_client(app, token).get("/v1/risk-list?limit=500").get_json()["items"]
    assert len(items) > 30
    return items


@pytest.fixture(scope="module")
def clinics(everyone: list[dict]) -> list[str]:
    found = sorted({i["clinic_id"] for i in everyone})
    assert len(found) >= 2
    return found


def audit_rows(scored: Scored, request_id: str) -> list[dict]:
    with scored.store.connect() as conn:
        rows = conn.execute(tables.audit_log.select()
                            .where(tables.audit_log.c.request_id == request_id)).fetchall()
    return [dict(r._mapping) for r in rows]


@pytest.mark.parametrize("header", [None, "Bearer", "Basic dXNlcjpwYXNz", "Bearer nonsense",
                                    "Bearer rk_0123456789ab_" + "x" * 43])
def test_without_a_valid_key_nothing_is_returned(app: Flask, scored: Scored,
                                                 header: str | None) -> None:
    rid = uuid.uuid4().hex
    headers = {"X-Request-ID": rid, **({"Authorization": header} if header else {})}
    for url in ("/v1/risk-list", "/v1/clients/C000001/risk",
                "/fhir/RiskAssessment?subject=Patient/C000001", "/v1/models"):
        response = app.test_client().get(url, headers=headers)
        assert response.status_code == 401
        # FHIR clients read FHIR's error resource; everyone else RFC 9457 problem JSON.
        fhir = url.startswith("/fhir/")
        assert response.mimetype == ("application/fhir+json" if fhir else PROBLEM)
        if fhir:
            assert response.get_json()["resourceType"] == "OperationOutcome"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "items" not in response.get_json() and "entry" not in response.get_json()
    records = audit_rows(scored, rid)
    assert len(records) == 4
    assert {r["outcome"] for r in records} == {"unauthenticated"}


def test_a_revoked_key_gets_nothing(app: Flask, scored: Scored, clinics: list[str]) -> None:
    with scored.store.begin() as conn:
        key_id, token = create_key(conn, "case_manager", [clinics[0]])
    client = keyed_client(app, token)
    assert client.get("/v1/risk-list?limit=1").status_code == 200
    with scored.store.begin() as conn:
        revoke_key(conn, key_id)
    response = client.get("/v1/risk-list?limit=1")
    assert response.status_code == 401
    assert "items" not in response.get_json()


def test_a_tampered_secret_with_a_real_key_id_is_refused(app: Flask, scored: Scored) -> None:
    token = make_key(scored.store, "admin")
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert keyed_client(app, forged).get("/v1/risk-list").status_code == 401


def test_a_clinic_key_lists_only_its_clinic(app: Flask, scored: Scored, everyone: list[dict],
                                            clinics: list[str]) -> None:
    token = make_key(scored.store, "case_manager", [clinics[0]])
    items = keyed_client(app, token).get("/v1/risk-list?limit=500").get_json()["items"]
    assert {i["clinic_id"] for i in items} == {clinics[0]}
    assert [i["episode_id"] for i in items] == [
        i["episode_id"] for i in everyone if i["clinic_id"] == clinics[0]]
    # Asking for another clinic by filter narrows the scope; it never widens it.
    other = keyed_client(app, token).get(f"/v1/risk-list?clinic_id={clinics[1]}").get_json()
    assert other["items"] == []


def test_foreign_ids_are_indistinguishable_from_unknown_ones_and_audited(
    app: Flask, scored: Scored, everyone: list[dict], clinics: list[str]
) -> None:
    token = make_key(scored.store, "case_manager", [clinics[0]])
    client = keyed_client(app, token)
    unknown = client.get("/v1/clients/NOBODY/risk")
    assert unknown.status_code == 404
    foreign = sorted({i["client_id"] for i in everyone if i["clinic_id"] != clinics[0]})
    assert len(foreign) > 20
    for client_id in foreign:
        rid = uuid.uuid4().hex
        response = client.get(f"/v1/clients/{client_id}/risk", headers={"X-Request-ID": rid})
        assert response.status_code == 404
        body = response.get_json()
        assert body["title"] == unknown.get_json()["title"]
        assert body["detail"] == unknown.get_json()["detail"].replace("NOBODY", client_id)
        assert set(body) == set(unknown.get_json())
        fhir = client.get(f"/fhir/RiskAssessment?subject=Patient/{client_id}").get_json()
        assert fhir["total"] == 0 and fhir["entry"] == []
        [record] = audit_rows(scored, rid)
        assert record["outcome"] == "denied" and record["status"] == 404
        assert client_id in record["client_ids_json"]
    text = client.get("/v1/risk-list?limit=500").get_data(as_text=True)
    assert not any(client_id in text for client_id in foreign)


def test_a_caseload_key_sees_only_its_own_clients(app: Flask, scored: Scored,
                                                  everyone: list[dict]) -> None:
    mine = everyone[0]
    token = make_key(scored.store, "case_manager", [mine["clinic_id"]],
                     case_manager_id=mine["case_manager_id"])
    client = keyed_client(app, token)
    items = client.get("/v1/risk-list?limit=500").get_json()["items"]
    assert items and {i["case_manager_id"] for i in items} == {mine["case_manager_id"]}
    colleague = next(i for i in everyone if i["clinic_id"] == mine["clinic_id"]
                     and i["case_manager_id"] != mine["case_manager_id"])
    assert client.get(f"/v1/clients/{colleague['client_id']}/risk").status_code == 404
    assert client.get(f"/v1/clients/{mine['client_id']}/risk").status_code == 200


def test_roles_decide_the_endpoints(app: Flask, scored: Scored, clinics: list[str]) -> None:
    analyst = keyed_client(app, make_key(scored.store, "analyst", [clinics[0]]))
    refused = analyst.get("/v1/risk-list")
    assert refused.status_code == 403
    assert refused.get_json()["detail"] == "an analyst key may not use this endpoint"
    assert analyst.get("/v1/runs").status_code == 200
    assert analyst.get("/v1/models").status_code == 200
    granted = keyed_client(app, make_key(scored.store, "analyst", [clinics[0]],
                                         grants=["client_data"]))
    assert granted.get("/v1/risk-list?limit=2").status_code == 200
    manager = keyed_client(app, make_key(scored.store, "case_manager", [clinics[0]]))
    response = manager.get("/v1/runs")
    assert response.status_code == 403 and response.mimetype == PROBLEM
