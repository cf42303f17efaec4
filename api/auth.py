"""Bearer-key authentication, role checks, rate limits and the audit record of each read.

A view marked with ``@requires(...)`` runs only for a caller whose key is valid,
whose role allows the action and who is within its rate limit; every denial is
audited before the problem response goes out, and ``returning`` records the
client ids a view is about to return. If the audit record cannot be written the
request fails with 503 and nothing is returned.

Callers and publications may come from the worker's cache (``api.cache``), but
only as claims: the audit INSERT re-checks them in the same statement and writes
nothing if the key has been revoked or the list replaced since. Then nothing is
sent; the caches are dropped and the request is served once more from the
database, so a revoked key gets its 401 at once, not after an expiry.

A request that does not come from a key the worker already knows is counted by client
address before its key is looked up (``api_rate_limit_per_address_per_minute``), so a
flood without a key, or with made-up ones, is refused with 429 before it costs a
database read. Denials a flood repeats (401, 429) are written one by one only up to
``audit_denials_per_minute`` per address or key a minute, then counted
(``access.audit.count_denial``).
"""

from __future__ import annotations

import functools
import logging
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from flask import Flask, Response, request
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from retention.access import consent
from retention.access.audit import (
    AuditRecord,
    Condition,
    audit_record,
    count_denial,
    key_still_valid,
    write_audit,
)
from retention.access.keys import Caller, a_key, check_key, key_id_of, token_digest
from retention.access.scope import still_published
from retention.api.cache import ReadCache
from retention.api.errors import Problem
from retention.api.ratelimit import WINDOW_SECONDS, RateLimiter, Verdict
from retention.api.services import (
    Services,
    begin_request,
    services,
    services_of,
    state,
    state_or_none,
)

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# No path or query parameter has a use for a control character, and PostgreSQL refuses
# a NUL in text with an error: all are refused up front (400).
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# The request's address count, once taken (a request served twice is counted once).
ADDRESS_VERDICT = "retention.address_verdict"
CLIENT_DATA = "client_data"
OPERATIONS = "operations"
ANY = "any"


def request_id(given: str) -> str:
    """The caller's X-Request-ID if it is well formed, else a new one."""
    return given if REQUEST_ID_RE.match(given) else uuid.uuid4().hex


@dataclass
class Handover:
    """What the cached-list path (``api.fastpath``) did before it left a request to Flask.

    Its side effects are not repeated: the request keeps its id, its rate-limit count
    (or the counter's error) is used as counted, a failed audit write answers with its
    error, and a claim the audit statement refused leaves only the database retry.
    """

    request_id: str
    rate_limit: Verdict | Exception | None = None
    error: Exception | None = None  # raised by the hook ``api.fastpath`` registers
    stale: bool = False


HANDOVER = "retention.handover"


def handover() -> Handover | None:
    found: Handover | None = request.environ.get(HANDOVER)
    return found


def register_request_ids(app: Flask) -> None:
    """Take a well-formed X-Request-ID from the caller or make one; echo it back."""

    @app.before_request
    def assign_request_id() -> None:
        handed = handover()
        begin_request(handed.request_id if handed is not None
                      else request_id(request.environ.get("HTTP_X_REQUEST_ID", "")))

    @app.after_request
    def echo_request_id(response: Response) -> Response:
        current = state_or_none()
        response.headers["X-Request-ID"] = current.request_id if current is not None else ""
        return response

    @app.teardown_request
    def release_connection(_exc: BaseException | None) -> None:
        current = state_or_none()
        if current is not None and current.db is not None:
            conn, current.db = current.db, None
            services().connections.release(conn)


def register_request_guards(app: Flask) -> None:
    """The client's address behind trusted proxies, and no control characters in a URL.

    Called last of the factory's steps: ProxyFix wraps every other WSGI layer (the
    cached-list path included), so everything sees the same address. With
    ``trusted_proxies`` 0 (the default) X-Forwarded-For is ignored: a client could
    write anything there to dodge its address's count.
    """
    proxies = services_of(app).settings.trusted_proxies
    if proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies)  # type: ignore[method-assign]

    @app.before_request
    def refuse_control_characters() -> None:
        if CONTROL_RE.search(request.path) or any(
                CONTROL_RE.search(k) or CONTROL_RE.search(v)
                for k, v in request.args.items(multi=True)):
            raise Problem(400, "the path or a query parameter holds a control character",
                          "Invalid request")


def connection() -> Connection:
    """The request's one store connection: auth, reads and the audit share its round trips.

    On PostgreSQL every statement is its own transaction (autocommit): no BEGIN/COMMIT
    round trips, and the audit INSERT is durable when it returns. SQLite's engine
    emits its own BEGIN, so there the audit commits explicitly.
    """
    current = state()
    if current.db is None:
        current.db = services().connections.acquire()
    return current.db


class StaleClaim(Exception):
    """The audit statement found the cached key revoked or the cached list replaced."""


def read_cache() -> ReadCache:
    return services().cache


def claim_publication(pub: dict[str, Any], latest: bool) -> None:
    """The response is built from ``pub``: the audit record is written only while it is served."""
    state().publication_claim = (pub, latest)


def caller() -> Caller:
    """The authenticated caller of the current request (only inside ``@requires`` views)."""
    found = state().caller
    assert found is not None, "caller() outside a @requires view"
    return found


def audit(action: str, outcome: str, status: int, client_ids: Iterable[str] = (),
          after_error: bool = False) -> None:
    """Append the audit record for this request, committed before any response leaves."""
    current = state()
    who = current.caller
    detail = (consent.audit_detail(current.disclosure)
              if who is not None and consent.is_outside(who) else None)
    record = audit_record(action, outcome, status, request_id=current.request_id,
                          remote_addr=request.remote_addr, caller=who,
                          key_id=current.claimed_key_id, client_ids=client_ids,
                          at=services().clock.now(), detail=detail)
    try:
        conn = connection()
        if after_error:  # a failed statement may have left the transaction aborted
            conn.rollback()
        written = write_audit(conn, record, _claims(who))
        conn.commit()
    except SQLAlchemyError:
        raise audit_unavailable(current.request_id, action) from None
    if not written:
        raise StaleClaim


def audit_unavailable(request_id: str, action: str) -> Problem:
    """Logged, and the answer when an audit record cannot be written: no data without it."""
    log.error("audit write failed for request %s (%s); refusing the response",
              request_id, action)
    return Problem(503, "The audit trail cannot be written, so no data is returned; "
                   "retry later or ask the operator to check the service database",
                   "Audit unavailable")


def _claims(who: Caller | None) -> list[Condition]:
    """What must still hold when the record is written for the response to go out."""
    current = state()
    conditions = []
    if who is not None and current.token_digest is not None:
        conditions.append(key_still_valid(who.key_id, current.token_digest,
                                          services().clock.now()))
    if current.publication_claim is not None:
        conditions.append(still_published(*current.publication_claim))
    return conditions


def deny(action: str, status: int, outcome: str, detail: str, title: str,
         client_ids: Iterable[str] = ()) -> Problem:
    """Audit a denial and return the problem to raise."""
    audit(action, outcome, status, client_ids)
    return Problem(status, detail, title)


def deny_counted(action: str, status: int, outcome: str, detail: str, title: str) -> Problem:
    """Audit a denial that floods repeat (401, 429), and return the problem to raise.

    Written one by one up to ``audit_denials_per_minute`` a minute from one address (or,
    once authenticated, one key); counted in its minute's row after that.
    """
    current = state()
    found = services()
    who = current.caller
    subject = f"key:{who.key_id}" if who is not None else f"addr:{request.remote_addr}"
    try:
        seen = found.limiter.counter.hit(f"denied:{subject}", WINDOW_SECONDS)
    except Exception:  # the counter store is down: every record written, none lost
        seen = 0
    if seen <= found.settings.audit_denials_per_minute:
        audit(action, outcome, status)
    else:
        count_denied(_record(action, outcome, status))
    return Problem(status, detail, title)


def _record(action: str, outcome: str, status: int) -> AuditRecord:
    current = state()
    return audit_record(action, outcome, status, request_id=current.request_id,
                        remote_addr=request.remote_addr, caller=current.caller,
                        key_id=current.claimed_key_id, at=services().clock.now())


def count_denied(record: AuditRecord) -> None:
    """Add one to the denial's minute row; committed before the response, like a record."""
    try:
        conn = connection()
        count_denial(conn, record)
        conn.commit()
    except SQLAlchemyError:
        raise audit_unavailable(record.request_id, record.action) from None


def address_verdict(found: Services, address: str | None) -> Verdict:
    """Count one request from ``address`` that no known key vouches for, in this minute."""
    limiter = RateLimiter(found.limiter.counter,
                          found.settings.api_rate_limit_per_address_per_minute,
                          lambda: found.clock.now().timestamp())
    return limiter.check(f"addr:{address or 'unknown'}")


def throttle_address(action: str) -> None:
    """429 once this address has sent its minute's share of requests without a known key."""
    verdict: Verdict | None = request.environ.get(ADDRESS_VERDICT)
    if verdict is None:
        try:
            verdict = address_verdict(services(), request.remote_addr)
        except Exception:  # the counter store is down: fail closed, say so
            log.error("rate-limit store unavailable for request %s", state().request_id)
            raise Problem(503, "the rate-limit store cannot be reached; retry later",
                          "Rate limiting unavailable") from None
        request.environ[ADDRESS_VERDICT] = verdict
    if not verdict.allowed:
        limit = services().settings.api_rate_limit_per_address_per_minute
        problem = deny_counted(action, 429, "rate_limited",
                               f"more than {limit} requests a minute from this address "
                               f"without a valid key; retry after {verdict.retry_after} s",
                               "Too Many Requests")
        problem.headers = {"Retry-After": str(verdict.retry_after)}
        raise problem


def _authenticate(action: str) -> Caller:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    current = state()
    now = services().clock.now()
    found = None
    if scheme.lower() == "bearer" and token:
        current.claimed_key_id = key_id_of(token)
        digest = current.token_digest = token_digest(token)
        found = read_cache().callers.get(digest)
        if found is not None and found.expired(now):
            read_cache().callers.pop(digest)
            found = None
    if found is not None:
        return found
    throttle_address(action)
    if current.token_digest is None:
        raise _unauthorised(deny_counted(action, 401, "unauthenticated",
                                         "send an API key as 'Authorization: Bearer <key>'",
                                         "Authentication required"))
    try:
        checked = check_key(connection(), token, now)
    except SQLAlchemyError:
        log.error("key lookup failed for request %s", current.request_id)
        raise Problem(503, "the key store cannot be read; retry later",
                      "Authentication unavailable") from None
    if checked.caller is None:
        raise _unauthorised(deny_counted(action, 401, checked.outcome,
                                         "the API key is not valid, has expired or has been "
                                         "revoked", "Authentication required"))
    read_cache().callers.put(current.token_digest, checked.caller)
    return checked.caller


def _unauthorised(problem: Problem) -> Problem:
    problem.headers = {"WWW-Authenticate": 'Bearer realm="retention"'}
    return problem


def _rate_limit(who: Caller, action: str) -> None:
    handed = handover()
    counted = None
    if handed is not None and handed.rate_limit is not None:
        # Counted already, once, by the cached-list path; an error it met is this one.
        counted, handed.rate_limit = handed.rate_limit, None
    rate_limit(action, who.key_id, "requests a minute for this key", counted)


def rate_limit(action: str, subject: str, per: str,
               counted: Verdict | Exception | None = None) -> None:
    """The per-credential limit for ``subject``: 429 audited when over it, 503 when the
    counter store cannot be reached (fail closed). ``counted``: a count already taken."""
    limiter = services().limiter
    try:
        verdict = counted if counted is not None else limiter.check(subject)
        if isinstance(verdict, Exception):
            raise verdict
    except Exception:  # the counter store is down: fail closed, say so
        log.error("rate-limit store unavailable for request %s", state().request_id)
        raise Problem(503, "the rate-limit store cannot be reached; retry later",
                      "Rate limiting unavailable") from None
    if not verdict.allowed:
        problem = deny_counted(action, 429, "rate_limited",
                               f"more than {limiter.limit} {per}; "
                               f"retry after {verdict.retry_after} s", "Too Many Requests")
        problem.headers = {"Retry-After": str(verdict.retry_after)}
        raise problem


def returning(client_ids: Iterable[str], outcome: str = "ok") -> None:
    """Tell the audit which client ids this request returns (or was refused)."""
    current = state()
    current.audit_client_ids = tuple(client_ids)
    current.audit_outcome = outcome


def disclosable(client_ids: Iterable[str]) -> set[str]:
    """The ids among ``client_ids`` the caller may be given (42 CFR Part 2).

    The clinic's own staff: all of them. An outside recipient: those under a consent
    covering it now (``retention.access.consent``); the request's audit record keeps the
    consent of each and the reason each other was withheld. A view answers for a
    withheld client exactly as for an unknown one.
    """
    who = caller()
    wanted = list(client_ids)
    if not consent.is_outside(who):
        return set(wanted)
    verdicts = consent.check(connection(), who, wanted, disclosure_policy())
    state().disclosure.update(verdicts)
    return {c for c, v in verdicts.items() if v.allowed}


def consent_scope(client_id: str) -> str | None:
    """The scope of the consent a client is being disclosed under (None: not checked)."""
    verdict = state().disclosure.get(client_id)
    return verdict.scope if verdict is not None else None


def disclosure_policy() -> consent.Policy:
    """This request's consent policy: the configured purpose and classes, at one moment."""
    current = state()
    if current.consent_policy is None:
        found = services()
        settings = found.settings
        current.consent_policy = consent.Policy.at_utc(
            settings.disclosure_purpose, found.clock.now(), settings.clinic_timezone,
            settings.recipient_classes)
    return current.consent_policy


def outside() -> bool:
    """Whether the current caller is an outside recipient (consent and notice apply)."""
    return consent.is_outside(caller())


def requires(permission: str, action: str) -> Callable[[F], F]:
    """Authenticate, check the role and the rate limit, run the view, audit, then respond.

    Exactly one audit record per request; it is committed after the view has
    built its answer and before the answer is returned. If a cached claim failed
    (no record written), the request runs once more from the database.
    """

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            handed = handover()
            if handed is None or not handed.stale:  # else its claims were refused already
                try:
                    return _serve(view, permission, action, args, kwargs)
                except StaleClaim:
                    _forget_claims()
            try:  # from the database this time
                return _serve(view, permission, action, args, kwargs)
            except StaleClaim:
                # Revoked or replaced between this request's own reads and its audit write.
                _forget_claims()
                state().caller = _authenticate(action)  # a revoked key: 401, audited
                raise deny(action, 503, "error", "the list was replaced while this request "
                           "read it; retry", "List changed") from None

        return cast(F, wrapped)

    return decorate


def _serve(view: Callable[..., Any], permission: str, action: str, args: Any,
           kwargs: Any) -> Any:
    who = _authenticate(action)
    current = state()
    current.caller = who
    _rate_limit(who, action)
    if not _permitted(who, permission):
        raise deny(action, 403, "forbidden",
                   f"{a_key(who.role)} may not use this endpoint", "Forbidden")
    try:
        result = view(*args, **kwargs)
    except HTTPException as exc:
        status = exc.code or 500
        audit(action, current.audit_outcome or _outcome(status), status,
              current.audit_client_ids, after_error=True)
        raise
    except Exception:
        audit(action, "error", 500, current.audit_client_ids, after_error=True)
        raise
    audit(action, current.audit_outcome or "ok", 200, current.audit_client_ids)
    return result


def _forget_claims() -> None:
    """Drop what turned out stale, in the cache and in this request's state."""
    current = state()
    if current.token_digest is not None:
        forget_claims(read_cache(), current.token_digest)
    current.caller = current.publication_claim = current.audit_outcome = None
    current.audit_client_ids = ()
    current.disclosure = {}


def forget_claims(cache: ReadCache, token_digest: str) -> None:
    """The caller and every publication are read again from the database."""
    cache.callers.pop(token_digest)
    cache.publications.clear()


def _permitted(who: Caller, permission: str) -> bool:
    if permission == CLIENT_DATA:
        return who.reads_client_data
    if permission == OPERATIONS:
        return who.reads_operations
    return permission == ANY


def _outcome(status: int) -> str:
    return {404: "not_found", 400: "bad_request"}.get(status, "error")
