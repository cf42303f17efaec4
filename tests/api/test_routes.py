"""The list and client-risk routes end to end: synthetic clinic database -> ETL -> LightGBM ->
published list -> JSON API."""

from __future__ import annotations

import re
from datetime import date, timedelta

import pandas as pd
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine

from retention.api import create_app
from retention.clinic import contract
from retention.model.drift import drift_explanation
from retention.store import schema
from retention.store.lists import latest_publication, run_drift
from tests.conftest import Scored
from tests.support.apps import clock_on, keyed_client, make_key

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def full_list(app: Flask, admin_key: str) -> list[dict]:
    body = keyed_client(app, admin_key).get("/v1/risk-list?limit=500").get_json()
    return body["items"]


def recent_behaviour(scored: Scored) -> pd.DataFrame:
    """Per open episode, from the source rows: misses and attendance in the last 28 days."""
    data = scored.clinic()
    cutoff = pd.Timestamp(scored.as_of)
    a = data.appointments
    past = a[(a["scheduled_at"] < cutoff) & (a["scheduled_at"] >= cutoff - timedelta(days=28))]
    past = past[past["status"].isin(contract.CLIENT_STATUSES)]
    ahead = a[(a["scheduled_at"] >= cutoff) & (a["booked_at"] < cutoff)
              & (a["scheduled_at"] < cutoff + timedelta(days=14))]
    out = pd.DataFrame({
        "sessions": past.groupby("episode_id").size(),
        "attended": past[past["status"] == "attended"].groupby("episode_id").size(),
        "missed": past[past["status"].isin(contract.MISSED_STATUSES)].groupby("episode_id").size(),
        "booked": ahead.groupby("episode_id").size(),
    }).fillna(0)
    return out


def test_list_is_ranked_by_risk(full_list: list[dict]) -> None:
    risks = [item["risk"] for item in full_list]
    assert risks == sorted(risks, reverse=True)
    assert [item["rank"] for item in full_list] == list(range(1, len(full_list) + 1))
    assert len(full_list) > 30


def test_clients_who_miss_rank_above_clients_who_attend_everything(
    scored: Scored, full_list: list[dict]
) -> None:
    behaviour = recent_behaviour(scored)
    rank = {item["episode_id"]: item["rank"] for item in full_list}
    behaviour = behaviour[behaviour.index.isin(rank)]
    missing = behaviour[(behaviour["missed"] >= 3) & (behaviour["attended"] == 0)].index
    steady = behaviour[(behaviour["attended"] == behaviour["sessions"])
                       & (behaviour["sessions"] >= 3) & (behaviour["booked"] >= 1)].index
    assert len(missing) and len(steady)
    assert max(rank[e] for e in missing) < min(rank[e] for e in steady)


def test_a_reason_in_the_api_matches_the_rows(scored: Scored, full_list: list[dict]) -> None:
    data = scored.clinic()
    a = data.appointments
    checked = 0
    for item in full_list:
        for reason in item["reasons"]:
            m = re.search(r"last attended (\d+) days? ago, on (\d+ \w{3})", reason["text"])
            if not m:
                continue
            mine = a[(a["episode_id"] == item["episode_id"]) & (a["status"] == "attended")
                     & (a["scheduled_at"] < pd.Timestamp(scored.as_of))]
            last = mine["scheduled_at"].max()
            days = (pd.Timestamp(scored.as_of) - last.normalize()).days  # calendar days
            assert int(m.group(1)) == days
            assert m.group(2) == f"{last.day} {last:%b}"
            assert item["last_attended_on"] == last.date().isoformat()
            checked += 1
    assert checked >= 3


def test_list_filters_by_clinic_and_limits(client: FlaskClient, full_list: list[dict]) -> None:
    clinic = full_list[0]["clinic_id"]
    body = client.get(f"/v1/risk-list?clinic_id={clinic}&limit=5").get_json()
    assert body["count"] == len(body["items"]) <= 5
    assert {i["clinic_id"] for i in body["items"]} == {clinic}
    expected = [i["episode_id"] for i in full_list if i["clinic_id"] == clinic][:5]
    assert [i["episode_id"] for i in body["items"]] == expected


def test_list_carries_freshness(client: FlaskClient, scored: Scored) -> None:
    body = client.get("/v1/risk-list?limit=1").get_json()
    assert body["as_of"] == scored.as_of.isoformat()
    assert body["model_version"] == scored.model.version
    assert body["stale"] is False


def test_an_old_list_is_marked_stale(scored: Scored, admin_key: str) -> None:
    later = create_app(scored.settings, clock=clock_on(scored.as_of + timedelta(days=3)))
    body = keyed_client(later, admin_key).get("/v1/risk-list?limit=1").get_json()
    assert body["stale"] is True and body["age_days"] == 3


def test_list_has_no_demographics(full_list: list[dict]) -> None:
    for item in full_list:
        assert not {"birth_year", "sex", "race_ethnicity"} & set(item)


def test_client_risk_with_reasons_and_history(client: FlaskClient, full_list: list[dict]) -> None:
    top = full_list[0]
    response = client.get(f"/v1/clients/{top['client_id']}/risk")
    assert response.status_code == 200
    body = response.get_json()
    assert body["current"]["risk"] == top["risk"]
    assert body["current"]["reasons"] == top["reasons"]
    assert body["history"][0]["as_of"] == body["as_of"]


def test_no_list_yet_is_a_clear_404(scored: Scored, tmp_path) -> None:
    settings = scored.settings.with_overrides(store_url=f"sqlite:///{tmp_path}/empty.db")
    engine = create_engine(settings.store_url)
    with engine.begin() as conn:
        schema.upgrade(conn)
    token = make_key(engine)
    response = keyed_client(create_app(settings, clock=clock_on(scored.as_of)),
                            token).get("/v1/risk-list")
    assert response.status_code == 404
    assert "no list has been published" in response.get_json()["detail"]


def test_as_of_selects_a_published_list(client: FlaskClient, scored: Scored) -> None:
    body = client.get(f"/v1/risk-list?as_of={scored.as_of}&limit=1").get_json()
    assert body["as_of"] == scored.as_of.isoformat()
    assert date.fromisoformat(body["as_of"]) == scored.as_of


def test_cursor_pages_walk_the_whole_list_once(client: FlaskClient,
                                               full_list: list[dict]) -> None:
    seen: list[str] = []
    url = "/v1/risk-list?limit=17"
    while url:
        body = client.get(url).get_json()
        assert body["count"] <= 17
        seen += [i["episode_id"] for i in body["items"]]
        url = f"/v1/risk-list?limit=17&cursor={body['next_cursor']}" if body["next_cursor"] else ""
    assert seen == [i["episode_id"] for i in full_list]
    assert client.get("/v1/risk-list?limit=501").status_code == 400
    assert client.get("/v1/risk-list?cursor=garbage").status_code == 400  # unsigned


def test_filters_narrow_the_list(client: FlaskClient, full_list: list[dict]) -> None:
    def ids(query: str) -> list[str]:
        return [i["episode_id"] for i in client.get(f"/v1/risk-list?limit=500&{query}")
                .get_json()["items"]]

    def expect(keep) -> list[str]:  # type: ignore[no-untyped-def]
        return [i["episode_id"] for i in full_list if keep(i)]

    first = full_list[0]
    assert ids("tier=high") == expect(lambda i: i["tier"] == "high")
    assert ids("min_risk=0.3") == expect(lambda i: i["risk"] >= 0.3)
    assert ids("engaged_only=true") == expect(lambda i: i["still_engaged"])
    assert ids(f"program={first['program']}") == expect(lambda i: i["program"] == first["program"])
    assert ids(f"case_manager_id={first['case_manager_id']}") == expect(
        lambda i: i["case_manager_id"] == first["case_manager_id"])
    for query in ("tier=extreme", "min_risk=2", "engaged_only=yes", "tier=high&tier=low"):
        assert client.get(f"/v1/risk-list?{query}").status_code == 400


def test_the_list_says_whether_its_population_drifted(scored: Scored) -> None:
    """Drift recorded by the list's scoring run is shown with the list it concerns."""
    with scored.store.connect() as conn:
        pub = latest_publication(conn, scored.as_of)
        assert pub is not None
        recorded = run_drift(conn, pub["run_id"])
    app = create_app(scored.settings, clock=clock_on(scored.as_of))
    client = keyed_client(app, make_key(scored.store, "admin", label="drift"))
    body = client.get("/v1/risk-list?limit=1").get_json()
    assert recorded["psi"], "the scoring run recorded drift"
    assert body["drift"] == {"drifted": recorded["drifted"], "flagged": recorded["flagged"],
                             "score_psi": recorded["score_psi"],
                             "explanation": drift_explanation(recorded["flagged"])}
