"""Caseloads (``retention.casework.caseload``): the change since the previous list, and
today's calls as the pages read them (views, counts, calls made, caseloads to pick)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine

from retention.access.keys import Caller
from retention.casework import caseload, outreach
from retention.store.lists import read_list
from tests.conftest import Scored

CLINIC = "clinic-east"
LEAD = Caller(key_id="lead", role="case_manager", clinics=(CLINIC,))
NOW = datetime(2026, 6, 1, 9)


def test_change_since_yesterday() -> None:
    row = {"risk": 0.62, "tier": "high"}
    assert caseload.change_since(row, None, False) == ("none", None)
    assert caseload.change_since(row, None, True) == ("new", None)
    assert caseload.change_since(row, (0.40, "medium"), True)[0] == "up"
    assert caseload.change_since(row, (0.60, "high"), True)[0] == "same"
    assert caseload.change_since(row, (0.80, "high"), True) == ("down", -18.0)


def test_the_engaged_view_its_counts_and_the_caseloads_to_pick(scored: Scored) -> None:
    with scored.store.connect() as conn:
        listed = read_list(conn, scored.as_of, clinic_id=CLINIC, limit=5000)
        engaged = caseload.daily_list(conn, LEAD, scored.as_of, caseload.DailyFilter(), NOW)
        everyone = caseload.daily_list(conn, LEAD, scored.as_of,
                                       caseload.DailyFilter(show="all"), NOW)
        cm = next(r["case_manager_id"] for r in listed if r["case_manager_id"])
        theirs = caseload.daily_list(conn, LEAD, scored.as_of,
                                     caseload.DailyFilter(show="all", case_manager=cm), NOW)
    still = [r["client_id"] for r in listed if r["still_engaged"]]
    assert [r["client_id"] for r in engaged.rows] == still
    assert [r["client_id"] for r in everyone.rows] == [r["client_id"] for r in listed]
    assert [r["rank"] for r in engaged.rows] == list(range(1, len(still) + 1))  # no gaps
    assert (engaged.engaged_count, engaged.everyone_count) == (len(still), len(listed))
    assert engaged.scope_count == everyone.scope_count == theirs.scope_count == len(listed)
    # Clients without a case manager are on the list, but are no caseload to pick.
    assert engaged.case_managers == sorted({r["case_manager_id"] for r in listed
                                            if r["case_manager_id"]})
    assert {r["case_manager_id"] for r in theirs.rows} == {cm}
    assert theirs.everyone_count == sum(r["case_manager_id"] == cm for r in listed)


def test_calls_are_counted_from_the_given_time_and_the_last_outcome_is_the_newest(
    scored: Scored, private_store: tuple[str, Engine]
) -> None:
    _, engine = private_store
    everyone = caseload.DailyFilter(show="all")
    week = NOW - timedelta(days=7)
    with engine.begin() as conn:
        # Other tests may have recorded outreach in the shared store: a client without any.
        before = caseload.daily_list(conn, LEAD, scored.as_of, everyone, week).rows
        row = next(r for r in before if r["outreach"] is None)
        for days_ago, reached, outcome in ((9, True, "booked"), (3, False, None),
                                           (1, True, "declined")):
            outreach.record_outreach(conn, outreach.Outreach(
                client_id=row["client_id"], episode_id=row["episode_id"], clinic_id=CLINIC,
                list_as_of=scored.as_of, risk=row["risk"], tier=row["tier"], key_id="k",
                reached=reached, channel="phone", outcome=outcome),
                at=NOW - timedelta(days=days_ago))
        daily = caseload.daily_list(conn, LEAD, scored.as_of, everyone, week)
        other_clinic = caseload.daily_list(
            conn, Caller(key_id="n", role="case_manager", clinics=("clinic-north",)),
            scored.as_of, everyone, week)
    shown = next(r for r in daily.rows if r["client_id"] == row["client_id"])
    assert shown["attempts"] == 2  # the call nine days ago is not this week's
    assert shown["outreach"]["outcome"] == "declined"
    assert {r["client_id"]: r["attempts"] for r in daily.rows if r is not shown} == {
        r["client_id"]: r["attempts"] for r in before if r["client_id"] != row["client_id"]}
    assert all(r["client_id"] != row["client_id"] or r["attempts"] == 0
               for r in other_clinic.rows)
