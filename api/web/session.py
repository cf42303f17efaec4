"""Sessions for the pages: the signing secret, cookie settings, CSRF, sign-in state and audit.

The cookie is Flask's signed session holding the key id, when it was signed in and a
CSRF token; nothing else. Every request looks the key up again (a revoked key ends
the session), every form carries the CSRF token, and every read of client data is
audited before the page is sent; if the audit cannot be written the page is refused.
"""

from __future__ import annotations

import functools
import hmac
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from flask import Flask, redirect, request, session, url_for
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from retention.access.audit import audit_record, write_audit
from retention.access.keys import Caller, page_caller
from retention.api.errors import Problem
from retention.api.services import services, state

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
SECRET_ENV = "RETENTION_SECRET_KEY"
INSECURE_COOKIE_ENV = "RETENTION_INSECURE_COOKIES"
MIN_SECRET_LENGTH = 32
# A signed-in session lasts a working day, then the key is asked for again.
SESSION_SECONDS = 10 * 3600
CSRF_FIELD = "csrf_token"


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
    """Start a fresh session for ``caller`` (a new CSRF token too: no fixation)."""
    session.clear()
    session["key_id"] = caller.key_id
    session["at"] = int(services().clock.now().timestamp())
    session["csrf"] = secrets.token_urlsafe(32)


def signed_in_caller() -> Caller | None:
    """The caller of this session if it is young enough and its key still valid."""
    key_id, at = session.get("key_id"), session.get("at", 0)
    if not key_id or services().clock.now().timestamp() - float(at) > SESSION_SECONDS:
        return None
    try:
        with _store().connect() as conn:
            return page_caller(conn, str(key_id))
    except SQLAlchemyError:
        log.error("key lookup failed for request %s", state().request_id)
        raise Problem(503, "The service database cannot be read; try again shortly.",
                      "Service unavailable") from None


def audit(action: str, outcome: str, status: int, client_ids: Iterable[str] = (),
          who: Caller | None = None, key_id: str | None = None) -> None:
    """Append the audit record now; if it cannot be written, refuse the page."""
    record = audit_record(action, outcome, status, request_id=state().request_id,
                          remote_addr=request.remote_addr, caller=who, key_id=key_id,
                          client_ids=client_ids, at=services().clock.now())
    try:
        with _store().begin() as conn:
            write_audit(conn, record)
    except SQLAlchemyError:
        log.error("audit write failed for request %s (%s); refusing the page",
                  state().request_id, action)
        raise Problem(503, "The audit trail cannot be written, so no client data is shown. "
                      "Try again shortly or ask the operator to check the service database.",
                      "Audit unavailable") from None


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
            ended = "key_id" in session
            session.pop("key_id", None)
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
