"""FHIR: metadata, read and search as valid R4 resources (fhir.resources R4B models), scoped
like the API, labelled for 42 CFR Part 2, every error an OperationOutcome.

fhir.resources 8 models R5 by default; its R4B subpackage is the closest to R4 it
ships, and neither RiskAssessment nor the other resources used here changed in a way
that matters between R4 and R4B.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.riskassessment import RiskAssessment
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, create_engine, select, text

from retention.access.consent import NOTICE
from retention.api import create_app
from retention.api.fhir import fhir_id, parse_id
from retention.api.fhir_labels import SECURITY_LABELS
from retention.settings import ConfigError, Settings
from retention.store import tables
from retention.store.lists import score_row
from tests.conftest import Scored
from tests.support.apps import clock_on, copied_store, keyed_client, make_key, republish

FHIR_JSON = "application/fhir+json"
BASE = "https://risk.clinic.example/api"
MRN = "urn:oid:2.16.840.1.113883.19.5.99999.2"
ODD_SYSTEM = "http://ehr.example/ids|mrn"  # a "|" in the system: escaped as "\|"
RECIPIENT = "epic-north"
# Episode ids a clinic's system might use: escaped in the id, and one too long for it.
ODD_EPISODES = ("EP/2026 ü.1", "ep_1.20260601", "x" * 10 + "€" * 10, "-.-")
FHIR_ID_RE = re.compile(r"^[A-Za-z0-9.-]{1,64}$")
WEEKS = 11  # earlier lists of the top client: 12 RiskAssessments in all


@dataclass(frozen=True)
class Store:
    """A private copy of the scored store with FHIR's data added: identifiers, a consent,
    earlier lists, rows with odd episode ids."""

    settings: Settings
    engine: Engine
    top: dict[str, Any]


def _write(engine: Engine, table: Any, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        conn.execute(table.insert(), rows)


def build_store(scored: Scored, directory: Path) -> Store:
    """The scored store copied into ``directory``, with FHIR's test data (also used by
    test_fhir_client)."""
    settings = copied_store(scored.settings, directory)
    engine = create_engine(settings.store_url)
    make_key(engine)  # migrates the copy
    for weeks in range(1, WEEKS + 1):
        republish(engine, scored.as_of - timedelta(weeks=weeks), reverse=False)
    with engine.connect() as conn:
        first = conn.execute(select(tables.scores).where(tables.scores.c.as_of == scored.as_of)
                             .order_by(tables.scores.c.rank).limit(1)).one()
    top = dict(first._mapping)
    now = datetime(2026, 1, 1)
    _write(engine, tables.copies["client_identifiers"], [
        {"system": MRN, "value": "MRN-0001", "client_id": top["client_id"], "updated_at": now},
        {"system": ODD_SYSTEM, "value": "a,b", "client_id": top["client_id"],
         "updated_at": now},
    ])
    _write(engine, tables.copies["consents"], [{
        "consent_id": "c-1", "client_id": top["client_id"], "recipient": RECIPIENT,
        "purpose": scored.settings.disclosure_purpose, "effective_on": date(2020, 1, 1),
        "expires_on": None, "revoked_at": None, "updated_at": now}])
    _write(engine, tables.scores, [
        {**top, "episode_id": episode, "rank": 10_000 + i}
        for i, episode in enumerate(ODD_EPISODES)])
    return Store(settings, engine, top)


@pytest.fixture(scope="module")
def store(scored: Scored, tmp_path_factory: pytest.TempPathFactory) -> Store:
    return build_store(scored, tmp_path_factory.mktemp("fhir"))


@pytest.fixture(scope="module")
def app(store: Store, scored: Scored) -> Flask:
    return create_app(store.settings, clock=clock_on(scored.as_of))


@pytest.fixture(scope="module")
def based(store: Store, scored: Scored) -> Flask:
    """The same API with a public base URL (trailing "/" ignored)."""
    return create_app(store.settings.with_overrides(public_base_url=BASE + "/"),
                      clock=clock_on(scored.as_of))


@pytest.fixture(scope="module")
def admin(store: Store) -> str:
    return make_key(store.engine, "admin")


@pytest.fixture(scope="module")
def top(store: Store) -> dict[str, Any]:
    return store.top


def _search(client: FlaskClient, query: str | list[tuple[str, str]]) -> dict[str, Any]:
    q = query if isinstance(query, str) else urlencode(query)
    response = client.get(f"/fhir/RiskAssessment?{q}")
    assert response.status_code == 200, response.get_json()
    assert response.mimetype == FHIR_JSON
    body: dict[str, Any] = response.get_json()
    Bundle.model_validate(body)
    for entry in body["entry"]:
        _check_resource(entry["resource"])
    return body


def _check_resource(resource: dict[str, Any]) -> RiskAssessment:
    """Valid, with a FHIR id, the four Part 2 labels and the 2.32 notice (then, for an
    outside recipient, the scope of the consent it is disclosed under)."""
    model = RiskAssessment.model_validate(resource)
    assert FHIR_ID_RE.match(resource["id"])
    assert {(c["system"], c["code"]) for c in resource["meta"]["security"]} == {
        (c["system"], c["code"]) for c in SECURITY_LABELS}
    notice, *scope = [n["text"] for n in resource["note"]]
    assert notice == NOTICE and len(scope) <= 1
    assert all(s.startswith("Disclosed under the client's consent ") for s in scope)
    return model


def _ids(body: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in body["entry"]]


def _outcome(response: Any, status: int) -> str:
    """The response is a valid OperationOutcome for ``status``; returns its issue code."""
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    assert response.mimetype == FHIR_JSON
    body = response.get_json()
    OperationOutcome.model_validate(body)
    [issue] = body["issue"]
    assert issue["severity"] == "error" and issue["diagnostics"]
    return str(issue["code"])


# --- metadata ------------------------------------------------------------------------


def test_the_capability_statement_is_public_and_names_the_token_endpoint(
        based: Flask, app: Flask, scored: Scored) -> None:
    response = based.test_client().get("/fhir/metadata")  # no key
    assert response.status_code == 200 and response.mimetype == FHIR_JSON
    body = response.get_json()
    statement = CapabilityStatement.model_validate(body)
    assert (statement.fhirVersion, statement.kind, statement.status) == (
        "4.0.1", "instance", "active")
    assert "json" in statement.format and str(statement.date) == scored.as_of.isoformat()
    assert statement.software.name == "retention" and statement.implementation.url == BASE
    [rest] = body["rest"]
    assert rest["mode"] == "server" and "unknown search parameter" in rest["documentation"]
    assert rest["security"]["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    [oauth] = rest["security"]["extension"]
    assert oauth["extension"] == [{"url": "token", "valueUri": f"{BASE}/oauth/token"}]
    [resource] = rest["resource"]
    assert resource["type"] == "RiskAssessment"
    assert {i["code"] for i in resource["interaction"]} == {"read", "search-type"}
    assert {p["name"] for p in resource["searchParam"]} == {
        "subject", "patient", "identifier", "date"}

    plain = app.test_client().get("/fhir/metadata?_format=json").get_json()
    CapabilityStatement.model_validate(plain)
    assert "extension" not in plain["rest"][0]["security"]  # no absolute URL without a base
    assert "url" not in plain["implementation"]


# --- search --------------------------------------------------------------------------


def test_a_bundle_of_valid_risk_assessments(app: Flask, store: Store, scored: Scored,
                                            top: dict) -> None:
    """An EHR key whose recipient the client's consent names."""
    token = make_key(store.engine, "ehr", [top["clinic_id"]], recipient=RECIPIENT)
    body = _search(keyed_client(app, token),
                   f"subject=Patient/{top['client_id']}&date={scored.as_of}")
    assert body["type"] == "searchset" and body["total"] == len(body["entry"]) >= 1
    assert {(c["system"], c["code"]) for c in body["meta"]["security"]} == {
        (c["system"], c["code"]) for c in SECURITY_LABELS}
    entry = next(e for e in body["entry"]
                 if e["resource"]["id"] == fhir_id(top["episode_id"], scored.as_of))
    resource = _check_resource(entry["resource"])
    assert resource.status == "final"
    assert resource.subject.reference == f"Patient/{top['client_id']}"
    assert str(resource.occurrenceDateTime) == scored.as_of.isoformat()
    assert resource.method.coding[0].code == scored.model.version
    [prediction] = resource.prediction
    assert float(prediction.probabilityDecimal) == top["risk"]  # 0-1 scale
    assert prediction.qualitativeRisk.coding[0].code == {
        "high": "high", "medium": "moderate", "low": "low"}[top["tier"]]
    reasons = score_row(top)["reasons"]
    for reason in reasons:
        assert reason["text"] in prediction.rationale
    expected = {f"Appointment/{a}" for r in reasons for a in r["appointment_ids"]} | {
        f"QuestionnaireResponse/{m}" for r in reasons for m in r["measure_ids"]}
    assert {b.reference for b in resource.basis or []} == expected and expected


def test_the_patient_is_found_by_subject_patient_or_mrn(app: Flask, admin: str,
                                                        top: dict) -> None:
    client = keyed_client(app, admin)
    cid = top["client_id"]
    expected = _ids(_search(client, [("subject", f"Patient/{cid}"), ("_count", "200")]))
    assert len(expected) == WEEKS + 1 + len(ODD_EPISODES)
    for query in ([("subject", cid)], [("patient", f"Patient/{cid}")], [("patient", cid)],
                  [("identifier", f"{MRN}|MRN-0001")],
                  [("patient.identifier", f"{MRN}|MRN-0001")],
                  [("subject.identifier", f"{MRN}|MRN-0001")],
                  [("identifier", f"{MRN}|MRN-0001"), ("patient", cid)],
                  [("identifier", "http://ehr.example/ids\\|mrn|a\\,b")]):
        body = _search(client, [*query, ("_count", "200")])
        assert _ids(body) == expected, query
        subjects = {(e["resource"]["subject"]["reference"],
                     e["resource"]["subject"]["identifier"]["value"]) for e in body["entry"]}
        assert len(subjects) == 1 and subjects.pop()[0] == f"Patient/{cid}"
    # Searched by an identifier, that one is shown; else the first by system and value.
    by_odd = _search(client, "identifier=" + "http://ehr.example/ids%5C%7Cmrn%7Ca%5C,b")
    assert by_odd["entry"][0]["resource"]["subject"]["identifier"] == {
        "system": ODD_SYSTEM, "value": "a,b"}
    plain = _search(client, f"subject={cid}")["entry"][0]["resource"]["subject"]
    assert plain["identifier"] == {"system": ODD_SYSTEM, "value": "a,b"}  # "h" < "u"
    for nobody in (f"identifier={MRN}|MRN-9999", "identifier=urn:other|MRN-0001",
                   f"identifier={MRN}|MRN-0001&patient=C-NOBODY"):
        body = _search(client, nobody)
        assert body["total"] == 0 and body["entry"] == []


def test_date_ranges_with_two_date_parameters(app: Flask, admin: str, scored: Scored,
                                              top: dict) -> None:
    client = keyed_client(app, admin)
    subject = ("subject", f"Patient/{top['client_id']}")

    def days(*dates: str) -> list[str]:
        body = _search(client, [subject, *(("date", d) for d in dates), ("_count", "200")])
        assert body["total"] == len(body["entry"])
        return sorted({e["resource"]["occurrenceDateTime"] for e in body["entry"]})

    week = [(scored.as_of - timedelta(weeks=w)).isoformat() for w in range(WEEKS + 1)]
    start, end = scored.as_of - timedelta(weeks=4), scored.as_of
    assert days(f"ge{start}", f"lt{end}") == sorted(week[1:5])
    assert days(f"gt{start}", f"le{end}") == sorted(week[:4])
    assert days(f"eq{week[2]}") == days(week[2]) == [week[2]]
    assert days(f"ne{week[0]}") == sorted(week[1:])
    assert days(f"{scored.as_of:%Y-%m}") == sorted(w for w in week
                                                  if w.startswith(f"{scored.as_of:%Y-%m}"))
    assert days(f"lt{scored.as_of.year - 5}") == []
    assert days(f"ge{scored.as_of.year}", f"lt{scored.as_of.year + 1}") == sorted(
        w for w in week if w.startswith(str(scored.as_of.year)))
    assert days(f"gt{end}", f"lt{start}") == []
    # The last month and day a date can name are searches, not a server error.
    assert days("9999-12") == days("gt9999-12") == []
    assert days("le9999-12") == days("lt9999-12-31") == sorted(week)


def test_paging_through_next_links_gives_every_resource_once(based: Flask, admin: str,
                                                            top: dict) -> None:
    client = keyed_client(based, admin)
    query = [("patient", f"Patient/{top['client_id']}"), ("date", "ge2000-01-01")]
    everything = _search(client, [*query, ("_count", "200")])
    assert "next" not in {link["relation"] for link in everything["link"]}
    pages, seen = 0, []
    body = _search(client, [*query, ("_count", "5")])
    while True:
        pages += 1
        links = {link["relation"]: link["url"] for link in body["link"]}
        assert links["self"].startswith(f"{BASE}/fhir/RiskAssessment?")
        assert body["total"] == everything["total"]
        assert 1 <= len(body["entry"]) <= 5
        seen += _ids(body)
        if "next" not in links:
            break
        assert links["next"].startswith(BASE)
        body = _search(client, urlsplit(links["next"]).query)
    assert pages == -(-everything["total"] // 5) and pages > 2
    assert seen == _ids(everything)  # same order, no duplicates, no gaps

    first = _search(client, [*query, ("_count", "5")])
    token = parse_qs(urlsplit(first["link"][1]["url"]).query)["_page_token"][0]
    for tampered in ([*query, ("_count", "5"), ("_page_token", token[:-2] + "xx")],
                     [*query[:1], ("_count", "5"), ("_page_token", token)]):  # another search
        assert _outcome(client.get(f"/fhir/RiskAssessment?{urlencode(tampered)}"),
                        400) == "invalid"


def test_a_page_token_is_refused_where_it_cannot_be_ours(app: Flask, admin: str,
                                                        top: dict) -> None:
    """Malformed, or on a search that finds no one (which never gave one out): a 400 either
    way, before anything is looked up, as the OpenAPI document's pattern says."""
    client = keyed_client(app, admin)
    first = _search(client, [("patient", f"Patient/{top['client_id']}"), ("_count", "5")])
    token = parse_qs(urlsplit(first["link"][1]["url"]).query)["_page_token"][0]
    ours = [("patient", f"Patient/{top['client_id']}")]
    # Two patients at once (both must hold) and an identifier no one has: no one is found.
    no_one = [("patient", f"Patient/{top['client_id']}"), ("subject", "Patient/someone-else")]
    unknown = [("identifier", "urn:oid:2.16.840.1.113883.3.9999.1|NOBODY")]
    for search, given in ((ours, "/metrics"), (ours, "a" * 5000), (no_one, "/metrics"),
                         (no_one, token), (unknown, token)):
        query = urlencode([*search, ("_page_token", given)])
        assert _outcome(client.get(f"/fhir/RiskAssessment?{query}"), 400) == "invalid", (
            search, given[:10])
        # Without the token, each is the search it was: a Bundle.
        assert "total" in _search(client, search)


def test_count_zero_gives_the_total_and_a_large_count_is_capped(app: Flask, admin: str,
                                                                top: dict) -> None:
    client = keyed_client(app, admin)
    body = _search(client, f"subject={top['client_id']}&_count=0")
    assert body["entry"] == [] and body["total"] == WEEKS + 1 + len(ODD_EPISODES)
    assert len(_search(client, f"subject={top['client_id']}&_count=100000")["entry"]) == (
        body["total"])


def test_scope_applies_to_fhir(app: Flask, store: Store, top: dict) -> None:
    other = make_key(store.engine, "case_manager", ["no-such-clinic"])
    body = _search(keyed_client(app, other), f"subject=Patient/{top['client_id']}")
    assert body["total"] == 0 and body["entry"] == []
    assert top["client_id"] not in str(body["entry"])
    _outcome(app.test_client().get(f"/fhir/RiskAssessment?subject=Patient/{top['client_id']}"),
             401)


def test_links_never_come_from_the_host_header(app: Flask, based: Flask, admin: str,
                                               top: dict) -> None:
    """Without a configured base the links are relative; with one, absolute from it."""
    url = f"/fhir/RiskAssessment?subject=Patient/{top['client_id']}&date=ge2000-01-01"
    forged = {"Host": "evil.example", "X-Forwarded-Host": "evil.example"}
    body = keyed_client(app, admin).get(url, headers=forged).get_json()
    assert "evil.example" not in str(body)
    search = urlencode([("subject", f"Patient/{top['client_id']}"), ("date", "ge2000-01-01")])
    assert body["link"][0]["url"] == f"/fhir/RiskAssessment?{search}"
    assert all("fullUrl" not in entry for entry in body["entry"]) and body["entry"]
    Bundle.model_validate(body)

    body = keyed_client(based, admin).get(url, headers=forged).get_json()
    assert "evil.example" not in str(body)
    assert body["link"][0]["url"] == f"{BASE}/fhir/RiskAssessment?{search}"
    for entry in body["entry"]:
        assert entry["fullUrl"] == f"{BASE}/fhir/RiskAssessment/{entry['resource']['id']}"
    Bundle.model_validate(body)


def test_a_base_url_with_a_query_or_another_scheme_is_refused(scored: Scored) -> None:
    for bad in ("ftp://risk.example", "https://risk.example/?x=1", "risk.example"):
        with pytest.raises(ConfigError):
            scored.settings.with_overrides(public_base_url=bad)


# --- read ----------------------------------------------------------------------------


def test_each_full_url_reads_back_the_same_resource(based: Flask, admin: str,
                                                    top: dict) -> None:
    client = keyed_client(based, admin)
    body = _search(client, f"subject=Patient/{top['client_id']}&_count=200")
    assert len(body["entry"]) == WEEKS + 1 + len(ODD_EPISODES)
    for entry in body["entry"]:
        path = entry["fullUrl"].removeprefix(BASE)
        assert path != entry["fullUrl"]
        response = client.get(path)
        assert response.status_code == 200 and response.mimetype == FHIR_JSON
        assert response.get_json() == entry["resource"]
        _check_resource(response.get_json())


def test_ids_with_odd_characters_are_exact_and_read_back(app: Flask, admin: str,
                                                         scored: Scored, top: dict) -> None:
    client = keyed_client(app, admin)
    for episode in ODD_EPISODES:
        resource_id = fhir_id(episode, scored.as_of)
        assert FHIR_ID_RE.match(resource_id), resource_id
        parsed = parse_id(resource_id)
        assert parsed is not None and parsed.as_of == scored.as_of
        assert parsed.episode_id in (episode, None)  # None: named by its digest
        body = client.get(f"/fhir/RiskAssessment/{resource_id}").get_json()
        assert body["id"] == resource_id, episode
        _check_resource(body)
    assert len({fhir_id(e, scored.as_of) for e in ODD_EPISODES}) == len(ODD_EPISODES)
    assert fhir_id("EP-1", date(2026, 6, 1)) == "EP-1.20260601"  # plain ids as before
    assert fhir_id("a.b_c", date(2026, 6, 1)) == "a.2Eb.5Fc.20260601"
    # Another spelling of a real id, or a made-up one, names nothing.
    for bad in ("a.2eb.5Fc.20260601", ".41.20260601", "a.b.20260601", "EP-1.20261301",
                ".h" + "0" * 39 + ".20260601", "", "EP-1"):
        assert parse_id(bad) is None, bad


def test_unknown_out_of_scope_and_not_consented_are_the_same_404(
        app: Flask, store: Store, admin: str, scored: Scored, top: dict) -> None:
    resource_id = fhir_id(top["episode_id"], scored.as_of)
    assert keyed_client(app, admin).get(f"/fhir/RiskAssessment/{resource_id}").status_code == 200
    elsewhere = make_key(store.engine, "case_manager", ["no-such-clinic"])
    unconsented = make_key(store.engine, "ehr", [top["clinic_id"]], recipient="nobody-names-me")
    answers = []
    for token, rid in ((admin, fhir_id("NO-SUCH-EPISODE", scored.as_of)),
                       (admin, "not an id"), (elsewhere, resource_id),
                       (unconsented, resource_id)):
        response = keyed_client(app, token).get(f"/fhir/RiskAssessment/{rid}")
        assert _outcome(response, 404) == "not-found"
        answers.append(response.get_json()["issue"][0]["diagnostics"].replace(rid, "<id>"))
    assert len(set(answers)) == 1
    # The same client, searched by a recipient no consent names: the empty Bundle.
    body = _search(keyed_client(app, unconsented), f"subject=Patient/{top['client_id']}")
    assert body["total"] == 0 and body["entry"] == []
    with store.engine.connect() as conn:
        outcomes = conn.execute(text(
            "SELECT outcome, client_ids_json FROM audit_log WHERE action LIKE 'fhir.%' "
            "ORDER BY at DESC, rowid DESC LIMIT 2")).all()
    assert [o.outcome for o in outcomes] == ["denied", "denied"]
    assert all(top["client_id"] in o.client_ids_json for o in outcomes)


# --- errors --------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "status", "code"), [
    ("/fhir/RiskAssessment", 400, "invalid"),
    ("/fhir/RiskAssessment?subject=C000001&colour=red", 400, "invalid"),
    ("/fhir/RiskAssessment?subject=C000001&_sort=date", 400, "invalid"),
    ("/fhir/RiskAssessment?subject=C000001&subject=C000002", 400, "invalid"),
    ("/fhir/RiskAssessment?subject=C000001,C000002", 400, "invalid"),
    ("/fhir/RiskAssessment?subject=C000001&date=yesterday", 400, "invalid"),
    ("/fhir/RiskAssessment?subject=C000001&date=sa2026-01-01", 400, "invalid"),
    ("/fhir/RiskAssessment?subject=C000001&date=2026-02-30", 400, "invalid"),
    ("/fhir/RiskAssessment?subject=C000001&_count=-1", 400, "invalid"),
    ("/fhir/RiskAssessment?identifier=MRN-0001", 400, "invalid"),
    ("/fhir/RiskAssessment?subject=Group/1", 400, "invalid"),
    ("/fhir/RiskAssessment?subject=C000001&_format=xml", 406, "not-supported"),
    ("/fhir/RiskAssessment?subject=C000001&_format=application/fhir%2Bxml", 406,
     "not-supported"),
    ("/fhir/metadata?_format=xml", 406, "not-supported"),
    ("/fhir/metadata?mode=terminology", 400, "invalid"),
    ("/fhir/RiskAssessment/NOPE.20260601", 404, "not-found"),
    ("/fhir/Patient/C000001", 404, "not-found"),
    ("/fhir/RiskAssessment/x\x00y", 400, "invalid"),
])
def test_every_error_is_an_operation_outcome(app: Flask, admin: str, url: str, status: int,
                                             code: str) -> None:
    assert _outcome(keyed_client(app, admin).get(url), status) == code


def test_json_formats_are_accepted(app: Flask, admin: str, top: dict) -> None:
    client = keyed_client(app, admin)
    for fmt in ("json", "application/json", "application/fhir%2Bjson", "application/fhir+json"):
        _search(client, f"subject={top['client_id']}&_format={fmt}")


def test_auth_errors_keep_their_headers(app: Flask, store: Store, scored: Scored) -> None:
    response = app.test_client().get("/fhir/RiskAssessment?subject=C000001")
    assert _outcome(response, 401) == "login"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    analyst = keyed_client(app, make_key(store.engine, "analyst", ["clinic-north"]))
    assert _outcome(analyst.get("/fhir/RiskAssessment?subject=C000001"), 403) == "forbidden"
    assert _outcome(analyst.post("/fhir/RiskAssessment"), 405) == "not-supported"

    limited = create_app(store.settings.with_overrides(api_rate_limit_per_minute=1),
                         clock=clock_on(scored.as_of))
    client = keyed_client(limited, make_key(store.engine, "admin"))
    assert client.get("/fhir/RiskAssessment?subject=C000001").status_code == 200
    response = client.get("/fhir/RiskAssessment?subject=C000001")
    assert _outcome(response, 429) == "throttled" and int(response.headers["Retry-After"]) > 0


def test_failures_are_operation_outcomes_without_a_trace(scored: Scored, tmp_path: Path) -> None:
    settings = copied_store(scored.settings, tmp_path)
    engine = create_engine(settings.store_url)
    token = make_key(engine)
    client = keyed_client(create_app(settings, clock=clock_on(scored.as_of)), token)
    with engine.begin() as conn:  # no audit record can be written: nothing is returned
        conn.execute(text("CREATE TRIGGER audit_down BEFORE INSERT ON audit_log "
                          "BEGIN SELECT RAISE(ABORT, 'disk full'); END"))
    response = client.get("/fhir/RiskAssessment?subject=C000001")
    assert _outcome(response, 503) == "transient" and response.headers["Retry-After"]
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER audit_down"))
        conn.execute(text("DROP TABLE scores"))  # fails inside the view
    response = client.get("/fhir/RiskAssessment?subject=C000001")
    assert _outcome(response, 500) == "exception"
    assert "Traceback" not in response.get_data(as_text=True)
    assert "scores" not in response.get_data(as_text=True)
    engine.dispose()
