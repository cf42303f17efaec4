"""42 CFR Part 2: an outside recipient is given a client's data only under consent, audited.

An ``ehr`` key acting for recipient ``test-ehr`` reads a copy of the scored clinic in
which the test writes the consents of seven clients itself: one per case of the rule.
"""

from __future__ import annotations

import json
import uuid
from datetime import date, datetime, time, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, create_engine, delete, insert, update

from retention.access import consent
from retention.access.consent import NOTICE
from retention.access.identifiers import identifiers_of
from retention.access.keys import Caller, create_key
from retention.api import create_app
from retention.pipelines.cli import main
from retention.pipelines.commands.common import Context
from retention.settings import Settings
from retention.store import tables
from tests.conftest import REPO, Scored
from tests.support.apps import clock_on, copied_store, keyed_client, make_key

RECIPIENT = "test-ehr"
CLASS = "test_partners"
CONSENTS = tables.copies["consents"]


@pytest.fixture(scope="module")
def settings(scored: Scored, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    copied = copied_store(scored.settings, tmp_path_factory.mktemp("disclosure"))
    return copied.with_overrides(recipient_classes={CLASS: (RECIPIENT,)})


@pytest.fixture(scope="module")
def store(settings: Settings) -> Engine:
    return create_engine(settings.store_url)


@pytest.fixture(scope="module")
def app(settings: Settings, scored: Scored) -> Flask:
    return create_app(settings, clock=clock_on(scored.as_of))


@pytest.fixture(scope="module")
def clinic_rows(app: Flask, store: Engine) -> list[dict[str, Any]]:
    """The list of the first clinic, as its own staff see it."""
    admin = keyed_client(app, make_key(store, "admin"))
    items = admin.get("/v1/risk-list?limit=500").get_json()["items"]
    clinic = items[0]["clinic_id"]
    return [i for i in items if i["clinic_id"] == clinic]


@pytest.fixture(scope="module")
def cases(clinic_rows: list[dict[str, Any]], store: Engine, scored: Scored) -> dict[str, str]:
    """Client id by case; each holds exactly the consent its case names."""
    day = scored.as_of
    now = datetime.combine(day, time(9))
    names = ["consented", "none", "expired", "revoked", "other_recipient", "by_class",
             "other_purpose", "not_yet", "revoked_later"]
    ids = list(dict.fromkeys(r["client_id"] for r in clinic_rows))[:len(names)]
    chosen = dict(zip(names, ids, strict=True))
    base = {"purpose": "treatment", "effective_on": day - timedelta(days=60),
            "expires_on": None, "revoked_at": None, "updated_at": now}
    rows = {
        "consented": {"recipient": RECIPIENT},
        "expired": {"recipient": RECIPIENT, "expires_on": day - timedelta(days=1)},
        "revoked": {"recipient": RECIPIENT, "revoked_at": now - timedelta(minutes=1)},
        "other_recipient": {"recipient": "other-ehr"},
        "by_class": {"recipient": f"class:{CLASS}", "expires_on": day},
        "other_purpose": {"recipient": RECIPIENT, "purpose": "research"},
        "not_yet": {"recipient": RECIPIENT, "effective_on": day + timedelta(days=1)},
        "revoked_later": {"recipient": RECIPIENT, "revoked_at": now + timedelta(hours=1)},
    }
    with store.begin() as conn:
        conn.execute(delete(CONSENTS).where(CONSENTS.c.client_id.in_(ids)))
        for case, values in rows.items():
            conn.execute(insert(CONSENTS).values(
                consent_id=f"T-{case}", client_id=chosen[case], **{**base, **values}))
    return chosen


@pytest.fixture(scope="module")
def ehr(app: Flask, store: Engine, clinic_rows: list[dict[str, Any]]) -> FlaskClient:
    return keyed_client(app, make_key(store, "ehr", [clinic_rows[0]["clinic_id"]],
                                      recipient=RECIPIENT, label="test EHR"))


def audited(store: Engine, request_id: str) -> dict[str, Any]:
    with store.connect() as conn:
        [row] = conn.execute(tables.audit_log.select()
                             .where(tables.audit_log.c.request_id == request_id)).fetchall()
    record = dict(row._mapping)
    record["detail"] = json.loads(record["detail"]) if record["detail"] else None
    return record


ALLOWED = ("consented", "by_class", "revoked_later")
WITHHELD = {"none": consent.NO_CONSENT, "expired": consent.EXPIRED,
            "revoked": consent.REVOKED, "other_recipient": consent.OTHER_RECIPIENT,
            "other_purpose": consent.OTHER_PURPOSE, "not_yet": consent.NOT_YET}


@pytest.mark.parametrize("case", ALLOWED)
def test_a_consented_client_is_disclosed_with_the_notice(
    ehr: FlaskClient, store: Engine, cases: dict[str, str], case: str,
) -> None:
    rid = uuid.uuid4().hex
    response = ehr.get(f"/v1/clients/{cases[case]}/risk", headers={"X-Request-ID": rid})
    assert response.status_code == 200
    body = response.get_json()
    assert body["client_id"] == cases[case] and body["notice"] == NOTICE
    # The consent's scope in words travels with the data (42 CFR 2.32(b)).
    assert body["consent"].startswith(f"Disclosed under the client's consent T-{case}: to ")
    assert ("until revoked" in body["consent"]) == (case != "by_class")
    record = audited(store, rid)
    assert (record["outcome"], record["recipient"], record["role"]) == ("ok", RECIPIENT, "ehr")
    assert record["detail"] == {"consents": {cases[case]: f"T-{case}"}, "withheld": {}}


@pytest.mark.parametrize("case", sorted(WITHHELD))
def test_a_client_without_a_covering_consent_looks_unknown_and_the_denial_says_why(
    ehr: FlaskClient, store: Engine, cases: dict[str, str], case: str,
) -> None:
    unknown = ehr.get("/v1/clients/NOBODY/risk").get_json()
    rid = uuid.uuid4().hex
    client_id = cases[case]
    response = ehr.get(f"/v1/clients/{client_id}/risk", headers={"X-Request-ID": rid})
    assert response.status_code == 404
    body = response.get_json()
    assert body["detail"] == unknown["detail"].replace("NOBODY", client_id)
    assert set(body) == set(unknown) and client_id not in json.dumps(
        {k: v for k, v in body.items() if k not in ("detail", "instance")})
    record = audited(store, rid)
    assert (record["outcome"], record["status"], record["recipient"]) == (
        "denied", 404, RECIPIENT)
    assert record["detail"] == {"consents": {}, "withheld": {client_id: WITHHELD[case]}}


def test_the_list_holds_only_consented_clients_ranked_without_gaps(
    ehr: FlaskClient, store: Engine, cases: dict[str, str], clinic_rows: list[dict[str, Any]],
    scored: Scored, settings: Settings,
) -> None:
    rid = uuid.uuid4().hex
    body = ehr.get("/v1/risk-list?limit=500", headers={"X-Request-ID": rid}).get_json()
    assert body["notice"] == NOTICE
    assert set(body["consents"]) == {i["client_id"] for i in body["items"]}
    got = [i["client_id"] for i in body["items"]]
    assert {cases[c] for c in ALLOWED} <= set(got)
    assert not {cases[c] for c in WITHHELD} & set(got)
    # Exactly the clinic's clients the rule allows, in the staff's order, ranked 1..n.
    policy = consent.Policy("treatment", datetime.combine(scored.as_of, time(9)),
                            settings.recipient_classes)
    caller = Caller("k", "ehr", (clinic_rows[0]["clinic_id"],), recipient=RECIPIENT)
    with store.connect() as conn:
        verdicts = consent.check(conn, caller, [r["client_id"] for r in clinic_rows], policy)
    expected = [r["client_id"] for r in clinic_rows if verdicts[r["client_id"]].allowed]
    assert got == expected and len(expected) < len(clinic_rows)
    assert [i["rank"] for i in body["items"]] == list(range(1, len(got) + 1))
    record = audited(store, rid)
    assert record["recipient"] == RECIPIENT and set(record["detail"]["consents"]) == set(got)


def test_fhir_discloses_under_consent_with_labels_notice_and_scope(
    ehr: FlaskClient, store: Engine, cases: dict[str, str],
) -> None:
    rid = uuid.uuid4().hex
    bundle = ehr.get(f"/fhir/RiskAssessment?patient={cases['consented']}",
                     headers={"X-Request-ID": rid}).get_json()
    assert bundle["total"] >= 1
    for entry in bundle["entry"]:
        resource = entry["resource"]
        notes = [n["text"] for n in resource["note"]]
        assert NOTICE in notes and any("consent T-consented" in n for n in notes)
        assert {"42CFRPart2", "R"} <= {c["code"] for c in resource["meta"]["security"]}
        read = ehr.get(f"/fhir/RiskAssessment/{resource['id']}").get_json()
        assert read["id"] == resource["id"] and read["note"] == resource["note"]
    assert audited(store, rid)["detail"]["consents"] == {cases["consented"]: "T-consented"}
    for case, reason in WITHHELD.items():
        rid = uuid.uuid4().hex
        empty = ehr.get(f"/fhir/RiskAssessment?patient={cases[case]}",
                        headers={"X-Request-ID": rid}).get_json()
        assert empty["total"] == 0 and empty.get("entry", []) == []
        assert audited(store, rid)["detail"]["withheld"] == {cases[case]: reason}


def test_staff_see_every_client_of_their_scope_without_a_notice(
    app: Flask, store: Engine, cases: dict[str, str], clinic_rows: list[dict[str, Any]],
) -> None:
    staff = keyed_client(app, make_key(store, "case_manager", [clinic_rows[0]["clinic_id"]]))
    body = staff.get("/v1/risk-list?limit=500").get_json()
    assert "notice" not in body and len(body["items"]) == len(clinic_rows)
    for client_id in cases.values():
        assert staff.get(f"/v1/clients/{client_id}/risk").status_code == 200


def test_a_revocation_takes_effect_on_the_next_request(
    app: Flask, store: Engine, scored: Scored, clinic_rows: list[dict[str, Any]],
) -> None:
    client_id = clinic_rows[-1]["client_id"]
    recipient = f"revoking-{uuid.uuid4().hex[:8]}"
    now = datetime.combine(scored.as_of, time(9))
    with store.begin() as conn:
        conn.execute(insert(CONSENTS).values(
            consent_id=f"R-{recipient}", client_id=client_id, recipient=recipient,
            purpose="treatment", effective_on=scored.as_of, updated_at=now))
    client = keyed_client(app, make_key(store, "ehr", [clinic_rows[0]["clinic_id"]],
                                        recipient=recipient))
    assert client.get(f"/v1/clients/{client_id}/risk").status_code == 200
    listed = client.get("/v1/risk-list").get_json()["items"]
    assert [i["client_id"] for i in listed] == [client_id]
    with store.begin() as conn:
        conn.execute(update(CONSENTS).where(CONSENTS.c.consent_id == f"R-{recipient}")
                     .values(revoked_at=now - timedelta(seconds=1)))
    assert client.get(f"/v1/clients/{client_id}/risk").status_code == 404
    assert client.get("/v1/risk-list").get_json()["items"] == []


def test_the_accounting_lists_who_received_what_under_which_consent(
    app: Flask, ehr: FlaskClient, store: Engine, settings: Settings, cases: dict[str, str],
    clinic_rows: list[dict[str, Any]], scored: Scored, tmp_path: Path,
) -> None:
    client_id, refused = cases["consented"], cases["expired"]
    ehr.get(f"/v1/clients/{client_id}/risk")
    ehr.get("/v1/risk-list?limit=500")
    ehr.get(f"/v1/clients/{refused}/risk")
    staff = keyed_client(app, make_key(store, "case_manager", [clinic_rows[0]["clinic_id"]]))
    staff.get(f"/v1/clients/{client_id}/risk")  # use inside the clinic: not a disclosure

    config = tmp_path / "cfg.toml"
    config.write_text(f'source_url = "{settings.source_url}"\n'
                      f'store_url = "{settings.store_url}"\n'
                      f'reasons_file = "{REPO / "config" / "reasons.toml"}"\n')

    def account(*args: str) -> Any:
        return CliRunner().invoke(
            main, ["--config", str(config), "audit", "disclosures", *args],
            obj=Context(config_path=None, clock=clock_on(scored.as_of)))

    with store.connect() as conn:
        expected = consent.disclosures(conn, client_id, datetime.min, datetime.max)
    assert len(expected) >= 2
    assert {r["consent_id"] for r in expected} == {"T-consented"}
    assert {r["recipient"] for r in expected} == {RECIPIENT}
    assert {r["action"] for r in expected} >= {"client_risk.read", "risk_list.read"}
    text = account("--client", client_id)
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert len(lines) == len(expected)
    assert all(f"to {RECIPIENT}" in line and "under consent T-consented" in line
               for line in lines)
    assert f"{len(expected)} disclosure(s)" in text.stderr

    jsonl = [json.loads(line) for line in account("--client", client_id, "--format",
                                                  "jsonl").stdout.splitlines()]
    assert [r["request_id"] for r in jsonl] == [r["request_id"] for r in expected]

    nothing = account("--client", refused)
    assert nothing.stdout == "" and "0 disclosure(s)" in nothing.stderr
    withheld = account("--client", refused, "--withheld")
    assert "WITHHELD (consent_expired)" in withheld.stdout


def test_the_operator_is_told_when_integrations_would_be_given_nothing(
    scored: Scored, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    settings = copied_store(scored.settings, tmp_path_factory.mktemp("no-consents"))
    store = create_engine(settings.store_url)
    at = datetime.combine(scored.as_of, time(9))
    with store.begin() as conn:
        assert not any("no consents" in w for w in consent.warnings(conn, at))
        conn.execute(delete(CONSENTS))
        conn.execute(insert(tables.api_keys).values(
            key_id="0123456789ab", token_sha256="0" * 64, role="ehr", clinics_json='["c"]',
            grants_json="[]", created_at=at))
        said = consent.warnings(conn, at)
    assert any("maps no consents" in w for w in said)
    assert any("1 live ehr key(s) name no recipient" in w for w in said)


def test_an_ehr_key_without_a_recipient_is_given_nothing(
    app: Flask, store: Engine, cases: dict[str, str], scored: Scored,
) -> None:
    """A key made before recipients were required: no consent can name it."""
    with store.begin() as conn:
        key_id, token = create_key(conn, "case_manager", ["x"])
        conn.execute(update(tables.api_keys).where(tables.api_keys.c.key_id == key_id)
                     .values(role="ehr", clinics_json=None))
    client = keyed_client(app, token)
    assert client.get("/v1/risk-list?limit=500").get_json()["items"] == []
    rid = uuid.uuid4().hex
    response = client.get(f"/v1/clients/{cases['consented']}/risk",
                          headers={"X-Request-ID": rid})
    assert response.status_code == 404
    assert audited(store, rid)["detail"]["withheld"] == {
        cases["consented"]: consent.NO_RECIPIENT}


def test_consent_days_and_revocation_times_at_their_edges() -> None:
    day = date(2026, 3, 10)
    at = datetime.combine(day, time(9))

    def row(**values: Any) -> SimpleNamespace:
        return SimpleNamespace(**{"recipient": "r", "purpose": "treatment",
                                  "effective_on": day, "expires_on": None,
                                  "revoked_at": None, **values})

    names = consent.names_for("r", {"partners": ("r",), "others": ("s",)})
    assert names == ("r", "class:partners")
    assert consent.covers(row(), names, "treatment", at) == consent.CONSENTED
    assert consent.covers(row(expires_on=day), names, "treatment", at) == consent.CONSENTED
    assert consent.covers(row(expires_on=day - timedelta(days=1)), names, "treatment",
                          at) == consent.EXPIRED
    assert consent.covers(row(effective_on=day + timedelta(days=1)), names, "treatment",
                          at) == consent.NOT_YET
    assert consent.covers(row(revoked_at=at), names, "treatment", at) == consent.REVOKED
    assert consent.covers(row(revoked_at=at + timedelta(seconds=1)), names, "treatment",
                          at) == consent.CONSENTED
    assert consent.covers(row(recipient="class:others"), names, "treatment",
                          at) == consent.OTHER_RECIPIENT
    assert consent.covers(row(recipient="class:partners"), names, "treatment",
                          at) == consent.CONSENTED


def test_a_revocation_is_compared_in_the_clinic_time_zone() -> None:
    """The contract's times have no zone: 09:30 at a New York clinic is 13:30 UTC."""
    policy = consent.Policy.at_utc("treatment", datetime(2026, 6, 1, 13, 0),
                                   "America/New_York", {})
    assert policy.at == datetime(2026, 6, 1, 9, 0)  # EDT, four hours behind
    names = consent.names_for("r", {})

    def revoked_at(hour: int, minute: int) -> str:
        row = SimpleNamespace(recipient="r", purpose="treatment",
                              effective_on=date(2026, 1, 1), expires_on=None,
                              revoked_at=datetime(2026, 6, 1, hour, minute))
        return consent.covers(row, names, "treatment", policy.at)

    assert revoked_at(8, 30) == consent.REVOKED
    assert revoked_at(9, 30) == consent.CONSENTED  # still in force at 09:00 local


def test_an_ehr_finds_a_client_by_its_own_identifier_under_the_same_rule(
    app: Flask, ehr: FlaskClient, store: Engine, cases: dict[str, str],
    clinic_rows: list[dict[str, Any]],
) -> None:
    with store.connect() as conn:
        mrn = {case: identifiers_of(conn, client_id)[0] for case, client_id in cases.items()}

    def by_mrn(client: FlaskClient, case: str | None, rid: str = "") -> Any:
        system, value = mrn[case] if case else ("urn:oid:2.16.840.1.113883.3.9999.1", "NOPE")
        return client.get("/v1/client-risk", query_string={"identifier": f"{system}|{value}"},
                          headers={"X-Request-ID": rid or uuid.uuid4().hex})

    staff = keyed_client(app, make_key(store, "case_manager", [clinic_rows[0]["clinic_id"]]))
    direct = staff.get(f"/v1/clients/{cases['none']}/risk").get_json()
    found = by_mrn(staff, "none").get_json()
    assert found == direct and found["identifiers"] == [
        {"system": mrn["none"][0], "value": mrn["none"][1]}]

    allowed = by_mrn(ehr, "consented")
    assert allowed.status_code == 200 and allowed.get_json()["client_id"] == cases["consented"]
    assert allowed.get_json()["notice"] == NOTICE
    unknown = by_mrn(ehr, None).get_json()
    rid = uuid.uuid4().hex
    withheld = by_mrn(ehr, "revoked", rid)
    assert withheld.status_code == 404
    assert withheld.get_json()["detail"] == unknown["detail"].replace(
        "NOPE", mrn["revoked"][1])
    assert audited(store, rid)["detail"]["withheld"] == {cases["revoked"]: consent.REVOKED}
    bad = ehr.get("/v1/client-risk?identifier=MRN0001")
    assert bad.status_code == 400 and bad.mimetype == "application/problem+json"
