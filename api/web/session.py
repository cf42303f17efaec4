"""Sessions for the pages: the signing secret, cookie settings, CSRF, sign-in state and audit.

The cookie is Flask's signed session holding a session id and a CSRF token; nothing
else. The session itself is the store's (``access.sessions``): signing out ends it for
every copy of the cookie, and it ends after ``web_session_idle_minutes`` without a page
or ``web_session_max_hours`` after sign-in. Every request looks the session and its key
up again (a revoked or expired key ends it), every form carries the CSRF token, and
every read of client data is audited before the page is sent; if the audit cannot be
written the page is refused.
"""

from __future__ import annotations

import functools
import hmac
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from flask import Flask, redirect, request, session, url_for
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from retention.access.audit import AuditRecord, audit_record, write_audit
from retention.access.keys import Caller, page_caller
from retention.access.sessions import end_session, resume_session, start_session
from retention.api.errors import Problem
from retention.api.services import services, state

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
SECRET_ENV = "RETENTION_SECRET_KEY"
INSECURE_COOKIE_ENV = "RETENTION_INSECURE_COOKIES"
MIN_SECRET_LENGTH = 32
CSRF_FIELD = "csrf_token"
# The cookie's name for the store's session id.
SESSION_ID = "sid"


class WebConfigError(RuntimeError):
    """The pages cannot run safely with this configuration."""


def configure_sessions(app: Flask, environ: Mapping[str, str]) -> bool:
    """Set the signing secret and cookie flags; returns whether the pages can sign people in.

    The secret comes from the app's config (tests, the demo) or ``RETENTION_SECRET_KEY``.
    Under TESTING or WEB_DEV (``retention serve --dev``) a random per-process secret
    stands in: one process, so nothing needs to share it. Otherwise a missing secret
    switches the pages off, with a start-up error in the log and on every page: each
    gunicorn worker would otherwise sign with its own key and sessions would break.
    """
    dev = bool(app.config.get("TESTING") or app.config.get("WEB_DEV"))
    secret = app.config.get("SECRET_KEY") or environ.get(SECRET_ENV)
    if not secret and dev:
        secret = secrets.token_urlsafe(48)
    if not secret:
        log.error("case managers' pages are off: %s is not set (set one random value, "
                  "shared by every worker)", SECRET_ENV)
        return False
    if len(secret) < MIN_SECRET_LENGTH:
        raise WebConfigError(f"{SECRET_ENV} must be at least {MIN_SECRET_LENGTH} characters "
                             "of random text, e.g. from `python -c 'import secrets; "
                             "print(secrets.token_urlsafe(48))'`")
    insecure = dev or environ.get(INSECURE_COOKIE_ENV) == "1"
    app.config.update(
        SECRET_KEY=secret,
        SESSION_COOKIE_NAME="retention_session",
        SESSION_COOKIE_PATH="/web",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=not insecure,
    )
    return True


def _store() -> Engine:
    return services().store


def csrf_token() -> str:
    """The session's CSRF token, made on first use (also before sign-in: the sign-in form)."""
    token = session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return str(token)


def check_csrf() -> None:
    """Refuse a form post without this session's token, or sent from another site."""
    origin = request.headers.get("Origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.host:
        raise Problem(403, "This form was sent from another site; open the page again "
                      "and resubmit it.", "Form refused")
    expected, given = session.get("csrf"), request.form.get(CSRF_FIELD, "")
    if not expected or not hmac.compare_digest(str(expected), given):
        raise Problem(400, "The form had expired or was not sent from this page. "
                      "Open the page again and resubmit it.", "Form expired")


def sign_in(caller: Caller) -> None:
    """Start a session for ``caller`` in the store and audit the sign-in, in one transaction
    (no session without its record); then a fresh cookie (a new CSRF token: no fixation)."""
    now = services().clock.now()
    record = page_record("web.sign_in", "ok", 200, who=caller)
    try:
        with _store().begin() as conn:
            write_audit(conn, record)
            session_id = start_session(conn, caller.key_id, now)
    except SQLAlchemyError:
        raise _audit_unavailable(record.action) from None
    session.clear()
    session[SESSION_ID] = session_id
    session["csrf"] = secrets.token_urlsafe(32)


def signed_in_caller() -> Caller | None:
    """The caller of this browser's session if the store still holds it live (not signed
    out, not idle or old past the limits) and its key may still use the pages.

    A session whose key was revoked, expired or lost its role is ended there and then.
    """
    session_id = session.get(SESSION_ID)
    if not session_id:
        return None
    settings, now = services().settings, services().clock.now()
    try:
        with _store().begin() as conn:
            key_id = resume_session(conn, str(session_id), now,
                                    timedelta(minutes=settings.web_session_idle_minutes),
                                    timedelta(hours=settings.web_session_max_hours))
            who = page_caller(conn, key_id, now) if key_id is not None else None
            if key_id is not None and who is None:
                end_session(conn, str(session_id), now, reason="key_refused")
            return who
    except SQLAlchemyError:
        log.error("session lookup failed for request %s", state().request_id)
        raise Problem(503, "The service database cannot be read; try again shortly.",
                      "Service unavailable") from None


def sign_out(who: Caller) -> bool:
    """End this browser's session in the store and audit it, in one transaction; clear the
    cookie. Returns whether the sign-out was audited.

    If the audit cannot be written the session is still ended, on its own: a session left
    live because the trail was down is worse than a sign-out without its record (which
    is logged). Raises Problem 503 only if the store cannot end the session at all.
    """
    session_id, now = str(session.get(SESSION_ID, "")), services().clock.now()
    session.clear()
    try:
        with _store().begin() as conn:
            write_audit(conn, page_record("web.sign_out", "ok", 200, who=who))
            end_session(conn, session_id, now)
        return True
    except SQLAlchemyError:
        log.error("audit write failed for request %s (web.sign_out); ending the session "
                  "without its record", state().request_id)
    try:
        with _store().begin() as conn:
            end_session(conn, session_id, now)
    except SQLAlchemyError:
        log.error("session end failed for request %s", state().request_id)
        raise Problem(503, "The service database cannot be reached, so the sign-out could "
                      "not be completed. This browser has forgotten the session; close it, "
                      "and try signing out again shortly.", "Service unavailable") from None
    return False


def page_record(action: str, outcome: str, status: int, client_ids: Iterable[str] = (),
                who: Caller | None = None, key_id: str | None = None) -> AuditRecord:
    """The audit record of this page request."""
    return audit_record(action, outcome, status, request_id=state().request_id,
                        remote_addr=request.remote_addr, caller=who, key_id=key_id,
                        client_ids=client_ids, at=services().clock.now())


def _audit_unavailable(action: str) -> Problem:
    log.error("audit write failed for request %s (%s); refusing the page",
              state().request_id, action)
    return Problem(503, "The audit trail cannot be written, so no client data is shown. "
                   "Try again shortly or ask the operator to check the service database.",
                   "Audit unavailable")


def audit(action: str, outcome: str, status: int, client_ids: Iterable[str] = (),
          who: Caller | None = None, key_id: str | None = None,
          conn: Connection | None = None) -> None:
    """Append the audit record now; if it cannot be written, refuse the page.

    With ``conn`` the record joins that transaction, so what the request changed is
    committed with its record or not at all.
    """
    record = page_record(action, outcome, status, client_ids, who, key_id)
    try:
        if conn is not None:
            write_audit(conn, record)
            return
        with _store().begin() as own:
            write_audit(own, record)
    except SQLAlchemyError:
        raise _audit_unavailable(action) from None


def _rate_limit(who: Caller) -> None:
    try:
        verdict = services().limiter.check(who.key_id)
    except Exception:  # the counter store is down: fail closed, say so
        raise Problem(503, "The service is busy; try again shortly.",
                      "Service unavailable") from None
    if not verdict.allowed:
        raise Problem(429, f"Too many pages opened in a minute; wait {verdict.retry_after} "
                      "seconds and try again.", "Too many requests")


def signed_in(view: F) -> F:
    """Run the view for a signed-in case manager or administrator; otherwise to sign-in."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not services().web_pages:
            raise Problem(503, f"Sign-in is not configured: the operator must set {SECRET_ENV}.",
                          "Pages unavailable")
        who = signed_in_caller()
        if who is None:
            ended = SESSION_ID in session
            session.pop(SESSION_ID, None)
            target = url_for("web.sign_in_form", ended=1 if ended else None,
                             next=request.full_path if request.method == "GET" else None)
            return redirect(target, 303)
        _rate_limit(who)
        if request.method == "POST":
            check_csrf()
        state().caller = who
        return view(*args, **kwargs)

    return cast(F, wrapped)


def safe_next(target: str | None, default: str) -> str:
    """Follow ``next`` only to a page of this site (no open redirect)."""
    if target and target.startswith("/web/") and not target.startswith("//") \
            and "\\" not in target:
        return target
    return default
