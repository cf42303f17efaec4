"""The morning calling list: who to call and how, the view switch, a caseload picked by a
clinic lead, calls recorded in two clicks, print and CSV (audited), and the small words
that must be true (percentages, times in the clinic's zone, errors in words)."""

from __future__ import annotations

import csv
import io
import logging
import re
from datetime import timedelta

import pytest
from flask import Flask
from markupsafe import escape
from sqlalchemy import Engine, select

from retention.access.keys import Caller
from retention.api import create_app
from retention.api.web.views import _cell, pct
from retention.casework import outreach
from retention.store import tables
from retention.store.lists import read_list
from tests.conftest import Scored
from tests.support.apps import clock_on, keyed_client, make_key
from tests.support.web import audit_rows, clients_on, csrf, signed_in

CLINIC = "clinic-east"
EVERY_CLINIC = Caller(key_id="test", role="admin", clinics=None)
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.3.9999.1"
contacts_copy = tables.copies["client_contacts"]


def _app(scored: Scored, store_url: str | None = None, **settings: object) -> Flask:
    values: dict[str, object] = {
        "ehr_link_template": "https://ehr.example/patient/{mrn}",
        "ehr_link_system": MRN_SYSTEM}
    values.update(settings)
    if store_url:
        values["store_url"] = store_url
    return create_app(scored.settings.with_overrides(**values), TESTING=True,
                      clock=clock_on(scored.as_of))


@pytest.fixture(scope="module")
def app(scored: Scored) -> Flask:
    return _app(scored)


@pytest.fixture(scope="module")
def lead_key(scored: Scored) -> str:
    """A clinic-wide case-manager key: a clinic lead, who picks whose caseload to see."""
    return make_key(scored.store, "case_manager", [CLINIC], label="Lead (test)")


def _list(scored: Scored) -> list[dict]:
    with scored.store.connect() as conn:
        return read_list(conn, scored.as_of, clinic_id=CLINIC, limit=5000)


def _contact(scored: Scored, client_id: str) -> dict | None:
    with scored.store.connect() as conn:
        row = conn.execute(select(contacts_copy).where(
            contacts_copy.c.client_id == client_id)).first()
    return dict(row._mapping) if row else None


def _with_phone(scored: Scored, engaged: bool | None = None,
                no_outreach_in: Engine | None = None) -> dict:
    """A client of the clinic on today's list who has a name and a phone on file and has
    not refused calls; with ``no_outreach_in``, one without outreach in that store (other
    tests record some in the shared store)."""
    for row in _list(scored):
        if engaged is not None and row["still_engaged"] != engaged:
            continue
        found = _contact(scored, row["client_id"])
        if not found or not found["display_name"] or not found["phone"] \
                or found["may_call"] is False:
            continue
        if no_outreach_in is not None:
            with no_outreach_in.connect() as conn:
                if outreach.client_history(conn, EVERY_CLINIC, row["client_id"]):
                    continue
        return {**row, "contact": found}
    raise AssertionError("no client with a phone on the list")


def test_the_default_view_is_the_still_engaged_with_a_switch_to_everyone(
    app: Flask, scored: Scored, lead_key: str
) -> None:
    client = signed_in(app, lead_key)
    engaged = client.get("/web/").get_data(as_text=True)
    everyone = client.get("/web/?show=all").get_data(as_text=True)
    listed = _list(scored)
    still = [r["client_id"] for r in listed if r["still_engaged"]]
    assert clients_on(engaged) == still and 0 < len(still) < len(listed)
    assert clients_on(everyone) == [r["client_id"] for r in listed]
    assert f"Still engaged <span class=\"count\">({len(still)})</span>" in engaged
    assert f"Everyone on the list <span class=\"count\">({len(listed)})</span>" in engaged
    assert 'aria-current="page">Still engaged' in engaged
    assert 'aria-current="page">Everyone on the list' in everyone
    ranks = re.findall(r'<td data-label="Rank">(\d+)</td>', engaged)
    assert ranks == [str(i) for i in range(1, len(still) + 1)]  # no gaps in the view


def test_a_row_shows_who_the_client_is_and_how_to_reach_them(
    app: Flask, scored: Scored, lead_key: str
) -> None:
    row = _with_phone(scored)
    contact = row["contact"]
    page = signed_in(app, lead_key).get("/web/?show=all").get_data(as_text=True)
    cells = page.split(f'id="c-{row["client_id"]}"')[1].split("</tr>")[0]
    assert str(escape(contact["display_name"])) in cells
    assert str(escape(contact["phone"])) in cells
    digits = re.sub(r"[^\d+]", "", contact["phone"].split("x")[0])
    assert f'href="tel:{digits}"' in cells
    assert row["case_manager_id"] in cells  # a clinic-wide view names the case manager
    with scored.store.connect() as conn:
        mrn = conn.execute(select(tables.copies["client_identifiers"].c.value).where(
            tables.copies["client_identifiers"].c.client_id == row["client_id"],
            tables.copies["client_identifiers"].c.system == MRN_SYSTEM)).scalar()
    if mrn:
        assert f'href="https://ehr.example/patient/{mrn}"' in cells


def test_contact_details_stay_on_the_pages(
    app: Flask, scored: Scored, lead_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Never in the JSON list, the client's JSON or FHIR, and never in the service's log."""
    row = _with_phone(scored)
    contact = row["contact"]
    caplog.set_level(logging.DEBUG)
    signed_in(app, lead_key).get(f"/web/clients/{row['client_id']}")
    api = keyed_client(app, lead_key)
    answers = [api.get("/v1/risk-list?limit=500"), api.get(f"/v1/clients/{row['client_id']}/risk")]
    for answer in answers:
        assert answer.status_code == 200, answer.get_data(as_text=True)
        body = answer.get_data(as_text=True)
        assert contact["phone"] not in body and contact["display_name"] not in body
    assert contact["phone"] not in caplog.text and contact["display_name"] not in caplog.text


def test_another_clinics_contacts_are_never_shown(
    app: Flask, scored: Scored, lead_key: str
) -> None:
    with scored.store.connect() as conn:
        others = conn.execute(select(contacts_copy.c.phone).join(
            tables.copies["clients"],
            tables.copies["clients"].c.client_id == contacts_copy.c.client_id).where(
            tables.copies["clients"].c.clinic_id != CLINIC,
            contacts_copy.c.phone.is_not(None))).scalars().all()
    page = signed_in(app, lead_key).get("/web/?show=all").get_data(as_text=True)
    mine = {str(escape(c["phone"])) for c in filter(None, (_contact(scored, r["client_id"])
                                                           for r in _list(scored))) if c["phone"]}
    assert others and not any(str(escape(p)) in page for p in set(others) - mine)


def test_a_clinic_lead_picks_a_caseload_and_a_case_manager_sees_their_own(
    app: Flask, scored: Scored, lead_key: str
) -> None:
    listed = _list(scored)
    cm = next(r["case_manager_id"] for r in listed if r["case_manager_id"])
    theirs = [r["client_id"] for r in listed if r["case_manager_id"] == cm]
    lead = signed_in(app, lead_key)
    page = lead.get(f"/web/?show=all&cm={cm}").get_data(as_text=True)
    assert clients_on(page) == theirs and f"Caseload of {cm}" in page
    assert f'<option value="{cm}" selected>' in page
    own = signed_in(app, make_key(scored.store, "case_manager", [CLINIC], case_manager_id=cm))
    mine = own.get("/web/?show=all").get_data(as_text=True)
    assert clients_on(mine) == theirs and f"Your caseload ({cm})" in mine
    assert 'id="f-cm"' not in mine  # nothing to pick
    refused = own.get("/web/?cm=someone-else")
    assert refused.status_code == 400 and "your own caseload" in refused.get_data(as_text=True)


def test_a_filter_that_matches_nobody_says_so_not_zero_in_scope(
    app: Flask, scored: Scored, lead_key: str
) -> None:
    page = signed_in(app, lead_key).get("/web/?cm=nobody-here").get_data(as_text=True)
    total = len(_list(scored))
    assert clients_on(page) == []
    assert f"No clients match these filters; {total} clients are on your list." in page
    assert "0 clients" not in page


def test_a_call_is_recorded_in_two_clicks_and_the_view_comes_back(
    scored: Scored, private_store: tuple[str, Engine]
) -> None:
    url, engine = private_store
    app = _app(scored, url)
    row = _with_phone(scored, engaged=False, no_outreach_in=engine)
    client = signed_in(app, make_key(engine, "case_manager", [CLINIC]))
    page = client.get("/web/?show=all&tier=" + row["tier"]).get_data(as_text=True)
    form = page.split(f'id="c-{row["client_id"]}"')[1].split("</tr>")[0]
    assert 'name="quick" value="no_answer"' in form and "Record a call" in form
    hidden = re.search(r'name="list" value="([^"]*)"', form)
    assert hidden is not None
    saved = client.post(f"/web/clients/{row['client_id']}/outreach", data={
        "csrf_token": csrf(page), "channel": "phone", "back": "list",
        "list": hidden.group(1).replace("&amp;", "&"), "quick": "no_answer"})
    assert saved.status_code == 303
    location = saved.headers["Location"]
    assert "show=all" in location and f"tier={row['tier']}" in location
    assert location.endswith(f"#c-{row['client_id']}")
    back = client.get(location.split("#")[0]).get_data(as_text=True)
    assert f"Outreach for {row['client_id']} saved." in back
    cells = back.split(f'id="c-{row["client_id"]}"')[1].split("</tr>")[0]
    assert "<strong>1</strong> in 7 days" in cells and "Not reached by phone" in cells
    booked = client.post(f"/web/clients/{row['client_id']}/outreach", data={
        "csrf_token": csrf(page), "channel": "phone", "quick": "booked"})
    assert booked.status_code == 303 and booked.headers["Location"].endswith("#latest-outreach")
    with engine.connect() as conn:
        history = outreach.client_history(conn, EVERY_CLINIC, row["client_id"])
    assert [(h["reached"], h["outcome"], h["channel"]) for h in history] == [
        (True, "booked", "phone"), (False, None, "phone")]
    forged = client.post(f"/web/clients/{row['client_id']}/outreach", data={
        "csrf_token": csrf(page), "channel": "phone", "quick": "maybe"})
    assert forged.status_code == 400


def test_a_rejected_outreach_says_why_in_words_where_the_user_is(
    app: Flask, scored: Scored, lead_key: str
) -> None:
    client = signed_in(app, lead_key)
    client_id = _list(scored)[0]["client_id"]
    token = csrf(client.get(f"/web/clients/{client_id}").get_data(as_text=True))
    answer = client.post(f"/web/clients/{client_id}/outreach", data={
        "csrf_token": token, "result": "reached", "channel": "phone", "outcome": ""})
    page = answer.get_data(as_text=True)
    assert answer.status_code == 400
    error = re.search(r'<p class="error"[^>]*>(.*?)</p>', page, re.S)
    assert error is not None and "autofocus" in error.group(0) and 'role="alert"' in error.group(0)
    words = error.group(1)
    assert "Not saved." in words and "You chose Contacted" in words
    assert "re-engaged" in words and "re_engaged" not in words
    # Nothing the user chose is lost: the form comes back as it was sent.
    assert 'value="reached" required checked' in page
    assert '<option value="phone" selected>' in page


def test_print_and_csv_hold_todays_calls_and_are_audited(
    app: Flask, scored: Scored, lead_key: str
) -> None:
    client = signed_in(app, lead_key)
    shown = clients_on(client.get("/web/?tier=high&show=all").get_data(as_text=True))
    answer = client.get("/web/calls.csv?tier=high&show=all")
    assert answer.status_code == 200 and answer.mimetype == "text/csv"
    assert answer.headers["Content-Disposition"] == (
        f'attachment; filename="calls-{scored.as_of:%Y-%m-%d}.csv"')
    assert answer.headers["Cache-Control"] == "no-store"
    rows = list(csv.DictReader(io.StringIO(answer.get_data(as_text=True))))
    assert [r["client_id"] for r in rows] == shown and shown
    row = _with_phone(scored)
    if row["client_id"] in shown:
        line = next(r for r in rows if r["client_id"] == row["client_id"])
        assert line["phone"] == row["contact"]["phone"]
    assert {r["tier"] for r in rows} == {"high"}
    assert audit_rows(scored.store, "web.export")[-1]["client_ids"] == shown
    printed = client.get("/web/calls/print?tier=high&show=all")
    html = printed.get_data(as_text=True)
    assert printed.status_code == 200 and "Confidential" in html
    assert all(c in html for c in shown)
    assert audit_rows(scored.store, "web.print")[-1]["client_ids"] == shown
    assert client.get("/web/calls.csv?colour=red").status_code == 400


def test_spreadsheet_cells_are_never_formulas() -> None:
    assert _cell("=HYPERLINK(\"http://x\")") == "'=HYPERLINK(\"http://x\")"
    assert _cell("+1 555") == "'+1 555" and _cell("@SUM(A1)") == "'@SUM(A1)"
    assert _cell("-2") == "'-2" and _cell("(617) 555-0142") == "(617) 555-0142"
    assert _cell(None) == "" and _cell(3) == "3"


@pytest.mark.parametrize(("risk", "shown"), [
    (0.0, "<1%"), (0.004, "<1%"), (0.005, "<1%"), (0.0075, "<1%"), (0.0099, "<1%"),
    (0.01, "1%"), (0.015, "2%"), (0.125, "13%"), (0.5, "50%"), (0.99, "99%"),
    (0.994, ">99%"), (0.995, ">99%"), (1.0, ">99%"),
])
def test_percentages_never_round_to_a_certain_looking_number(risk: float, shown: str) -> None:
    assert pct(risk) == shown


def test_outreach_times_are_in_the_clinics_time_zone(
    scored: Scored, private_store: tuple[str, Engine]
) -> None:
    url, engine = private_store
    row = _list(scored)[0]
    with engine.begin() as conn:
        outreach.record_outreach(conn, outreach.Outreach(
            client_id=row["client_id"], episode_id=row["episode_id"], clinic_id=CLINIC,
            list_as_of=scored.as_of, risk=row["risk"], tier=row["tier"], key_id="k" * 12,
            reached=False, channel="text"),
            at=clock_on(scored.as_of, hour=15).now() - timedelta(days=1))
    app = _app(scored, url, clinic_timezone="America/New_York")
    client = signed_in(app, make_key(engine, "case_manager", [CLINIC]))
    page = client.get(f"/web/clients/{row['client_id']}").get_data(as_text=True)
    day = scored.as_of - timedelta(days=1)
    assert "When (America/New_York)" in page
    # 15:00 UTC on a day in June is 11:00 in New York (EDT, UTC-4).
    assert f"{day:%a %d %b} 11:00" in page and f"{day:%a %d %b} 15:00" not in page
    assert "text message" in page


def test_a_client_who_did_not_agree_to_calls_gets_no_call_buttons(
    app: Flask, scored: Scored, lead_key: str
) -> None:
    page = signed_in(app, lead_key).get("/web/?show=all").get_data(as_text=True)
    checked = {"no calls": 0, "calls": 0}
    for row in _list(scored):
        contact = _contact(scored, row["client_id"])
        cells = page.split(f'id="c-{row["client_id"]}"')[1].split("</tr>")[0]
        if contact and contact["may_call"] is False:
            assert "no calls" in cells and 'value="no_answer"' not in cells
            assert "Calls not agreed" in cells
            checked["no calls"] += 1
        else:
            assert 'value="no_answer"' in cells and "Calls not agreed" not in cells
            checked["calls"] += 1
    assert all(checked.values()), checked  # the clinic has both kinds
