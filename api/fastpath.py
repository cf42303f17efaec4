"""The ranked list's cached pages served without Flask's request machinery.

An EHR polls the same first page all day. Once a worker has served it, all such a
request needs is what the issue requires of every list read: the key (by its hash,
from the cache), the rate-limit count in Redis, the audit record written durably
with the claims re-checked in its statement, and the page's bytes. Flask's request
context, routing and hooks cost as much CPU as all of that together.

Equivalence with the Flask path (``api.routes.risk_list``) is by construction where
it can be: the same functions parse the query, name the page, build the body and the
audit claims, the audit record is built by the same ``audit_record``, and the same
recorder counts the request in the metrics. Only a request that is plainly a GET of
a page the worker holds, from a key it holds, is served here; anything else goes to
Flask untouched. Once this path has counted the request in Redis it does not count
it again: if the count is refused or fails, the audit write fails (or anything else
does), or the audit statement refuses a claim, it hands the request to Flask with
what it did (``auth.Handover``) and Flask answers as it would have.
``tests/api/test_fastpath.py`` runs requests through both paths and compares them.

The key is looked up (in the cache, by its hash) before the query is parsed, so a
request without a known key costs no parsing here, and a query the path cannot plan
for any reason goes to Flask: nothing raised while planning ever leaves this module.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from sqlalchemy.exc import SQLAlchemyError

from retention.access import consent
from retention.access.audit import audit_record, key_still_valid, write_audit
from retention.access.keys import token_digest
from retention.access.scope import still_published
from retention.api import routes
from retention.api.auth import (
    HANDOVER,
    Handover,
    audit_unavailable,
    forget_claims,
    handover,
    request_id,
)
from retention.api.errors import Problem
from retention.api.ratelimit import Verdict
from retention.api.services import services_of

PATH = "/v1/risk-list"
ACTION = "risk_list.read"
# Names and values that Werkzeug decodes as they are (no %-escapes, no '+'): any
# other query goes to Flask.
PLAIN_QUERY = re.compile(r"^(?:[a-z_]+=[A-Za-z0-9._~-]*(?:&[a-z_]+=[A-Za-z0-9._~-]*)*)?$")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def register_fast_path(app: Flask) -> None:
    """Serve cached list pages ahead of Flask, unless ``LIST_FAST_PATH`` is False."""
    # Host checks and host-based routing happen in Flask's request context: with
    # either configured, every request goes through it.
    if app.config.get("LIST_FAST_PATH", True) and not (
            app.config.get("SERVER_NAME") or app.config.get("TRUSTED_HOSTS")
            or app.url_map.host_matching):
        app.wsgi_app = CachedListPath(app, app.wsgi_app)  # type: ignore[method-assign]
        # Last of the hooks: the request has its id, its timer and its body check.
        app.before_request(raise_handed_error)


def raise_handed_error() -> None:
    """A request handed over after an error answers that error, as the view would have."""
    handed = handover()
    if handed is not None and handed.error is not None:
        raise handed.error


class CachedListPath:
    """WSGI middleware in front of ``app.wsgi_app``; ``served`` counts what it answered."""

    def __init__(self, app: Flask, flask_app: WSGIApp) -> None:
        found = services_of(app)
        self._flask_app = flask_app
        self._clock = found.clock
        self._max_limit = found.settings.api_max_limit
        self._cache = found.cache
        self._limiter = found.limiter
        self._connections = found.connections
        self._metrics = found.request_metrics
        self.served = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        started = time.perf_counter()
        try:
            plan = self._plan(environ)
        except Exception:  # Flask parses the request again and answers it (400, or 500)
            plan = None
        if plan is None:
            return self._flask_app(environ, start_response)
        who, digest, pub, latest, page, body, now = plan
        rid = request_id(environ.get("HTTP_X_REQUEST_ID", ""))
        handed = Handover(rid)
        verdict: Verdict | Exception
        try:
            verdict = self._limiter.check(who.key_id)
        except Exception as exc:  # the counter store is down: Flask says so (503)
            verdict = exc
        if isinstance(verdict, Exception) or not verdict.allowed:
            handed.rate_limit = verdict
            return self._hand_over(environ, start_response, handed)
        record = audit_record(ACTION, "ok", 200, request_id=rid,
                              remote_addr=environ.get("REMOTE_ADDR"), caller=who,
                              client_ids=page.client_ids, at=now)
        claims = [key_still_valid(who.key_id, digest, now),
                  still_published(pub, latest)]
        written = False
        conn = None
        try:
            conn = self._connections.acquire()
            written = write_audit(conn, record, claims)
            conn.commit()
        except SQLAlchemyError:
            handed.error = audit_unavailable(rid, ACTION)
        except Exception as exc:  # Flask answers it as any unexpected error: 500, logged
            handed.error = exc
        finally:
            if conn is not None:
                self._connections.release(conn)
        if handed.error is None and not written:
            # Revoked or replaced since cached: Flask tries again from the database.
            forget_claims(self._cache, digest)
            handed.stale = True
        if handed.error is not None or handed.stale:
            return self._hand_over(environ, start_response, handed)
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body))),
                                  ("X-Request-ID", rid)])
        self._metrics.observe(PATH, "GET", 200, time.perf_counter() - started)
        self.served += 1
        return [body]

    def _plan(self, environ: dict[str, Any]) -> tuple[Any, ...] | None:
        """What the answer would be, if everything it needs is cached; no side effects."""
        if (environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "GET"
                or environ.get("CONTENT_LENGTH") not in (None, "", "0")
                or "HTTP_TRANSFER_ENCODING" in environ or "HTTP_COOKIE" in environ
                or HANDOVER in environ):
            return None
        # The key first: a request from no key the worker knows is parsed by Flask, after
        # Flask has counted its address and authenticated it.
        scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        digest = token_digest(token)
        who = self._cache.callers.get(digest)
        now = self._clock.now()
        if (who is None or not who.reads_client_data or who.expired(now)
                or consent.is_outside(who)):  # consent is checked, and audited, by Flask
            return None
        args = _plain_args(environ.get("QUERY_STRING", ""))
        if args is None or ("cursor" in args and self._cache.cursors is None):
            return None
        try:
            query = routes.parse_list_query(args, self._max_limit, who, self._cache.cursors)
        except Problem:
            return None
        pub = self._cache.publications.get(query.as_of)
        if pub is None:
            return None
        fixed = self._cache.freshness.get(routes.identity(pub))
        page = self._cache.pages.get(routes.page_key(pub, who, query.flt, query.limit))
        if fixed is None or page is None:
            return None
        fresh = routes.aged(fixed, pub["as_of"], self._clock.today())
        return (who, digest, pub, query.as_of is None, page, routes.list_body(fresh, page),
                now)

    def _hand_over(self, environ: dict[str, Any], start_response: Callable[..., Any],
                   handed: Handover) -> Iterable[bytes]:
        environ[HANDOVER] = handed
        return self._flask_app(environ, start_response)


def _plain_args(query: str) -> dict[str, str] | None:
    """The query's parameters, if they are the list's, each once, and need no decoding."""
    if not PLAIN_QUERY.match(query):
        return None
    pairs = [pair.split("=", 1) for pair in query.split("&")] if query else []
    args = dict(pairs)
    if len(args) != len(pairs) or not args.keys() <= routes.LIST_PARAMS:
        return None
    return args
