"""The pages' sessions are the server's: a cookie copied before sign-out is dead after it,
idle and long sessions end, and sign-in is throttled by address (issue 17)."""

from __future__ import annotations

from datetime import datetime, timedelta

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, func, select, text

from retention.api import create_app
from retention.clock import MovableClock
from retention.store import tables
from tests.api.web.test_views import CLINIC, csrf, signed_in
from tests.conftest import Scored
from tests.support.apps import make_key

COOKIE = "retention_session"




def cookie_of(client: FlaskClient) -> str:
    found = client.get_cookie(COOKIE, path="/web")
    assert found is not None, "no session cookie"
    return found.value


def with_cookie(app: Flask, value: str) -> FlaskClient:
    """Another browser holding a copy of someone's cookie."""
    other = app.test_client()
    other.set_cookie(COOKIE, value, path="/web")
    return other


def sent_to_sign_in(answer: object) -> bool:
    status, location = answer.status_code, answer.headers.get("Location", "")  # type: ignore[attr-defined]
    return bool(status == 303 and "/web/sign-in" in location)


def test_a_cookie_copied_before_sign_out_is_refused_after_it(app: Flask, scored: Scored) -> None:
    client = signed_in(app, make_key(scored.store, "case_manager", [CLINIC]))
    copied = cookie_of(client)
    assert with_cookie(app, copied).get("/web/").status_code == 200  # the copy works now
    page = client.get("/web/").get_data(as_text=True)
    out = client.post("/web/sign-out", data={"csrf_token": csrf(page)})
    assert sent_to_sign_in(out)
    assert sent_to_sign_in(with_cookie(app, copied).get("/web/"))
    assert sent_to_sign_in(client.get("/web/"))


def test_an_idle_session_ends_and_so_does_a_long_one(scored: Scored) -> None:
    """Defaults: 30 minutes without a page, or 10 hours after sign-in, whichever is first."""
    clock = MovableClock(datetime.combine(scored.as_of, datetime.min.time()) + timedelta(hours=7))
    app = create_app(scored.settings, TESTING=True, clock=clock)
    token = make_key(scored.store, "case_manager", [CLINIC])
    client = signed_in(app, token)
    for _ in range(2):
        clock.at += timedelta(minutes=25)
        assert client.get("/web/").status_code == 200
    clock.at += timedelta(minutes=31)
    ended = client.get("/web/")
    assert sent_to_sign_in(ended) and "ended=1" in ended.headers["Location"]

    client = signed_in(app, token)
    signed_at = clock.at
    while clock.at + timedelta(minutes=25) < signed_at + timedelta(hours=10):
        clock.at += timedelta(minutes=25)
        assert client.get("/web/").status_code == 200, clock.at - signed_at
    clock.at = signed_at + timedelta(hours=10, minutes=1)
    assert sent_to_sign_in(client.get("/web/"))


def test_sign_out_ends_the_session_even_when_the_audit_cannot_be_written(
    scored: Scored, private_store: tuple[str, Engine],
) -> None:
    url, engine = private_store
    app = create_app(scored.settings.with_overrides(store_url=url), TESTING=True,
                     clock=MovableClock(datetime.combine(scored.as_of, datetime.min.time())))
    client = signed_in(app, make_key(engine, "case_manager", [CLINIC]))
    copied = cookie_of(client)
    page = client.get("/web/").get_data(as_text=True)
    with engine.begin() as conn:
        conn.execute(text("CREATE TRIGGER no_audit BEFORE INSERT ON audit_log "
                          "BEGIN SELECT RAISE(ABORT, 'down'); END"))
    out = client.post("/web/sign-out", data={"csrf_token": csrf(page)})
    assert out.status_code == 503 and "You are signed out" in out.get_data(as_text=True)
    assert sent_to_sign_in(with_cookie(app, copied).get("/web/"))
    assert sent_to_sign_in(client.get("/web/"))


def test_sign_in_is_throttled_by_address_and_its_denials_are_counted_not_each_written(
    scored: Scored, private_store: tuple[str, Engine],
) -> None:
    url, engine = private_store
    app = create_app(scored.settings.with_overrides(store_url=url), TESTING=True,
                     clock=MovableClock(datetime.combine(scored.as_of, datetime.min.time())))
    client = app.test_client()
    token = csrf(client.get("/web/sign-in").get_data(as_text=True))
    with engine.connect() as conn:
        before = conn.execute(select(func.count()).select_from(tables.audit_log)).scalar_one()
    fake = "rk_000000000000_" + "x" * 43
    answers = [client.post("/web/sign-in", data={"csrf_token": token, "key": fake})
               for _ in range(130)]
    statuses = [a.status_code for a in answers]
    assert statuses[:120] == [401] * 120 and statuses[120:] == [429] * 10
    assert "text/html" in answers[-1].content_type and answers[-1].headers["Retry-After"]
    # A real key from the same address waits for the next minute too: the count is by
    # address, before the key is looked at.
    real = make_key(engine, "case_manager", [CLINIC])
    assert client.post("/web/sign-in", data={"csrf_token": token, "key": real}).status_code \
        == 429
    with engine.connect() as conn:
        written = conn.execute(select(func.count()).select_from(tables.audit_log)).scalar_one()
        counted = conn.execute(text(
            "SELECT action, outcome, status, sum(denials) FROM audit_denials "
            "WHERE action = 'web.sign_in' GROUP BY action, outcome, status "
            "ORDER BY status")).all()
    individual = written - before
    per_minute = scored.settings.audit_denials_per_minute
    assert individual == per_minute
    assert [tuple(r) for r in counted] == [
        ("web.sign_in", "unauthenticated", 401, 120 - per_minute),
        ("web.sign_in", "rate_limited", 429, 11)]
