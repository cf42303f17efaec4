"""The case managers' pages through Flask's test client: sign-in, scope, CSRF, audit, outreach."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from markupsafe import escape
from sqlalchemy import Engine, select, text

from retention.access.keys import Caller, key_id_of, revoke_key
from retention.api import create_app
from retention.api.web.session import WebConfigError
from retention.casework import outreach
from retention.store import tables
from retention.store.lists import publish_scores, read_list
from retention.store.runs import finish_run, start_run
from tests.conftest import REPO, Scored
from tests.support.apps import clock_on, make_key
from tests.support.web import audit_rows, clients_on, csrf, signed_in

CLINIC = "clinic-east"
# Reads every clinic's outreach, to check what was stored.
EVERY_CLINIC = Caller(key_id="test", role="admin", clinics=None)


def _app(scored: Scored, settings_store: str | None = None, **overrides: object) -> Flask:
    settings = scored.settings
    if settings_store:
        settings = settings.with_overrides(store_url=settings_store)
    return create_app(settings, TESTING=True, clock=clock_on(scored.as_of), **overrides)


@pytest.fixture(scope="module")
def app(scored: Scored) -> Flask:
    return _app(scored)


@pytest.fixture(scope="module")
def cm_key(scored: Scored) -> str:
    return make_key(scored.store, "case_manager", [CLINIC], label="Dana (test)")


def in_clinic(scored: Scored, clinic: str, other: bool = False) -> str:
    with scored.store.connect() as conn:
        query = select(tables.scores.c.client_id).where(tables.scores.c.as_of == scored.as_of)
        query = query.where(tables.scores.c.clinic_id != clinic if other
                            else tables.scores.c.clinic_id == clinic)
        return str(conn.execute(query.limit(1)).scalar_one())


def test_sign_in_page_asks_for_the_access_key_and_is_never_cached(app: Flask) -> None:
    answer = app.test_client().get("/web/sign-in")
    page = answer.get_data(as_text=True)
    assert answer.status_code == 200 and "Sign in with your access key" in page
    assert answer.headers["Cache-Control"] == "no-store"
    assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
    assert not re.search(r'(src|href)="https?://', page)  # nothing from elsewhere


def test_pages_need_a_session(app: Flask) -> None:
    answer = app.test_client().get("/web/")
    assert answer.status_code == 303 and "/web/sign-in" in answer.headers["Location"]


def test_a_bad_key_or_an_api_only_role_cannot_sign_in(app: Flask, scored: Scored) -> None:
    client = app.test_client()
    token = csrf(client.get("/web/sign-in").get_data(as_text=True))
    fake = "rk_000000000000_" + "x" * 43
    bad = client.post("/web/sign-in", data={"csrf_token": token, "key": fake})
    assert bad.status_code == 401 and "not valid" in bad.get_data(as_text=True)
    ehr = make_key(scored.store, "ehr", [CLINIC], recipient="demo-ehr")
    refused = client.post("/web/sign-in", data={"csrf_token": token, "key": ehr})
    assert refused.status_code == 403 and "API only" in refused.get_data(as_text=True)
    assert client.get("/web/").status_code == 303
    outcomes = {r["outcome"] for r in audit_rows(scored.store, "web.sign_in")}
    assert {"unauthenticated", "forbidden"} <= outcomes


def test_sign_in_without_the_form_token_is_refused(app: Flask, cm_key: str) -> None:
    client = app.test_client()
    client.get("/web/sign-in")
    answer = client.post("/web/sign-in", data={"key": cm_key})
    assert answer.status_code == 400 and "text/html" in answer.content_type
    assert client.get("/web/").status_code == 303


def test_the_list_shows_only_the_callers_clinic_and_is_audited(
    app: Flask, scored: Scored, cm_key: str
) -> None:
    answer = signed_in(app, cm_key).get("/web/?show=all")
    page = answer.get_data(as_text=True)
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    shown = clients_on(page)
    with scored.store.connect() as conn:
        expected = conn.execute(
            select(tables.scores.c.client_id).where(tables.scores.c.as_of == scored.as_of,
                                                   tables.scores.c.clinic_id == CLINIC)
            .order_by(tables.scores.c.rank)).scalars().all()
    assert shown == list(expected) and shown
    assert "List as of" in page and "Signed in as" in page and "Dana (test)" in page
    last = audit_rows(scored.store, "web.list")[-1]
    assert last["client_ids"] == shown and last["outcome"] == "ok"


def test_filters_and_sorting(app: Flask, scored: Scored, cm_key: str) -> None:
    client = signed_in(app, cm_key)
    high = client.get("/web/?tier=high&show=all").get_data(as_text=True)
    assert clients_on(high) and 'badge-medium' not in high and 'badge-low' not in high
    by_booking = client.get("/web/?sort=next_booked").get_data(as_text=True)
    assert sorted(clients_on(by_booking)) == sorted(clients_on(client.get("/web/").get_data(
        as_text=True)))
    bad = client.get("/web/?tier=urgent")
    assert bad.status_code == 400 and "high, medium or low" in bad.get_data(as_text=True)


def test_client_page_tells_the_story(app: Flask, scored: Scored, cm_key: str) -> None:
    client_id = in_clinic(scored, CLINIC)
    answer = signed_in(app, cm_key).get(f"/web/clients/{client_id}")
    page = answer.get_data(as_text=True)
    assert answer.status_code == 200
    assert page.count("<svg") >= 2 and "concern line 36" in page and "Next step:" in page
    assert "Record outreach" in page
    last = audit_rows(scored.store, "web.client")[-1]
    assert last["client_ids"] == [client_id] and last["outcome"] == "ok"


def test_the_client_page_says_how_to_read_its_headings_and_points(
    app: Flask, scored: Scored, cm_key: str
) -> None:
    """Each reason under the heading of the way it points, and the points explained from the
    same starting point the list records."""
    with scored.store.connect() as conn:
        row = next(r for r in read_list(conn, scored.as_of, clinic_id=CLINIC, limit=1000)
                   if r["reasons"] and r["protective"])
    page = signed_in(app, cm_key).get(f"/web/clients/{row['client_id']}").get_data(as_text=True)
    why, rest = page.split('<h2 id="why">')[1].split("<h3>Going well</h3>")
    for reason in row["reasons"]:
        assert str(escape(reason["text"])) in why
    for good in row["protective"]:
        assert str(escape(good["text"])) in rest.split("How to read the points")[0]
    assert f"starts at <strong>{row['points']['start']:.0f}%</strong>" in page
    assert "add up to the risk shown" in page and 'href="/web/glossary"' in page


def test_the_glossary_shows_the_clinics_own_lines(scored: Scored, tmp_path: Path) -> None:
    """The lines are read from the clinic's reasons file, not written into the page; the
    glossary holds no client data and needs no sign-in."""
    toml = (REPO / "config" / "reasons.toml").read_text()
    assert "concern_below = 36.0" in toml and "concern_below = 3.0" in toml
    edited = tmp_path / "reasons.toml"
    edited.write_text(toml.replace("concern_below = 36.0", "concern_below = 34.0")
                      .replace("concern_below = 3.0", "concern_below = 2.5"))
    app = create_app(scored.settings.with_overrides(reasons_file=edited), TESTING=True,
                     clock=clock_on(scored.as_of))
    answer = app.test_client().get("/web/glossary")
    page = answer.get_data(as_text=True)
    assert answer.status_code == 200
    assert "A total below\n    34, a fall" in page and "Below\n    2.5 (" in page
    assert "Duncan BL" in page and "Hatcher RL" in page  # each line's source
    plain = create_app(scored.settings, TESTING=True, clock=clock_on(scored.as_of))
    assert "A total below\n    36, a fall" in plain.test_client().get(
        "/web/glossary").get_data(as_text=True)


def test_another_clinics_client_cannot_be_opened_by_url(
    app: Flask, scored: Scored, cm_key: str
) -> None:
    other = in_clinic(scored, CLINIC, other=True)
    client = signed_in(app, cm_key)
    answer = client.get(f"/web/clients/{other}")
    assert answer.status_code == 404 and "text/html" in answer.content_type
    page = answer.get_data(as_text=True)
    assert "not on your list" in page and "Record outreach" not in page and "<svg" not in page
    post = client.post(f"/web/clients/{other}/outreach", data={
        "csrf_token": csrf(client.get("/web/").get_data(as_text=True)),
        "result": "reached", "channel": "phone", "outcome": "booked"})
    assert post.status_code == 404
    with scored.store.connect() as conn:
        assert outreach.client_history(conn, EVERY_CLINIC, other) == []
    assert audit_rows(scored.store, "web.client")[-1]["outcome"] == "denied"


def test_outreach_is_recorded_escaped_and_shown_on_the_list(
    app: Flask, scored: Scored, cm_key: str
) -> None:
    client_id = in_clinic(scored, CLINIC)
    client = signed_in(app, cm_key)
    token = csrf(client.get(f"/web/clients/{client_id}").get_data(as_text=True))
    missing = client.post(f"/web/clients/{client_id}/outreach",
                          data={"csrf_token": token, "result": "reached", "channel": "phone"})
    assert missing.status_code == 400 and "choose what came of it" in missing.get_data(
        as_text=True)
    no_token = client.post(f"/web/clients/{client_id}/outreach",
                           data={"result": "not_reached", "channel": "text"})
    assert no_token.status_code == 400
    saved = client.post(f"/web/clients/{client_id}/outreach", data={
        "csrf_token": token, "result": "reached", "channel": "phone", "outcome": "booked",
        "note": "<b>call</b> back Tue", "back": "list"})
    assert saved.status_code == 303 and f"#c-{client_id}" in saved.headers["Location"]
    page = client.get(f"/web/clients/{client_id}").get_data(as_text=True)
    assert "&lt;b&gt;call&lt;/b&gt; back Tue" in page and "<b>call</b>" not in page
    row = client.get("/web/?show=all").get_data(as_text=True).split(f'id="c-{client_id}"')[1]
    assert "Reached by phone" in row.split("</tr>")[0]
    with scored.store.connect() as conn:
        history = outreach.client_history(conn, EVERY_CLINIC, client_id)
    assert len(history) == 1 and history[0]["outcome"] == "booked"
    assert history[0]["list_as_of"] == scored.as_of and history[0]["reached"] is True


def test_sign_out_ends_the_session_and_a_revoked_key_ends_it_too(
    app: Flask, scored: Scored
) -> None:
    token = make_key(scored.store, "case_manager", [CLINIC])
    client = signed_in(app, token)
    page = client.get("/web/").get_data(as_text=True)
    out = client.post("/web/sign-out", data={"csrf_token": csrf(page)})
    assert out.status_code == 303 and client.get("/web/").status_code == 303
    client = signed_in(app, token)
    with scored.store.begin() as conn:
        revoke_key(conn, key_id_of(token) or "")
    ended = client.get("/web/")
    assert ended.status_code == 303 and "ended=1" in ended.headers["Location"]


def test_errors_are_pages_on_the_web_and_problem_json_on_the_api(app: Flask) -> None:
    page = app.test_client().get("/web/no-such-page")
    assert page.status_code == 404 and "text/html" in page.content_type
    api = app.test_client().get("/v1/no-such-thing")
    assert api.status_code == 404 and api.mimetype == "application/problem+json"
    body = app.test_client().post("/v1/risk-list", data="x=1",
                                  content_type="application/x-www-form-urlencoded")
    assert body.mimetype == "application/problem+json"


def test_audit_failure_shows_an_error_page_not_the_data(
    scored: Scored, private_store: tuple[str, Engine]
) -> None:
    url, engine = private_store
    app = _app(scored, url)
    client = signed_in(app, make_key(engine, "case_manager", [CLINIC]))
    with engine.begin() as conn:
        conn.execute(text("CREATE TRIGGER no_audit BEFORE INSERT ON audit_log "
                          "BEGIN SELECT RAISE(ABORT, 'down'); END"))
    answer = client.get("/web/")
    page = answer.get_data(as_text=True)
    assert answer.status_code == 503 and "audit trail cannot be written" in page
    assert clients_on(page) == [] and in_clinic(scored, CLINIC) not in page


def test_changes_since_the_previous_list_and_a_failed_run_are_shown(
    scored: Scored, private_store: tuple[str, Engine]
) -> None:
    url, engine = private_store
    with engine.begin() as conn:
        current = read_list(conn, scored.as_of, clinic_id=CLINIC, limit=1000)
        rows = conn.execute(select(tables.scores).where(tables.scores.c.as_of == scored.as_of))
        previous = [dict(r._mapping) for r in rows if r.episode_id != current[0]["episode_id"]]
        for r in previous:
            r["as_of"] = scored.as_of - timedelta(days=1)
            if r["episode_id"] == current[1]["episode_id"]:
                r["risk"], r["tier"] = 0.01, "low"
        publish_scores(conn, scored.as_of - timedelta(days=1), previous, 1, "old")
        run = start_run(conn, "score", scored.as_of)
        finish_run(conn, run, "failed", error="boom")
    app = _app(scored, url)
    page = signed_in(app, make_key(engine, "case_manager", [CLINIC])).get(
        "/web/?sort=change&show=all")
    html = page.get_data(as_text=True)
    assert clients_on(html)[:2] == [current[0]["client_id"], current[1]["client_id"]]
    assert "New on the list" in html and "Risk up" in html
    assert "the last nightly run failed" in html


def test_a_dead_run_and_a_missing_table_are_shown(
    scored: Scored, private_store: tuple[str, Engine]
) -> None:
    """A run whose process is gone is not a run still going, and a table gone from the
    clinic's database stops every night until restored: both reach the banner."""
    url, engine = private_store
    with engine.begin() as conn:
        etl = start_run(conn, "etl", scored.as_of)
        finish_run(conn, etl, "failed", detail={"missing_tables": ["alliance_items"]})
        start_run(conn, "score", scored.as_of)  # no process holds its lock: it died
    html = signed_in(_app(scored, url), make_key(engine, "case_manager", [CLINIC])).get(
        "/web/").get_data(as_text=True)
    assert "the last nightly run stopped without finishing" in html
    assert "its process died" in html and "the last nightly run failed" not in html
    assert "no longer has alliance_items" in html


def test_a_stale_list_is_flagged(scored: Scored, cm_key: str) -> None:
    app = create_app(scored.settings, TESTING=True,
                     clock=clock_on(scored.as_of + timedelta(days=4)))
    html = signed_in(app, cm_key).get("/web/").get_data(as_text=True)
    assert "this list is 4 days old" in html and 'role="alert"' in html


def test_the_secret_comes_from_the_environment_and_cookies_are_locked_down(
    scored: Scored, cm_key: str
) -> None:
    off = create_app(scored.settings, clock=clock_on(scored.as_of))
    assert off.test_client().get("/web/").status_code == 503
    assert off.test_client().get("/health").status_code == 200  # the API is unaffected
    with pytest.raises(WebConfigError):
        create_app(scored.settings, clock=clock_on(scored.as_of), SECRET_KEY="short")
    app = create_app(scored.settings, SECRET_KEY="k" * 40, clock=clock_on(scored.as_of))
    client = app.test_client()
    form = client.get("/web/sign-in")
    answer = client.post("/web/sign-in", data={"csrf_token": csrf(form.get_data(as_text=True)),
                                               "key": cm_key})
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" in cookie
    assert "Path=/web" in cookie and cm_key not in cookie


def test_outreach_recorded_by_another_clinic_is_not_shown(
    scored: Scored, private_store: tuple[str, Engine]
) -> None:
    """A client who moved from clinic-north to this clinic: north's notes stay north's."""
    url, engine = private_store
    client_id = in_clinic(scored, CLINIC)
    with engine.begin() as conn:
        row = next(r for r in read_list(conn, scored.as_of, clinic_id=CLINIC, limit=1000)
                   if r["client_id"] == client_id)
        # East's entry first (yesterday), north's last (today): newest by time and by id.
        for clinic, episode, note in ((CLINIC, row["episode_id"], "east's own note"),
                                      ("clinic-north", "E-north-earlier", "north's own note")):
            outreach.record_outreach(conn, outreach.Outreach(
                client_id=client_id, episode_id=episode, clinic_id=clinic,
                list_as_of=scored.as_of, risk=0.5, tier="high", key_id="k" * 12,
                reached=True, channel="phone", outcome="booked", note=note),
                at=clock_on(scored.as_of).now() - timedelta(days=1 if clinic == CLINIC else 0))
    client = signed_in(_app(scored, url), make_key(engine, "case_manager", [CLINIC]))
    page = client.get(f"/web/clients/{client_id}").get_data(as_text=True)
    assert "east&#39;s own note" in page and "north" not in page
    listed = client.get("/web/?show=all").get_data(as_text=True).split(
        f'id="c-{client_id}"')[1]
    # The newest entry is north's (today); the list shows east's (yesterday) instead.
    assert "Reached by phone" in listed.split("</tr>")[0]
    assert "north" not in listed.split("</tr>")[0]


def test_an_outreach_whose_audit_cannot_be_written_is_not_kept(
    scored: Scored, private_store: tuple[str, Engine]
) -> None:
    url, engine = private_store
    client_id = in_clinic(scored, CLINIC)
    client = signed_in(_app(scored, url), make_key(engine, "case_manager", [CLINIC]))
    token = csrf(client.get(f"/web/clients/{client_id}").get_data(as_text=True))
    with engine.begin() as conn:
        conn.execute(text("CREATE TRIGGER no_audit BEFORE INSERT ON audit_log "
                          "BEGIN SELECT RAISE(ABORT, 'down'); END"))
        before = conn.execute(select(tables.outreach.c.outreach_id)).all()  # earlier tests'
    saved = client.post(f"/web/clients/{client_id}/outreach", data={
        "csrf_token": token, "result": "reached", "channel": "phone", "outcome": "booked"})
    assert saved.status_code == 503 and "audit trail cannot be written" in saved.get_data(
        as_text=True)
    with engine.connect() as conn:
        assert conn.execute(select(tables.outreach.c.outreach_id)).all() == before
