"""The cached-list path (``api.fastpath``) answers exactly as the Flask path would.

Two apps over one store, one with the path and one without (``LIST_FAST_PATH``),
get the same requests; status, headers, body, audit record, metrics and rate-limit
count must match, on SQLite and PostgreSQL. Each test also checks which requests
the path itself answered, so a test cannot pass by everything going to Flask.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.exc import OperationalError

from retention.access.audit import read_audit, write_audit
from retention.access.keys import Caller, authenticate, create_key, revoke_key, signing_key
from retention.access.scope import ListFilter
from retention.api import auth, create_app, fastpath, routes
from retention.api.connections import RequestConnections
from retention.api.errors import Problem
from retention.api.fastpath import CachedListPath
from retention.api.services import services_of
from retention.settings import Settings
from retention.store import schema, tables
from tests.conftest import Scored
from tests.support.apps import (
    clock_on,
    copied_store,
    copy_list,
    keyed_client,
    make_key,
    republish,
)


@dataclass
class Pair:
    fast: Flask
    flask: Flask
    engine: Engine
    settings: Settings
    scored: Scored

    def build(self, **settings: Any) -> None:
        """Both apps again, over the same store, with other settings."""
        changed = self.settings.with_overrides(**settings)
        self.fast = _app(changed, self.scored, fast=True)
        self.flask = _app(changed, self.scored, fast=False)


def _app(settings: Settings, scored: Scored, fast: bool) -> Flask:
    return create_app(settings, clock=clock_on(scored.as_of), LIST_FAST_PATH=fast)


@pytest.fixture(params=["sqlite", "postgresql"])
def pair(request: pytest.FixtureRequest, scored: Scored, tmp_path: Path) -> Iterator[Pair]:
    settings = copied_store(scored.settings, tmp_path)
    if request.param == "postgresql":
        settings = settings.with_overrides(store_url=request.getfixturevalue("pg_url"))
        copy_list(scored.store, settings.store_url)
    engine = create_engine(settings.store_url)
    with engine.begin() as conn:
        schema.upgrade(conn)
    yield Pair(_app(settings, scored, True), _app(settings, scored, False), engine, settings,
               scored)
    engine.dispose()


def fast_served(app: Flask) -> int:
    path = app.wsgi_app
    return path.served if isinstance(path, CachedListPath) else 0


def answer(app: Flask, token: str | None, url: str, method: str = "GET",
           cookie: str | None = None, **kwargs: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    client = keyed_client(app, token) if token else app.test_client()
    if cookie is not None:
        client.set_cookie("retention_session", cookie)
    response = client.open(url, method=method, **kwargs)
    return response.status_code, list(response.headers.items()), response.get_data()


def audited(engine: Engine, request_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [{k: v for k, v in r.items() if k not in ("audit_id", "at", "request_id")}
                for r in read_audit(conn, datetime.min, datetime.max)
                if r["request_id"] == request_id]


def list_metrics(app: Flask) -> list[str]:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    return sorted(line for line in text.splitlines()
                  if 'route="/v1/risk-list"' in line and "_bucket" not in line
                  and "_sum" not in line and "_created" not in line)


def counts(app: Flask) -> list[int]:
    """Requests counted per key (a key's first request is also counted by address)."""
    return sorted(v for k, v in services_of(app).limiter.counter._counts.items()
                  if not k.startswith(("addr:", "denied:")))


def address_counts(app: Flask) -> list[int]:
    return sorted(v for k, v in services_of(app).limiter.counter._counts.items()
                  if k.startswith("addr:"))


def both(pair: Pair, token: str | None, url: str, **kwargs: Any) -> tuple[Any, ...]:
    """The same request to each app, with the same request id; the answers and records."""
    out = []
    for app in (pair.fast, pair.flask):
        rid = uuid.uuid4().hex
        headers = {"X-Request-ID": rid, **kwargs.pop("headers", {})}
        status, head, body = answer(app, token, url, headers=headers, **kwargs)
        head = [(k, rid_free(v, rid)) for k, v in head]
        out.append((status, head, body, audited(pair.engine, rid)))
    return tuple(out)


def rid_free(value: str, rid: str) -> str:
    return value.replace(rid, "<rid>")


def same(pair: Pair, token: str | None, url: str, **kwargs: Any) -> tuple[Any, ...]:
    fast, slow = both(pair, token, url, **kwargs)
    assert fast == slow, url
    return fast


def signed_cursor(pair: Pair, token: str, position: int) -> str:
    """The cursor the API would return to this key after ``position`` rows of the
    unfiltered list (made here, so that neither app has served a request for it)."""
    with pair.engine.connect() as conn:
        signer = routes.cursor_signer(str(signing_key(conn, "cursor")))
        who = authenticate(conn, token)
    assert who is not None
    return routes.encode_cursor(signer, pair.scored.as_of, position,
                                routes.view_of(who, ListFilter()))


def list_urls(pair: Pair, token: str) -> list[str]:
    as_of = pair.scored.as_of
    return ["/v1/risk-list", "/v1/risk-list?limit=5", "/v1/risk-list?limit=5&tier=high",
            f"/v1/risk-list?limit=3&cursor={signed_cursor(pair, token, 4)}",
            f"/v1/risk-list?as_of={as_of}&limit=2&engaged_only=true",
            "/v1/risk-list?min_risk=0.2&limit=4&program=outpatient"]


def test_cached_pages_are_answered_as_flask_answers_them(pair: Pair) -> None:
    token = make_key(pair.engine, "admin")
    scoped = make_key(pair.engine, "case_manager", _a_clinic(pair))
    for key in (token, scoped):
        for url in list_urls(pair, key):
            first = same(pair, key, url)  # read from the store: Flask on both
            before = fast_served(pair.fast)
            again = same(pair, key, url)  # cached: the path answers it
            assert fast_served(pair.fast) == before + 1, url
            assert again == first and again[0] == 200 and again[3][0]["outcome"] == "ok"
    assert fast_served(pair.fast) == 12 and fast_served(pair.flask) == 0
    assert list_metrics(pair.fast) == list_metrics(pair.flask)
    assert counts(pair.fast) == counts(pair.flask) == [12, 12]
    # Each key was looked up once, counted by address then; the path counted nothing more.
    assert address_counts(pair.fast) == address_counts(pair.flask) == [2]


def _a_clinic(pair: Pair) -> list[str]:
    with pair.engine.connect() as conn:
        return [conn.execute(select(tables.scores.c.clinic_id).limit(1)).scalar_one()]


def test_what_the_path_does_not_hold_goes_to_flask_unchanged(pair: Pair) -> None:
    token = make_key(pair.engine, "admin")
    analyst = make_key(pair.engine, "analyst", _a_clinic(pair))
    for app in (pair.fast, pair.flask):  # cache what can be cached
        for url in list_urls(pair, token):
            answer(app, token, url)
    served = fast_served(pair.fast)
    cases: list[tuple[str | None, str, dict[str, Any]]] = [
        (token, "/v1/risk-list?limit=5", {"method": "HEAD"}),
        (token, "/v1/risk-list?limit=5", {"cookie": "x"}),
        (token, "/v1/risk-list?limit=5", {"data": "<x/>", "content_type": "text/xml"}),
        (token, "/v1/risk-list?limit=5", {"data": "{}", "content_type": "application/json"}),
        (token, "/v1/risk-list?limit=0", {}),
        (token, "/v1/risk-list?limit=5&limit=5", {}),
        (token, "/v1/risk-list?limit=5&colour=red", {}),
        (token, "/v1/risk-list?limit=5&tier=%68igh", {}),  # decoded by Flask: "high"
        (token, "/v1/risk-list?limit=5&tier=high&", {}),
        (token, "/v1/risk-list?limit", {}),
        (token, "/v1/risk-list/?limit=5", {}),
        (token, f"/v1/risk-list?limit=5&cursor={signed_cursor(pair, token, 4)}x", {}),
        (token, "/v1/risk-list?limit=7", {}),  # not cached yet
        (token + "x", "/v1/risk-list?limit=5", {}),
        (analyst, "/v1/risk-list?limit=5", {}),
        (None, "/v1/risk-list?limit=5", {}),
        (None, "/v1/risk-list?limit=5", {"headers": {"Authorization": "Basic abc"}}),
    ]
    for key, url, kwargs in cases:
        fast, slow = both(pair, key, url, **kwargs)
        assert fast == slow, (url, kwargs)
        assert fast_served(pair.fast) == served, (url, kwargs)
    assert list_metrics(pair.fast) == list_metrics(pair.flask)
    assert counts(pair.fast) == counts(pair.flask)


def test_a_request_over_its_limit_is_refused_as_flask_refuses_it(pair: Pair) -> None:
    pair.build(api_rate_limit_per_minute=3)
    token = make_key(pair.engine, "admin")
    answers = [both(pair, token, "/v1/risk-list?limit=5") for _ in range(4)]
    for fast, slow in answers[:3]:
        assert fast == slow and fast[0] == 200
    fast, slow = answers[3]
    assert fast[0] == slow[0] == 429
    # The window's remaining seconds may differ between the two requests.
    assert without_seconds(fast) == without_seconds(slow)
    assert fast[3][0]["outcome"] == "rate_limited"
    assert fast_served(pair.fast) == 2  # the first went to the store, the fourth to Flask
    assert counts(pair.fast) == counts(pair.flask) == [4]  # each counted once
    assert list_metrics(pair.fast) == list_metrics(pair.flask)


def without_seconds(answered: tuple[Any, ...]) -> tuple[Any, ...]:
    status, headers, body, records = answered
    return (status, [(k, "N" if k == "Retry-After" else v) for k, v in headers],
            re.sub(rb"after \d+ s", b"after N s", body), records)


def test_a_rate_limit_store_that_fails_gets_flasks_503(pair: Pair) -> None:
    token = make_key(pair.engine, "admin")
    for app in (pair.fast, pair.flask):
        answer(app, token, "/v1/risk-list?limit=5")

    def down(key: str, window: int) -> int:
        raise ConnectionError("redis is down")

    for app in (pair.fast, pair.flask):
        services_of(app).limiter.counter.hit = down
    fast = same(pair, token, "/v1/risk-list?limit=5")
    assert fast[0] == 503 and b"Rate limiting unavailable" in fast[2] and fast[3] == []
    assert fast_served(pair.fast) == 0
    assert list_metrics(pair.fast) == list_metrics(pair.flask)


def test_a_failed_audit_write_gets_flasks_503_and_no_data(pair: Pair) -> None:
    token = make_key(pair.engine, "admin")
    for app in (pair.fast, pair.flask):
        answer(app, token, "/v1/risk-list?limit=5")
    with pair.engine.begin() as conn:
        if pair.engine.dialect.name == "postgresql":
            conn.execute(text("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                              "$$ BEGIN RAISE EXCEPTION 'disk full'; END $$"))
            conn.execute(text("CREATE TRIGGER audit_down BEFORE INSERT ON audit_log "
                              "FOR EACH ROW EXECUTE FUNCTION refuse()"))
        else:
            conn.execute(text("CREATE TRIGGER audit_down BEFORE INSERT ON audit_log "
                              "BEGIN SELECT RAISE(ABORT, 'disk full'); END"))
    fast = same(pair, token, "/v1/risk-list?limit=5")
    assert fast[0] == 503 and b"Audit unavailable" in fast[2] and b"items" not in fast[2]
    assert fast_served(pair.fast) == 0
    assert counts(pair.fast) == counts(pair.flask) == [2]
    assert list_metrics(pair.fast) == list_metrics(pair.flask)
    with pair.engine.begin() as conn:
        conn.execute(text("DROP TRIGGER audit_down" + (
            " ON audit_log" if pair.engine.dialect.name == "postgresql" else "")))
    assert same(pair, token, "/v1/risk-list?limit=5")[0] == 200
    assert fast_served(pair.fast) == 1


def test_a_revoked_key_and_a_new_list_are_seen_as_flask_sees_them(pair: Pair) -> None:
    with pair.engine.begin() as conn:
        key_id, token = create_key(conn, "admin")
    for app in (pair.fast, pair.flask):
        answer(app, token, "/v1/risk-list?limit=5")
    republish(pair.engine, pair.scored.as_of + timedelta(days=1))
    fast = same(pair, token, "/v1/risk-list?limit=5")
    assert fast[0] == 200 and str(pair.scored.as_of + timedelta(days=1)).encode() in fast[2]
    assert fast_served(pair.fast) == 0  # the audit statement refused the cached list
    assert same(pair, token, "/v1/risk-list?limit=5")[0] == 200
    assert fast_served(pair.fast) == 1
    with pair.engine.begin() as conn:
        revoke_key(conn, key_id)
    fast = same(pair, token, "/v1/risk-list?limit=5")
    assert fast[0] == 401 and fast[3][0]["outcome"] == "unauthenticated"
    assert fast_served(pair.fast) == 1
    assert counts(pair.fast) == counts(pair.flask) == [5]
    assert list_metrics(pair.fast) == list_metrics(pair.flask)


def test_a_list_replaced_during_both_tries_gets_flasks_503_after_two_counts(
    pair: Pair, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The path's refused claim is Flask's first try: Flask makes only the second."""
    token = make_key(pair.engine, "admin")
    for app in (pair.fast, pair.flask):
        answer(app, token, "/v1/risk-list?limit=5")
    write = write_audit

    def list_always_replaced(conn: Any, record: Any, only_if: Any = ()) -> bool:
        if any(c.name in ("list", "latest_list") for c in only_if):
            return False
        return write(conn, record, only_if)

    for module in (auth, fastpath):  # the Flask path and the cached-list path
        monkeypatch.setattr(module, "write_audit", list_always_replaced)
    fast = same(pair, token, "/v1/risk-list?limit=5")
    assert fast[0] == 503 and b"List changed" in fast[2] and fast[3][0]["outcome"] == "error"
    assert fast_served(pair.fast) == 0
    assert counts(pair.fast) == counts(pair.flask) == [3]  # 1 before, 2 tries now


@pytest.mark.parametrize("failure", ["connect", "unexpected"])
def test_a_store_that_cannot_be_reached_or_a_bug_in_the_write_answers_as_flask_does(
    pair: Pair, monkeypatch: pytest.MonkeyPatch, failure: str,
) -> None:
    token = make_key(pair.engine, "admin")
    for app in (pair.fast, pair.flask):
        answer(app, token, "/v1/risk-list?limit=5")
    if failure == "connect":
        def refuse(self: Any) -> Any:
            raise OperationalError("connect", {}, Exception("server closed the connection"))

        monkeypatch.setattr(RequestConnections, "acquire", refuse)
    else:
        def broken(*args: Any, **kwargs: Any) -> bool:
            raise RuntimeError("a bug")

        for module in (auth, fastpath):
            monkeypatch.setattr(module, "write_audit", broken)
    fast = same(pair, token, "/v1/risk-list?limit=5")
    assert fast[0] == (503 if failure == "connect" else 500) and b"items" not in fast[2]
    assert ("Content-Type", "application/problem+json") in fast[1]
    assert fast_served(pair.fast) == 0
    assert counts(pair.fast) == counts(pair.flask) == [2]
    assert list_metrics(pair.fast) == list_metrics(pair.flask)


@pytest.mark.parametrize("config", [{"LIST_FAST_PATH": False}, {"SERVER_NAME": "api.test"},
                                    {"TRUSTED_HOSTS": ["api.test"]}])
def test_the_path_is_off_when_asked_or_when_flask_must_check_the_host(
    scored: Scored, config: dict[str, Any],
) -> None:
    clock = clock_on(scored.as_of)
    assert isinstance(create_app(scored.settings, clock=clock).wsgi_app, CachedListPath)
    assert not isinstance(create_app(scored.settings, clock=clock, **config).wsgi_app,
                          CachedListPath)


def _raw_cursor(text: str) -> str:
    """A cursor as a caller could make one: base64 of any JSON, unsigned."""
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


# What the issue found, and its neighbours: numbers JSON allows that Python's int() does
# not, positions past what a database offset holds, and cursors the API never signed.
CRAFTED_CURSORS = [
    '{"as_of":"2026-12-06","after":1e400}', '{"as_of":"2026-12-06","pos":1e400}',
    '{"as_of":"2026-06-01","pos":Infinity}', '{"as_of":"2026-06-01","pos":NaN}',
    '{"as_of":"2026-06-01","pos":2147483648}',
    '{"as_of":"2026-06-01","pos":9223372036854775808}',
    '{"as_of":"2026-06-01","pos":4}', '{"as_of":"2026-06-01","pos":-1}',
    '{"as_of":"9999-99-99","pos":1}', "[1]", '"x"', "null", "\x00",
]


@pytest.mark.slow
@pytest.mark.parametrize("keyed", [True, False])
def test_a_crafted_cursor_is_a_400_or_a_401_on_both_paths_never_a_crash(
    pair: Pair, keyed: bool,
) -> None:
    token = make_key(pair.engine, "admin")
    for app in (pair.fast, pair.flask):  # key and page cached: the path would serve them
        answer(app, token, "/v1/risk-list?limit=5")
    for raw in CRAFTED_CURSORS:
        url = f"/v1/risk-list?limit=5&cursor={_raw_cursor(raw)}"
        fast = same(pair, token if keyed else None, url)
        assert fast[0] == (400 if keyed else 401), raw
        assert ("Content-Type", "application/problem+json") in fast[1], raw
        assert [r["outcome"] for r in fast[3]] == ["bad_request" if keyed
                                                   else "unauthenticated"], raw
    assert fast_served(pair.fast) == 0


BAD_VALUES = ["%00", "a%00b", "%C2%B2", "%EF%BC%95", "1" * 5000, "%0A", "%F0%9F%92%A5"]


@pytest.mark.slow
def test_nul_bytes_odd_digits_and_huge_numbers_are_400s_on_every_endpoint(pair: Pair) -> None:
    """A NUL byte reaches PostgreSQL as an error unless refused first; '²' passes
    str.isdigit() but not int(); 5,000 digits pass neither int() nor a database."""
    token = make_key(pair.engine, "admin")
    urls = [f"/v1/risk-list?{name}={{}}" for name in sorted(routes.LIST_PARAMS)] + [
        "/v1/runs?limit={}", "/v1/clients/{}/risk", "/v1/clients/C000001/risk?as_of={}",
        "/fhir/RiskAssessment?subject=Patient/{}", "/fhir/RiskAssessment?subject={}",
        "/fhir/RiskAssessment?subject=Patient/C000001&date={}", "/v1/models/{}",
    ]
    for url in urls:
        for value in BAD_VALUES:
            fast, slow = both(pair, token, url.format(value))
            assert fast == slow, (url, value)
            assert fast[0] < 500, (url, value, fast[2][:200])
            assert fast[1][0][1].startswith("application/"), (url, value)


# --- the parameters, fuzzed without a server ------------------------------------------

SIGNER = routes.cursor_signer("k" * 43)
ADMIN = Caller(key_id="a" * 12, role="admin", clinics=None)
SCOPED = Caller(key_id="b" * 12, role="case_manager", clinics=("clinic-east",))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=8)


@given(args=st.dictionaries(st.sampled_from(sorted(routes.LIST_PARAMS)),
                            st.text(max_size=40) | st.sampled_from(
                                ["²", "1e400", "Infinity", "NaN", "-0", "0x10", "9" * 30,
                                 "2026-02-30", "\x00", "٣"]), max_size=6))
@settings(max_examples=400, deadline=None, database=None)
def test_any_list_query_is_parsed_or_refused_with_a_400(args: dict[str, str]) -> None:
    """Whatever the values, parsing ends in a query or a Problem 400, never anything else."""
    try:
        query = routes.parse_list_query(args, 500, ADMIN, SIGNER)
    except Problem as exc:
        assert exc.code == 400, (args, exc.description)
        return
    assert 1 <= query.limit <= 500 and 0 <= query.flt.offset <= routes.MAX_POSITION


@given(payload=JSON_VALUES, as_of=st.dates(), position=st.integers())
@settings(max_examples=300, deadline=None, database=None)
def test_only_a_cursor_signed_for_this_view_with_a_sane_position_is_taken(
    payload: Any, as_of: Any, position: int,
) -> None:
    """Even a correctly signed cursor holding anything but a date and a position from 0 to
    2^31-1 is a 400; a cursor signed for another scope or other filters is too."""
    view = routes.view_of(ADMIN, ListFilter())
    for body in (payload, {"as_of": as_of.isoformat(), "pos": position}):
        raw = str(SIGNER.dumps(body, salt=view))
        try:
            got = routes.decode_cursor(SIGNER, raw, view)
        except Problem as exc:
            assert exc.code == 400
        else:
            assert got == (as_of, position) and 0 <= position <= routes.MAX_POSITION
    good = routes.encode_cursor(SIGNER, as_of, abs(position) % routes.MAX_POSITION, view)
    for other in (routes.view_of(SCOPED, ListFilter()),
                  routes.view_of(ADMIN, ListFilter(tier="high"))):
        with pytest.raises(Problem) as refused:
            routes.decode_cursor(SIGNER, good, other)
        assert refused.value.code == 400
    with pytest.raises(Problem):
        routes.decode_cursor(routes.cursor_signer("another key" * 4), good, view)
