"""Every error as RFC 9457 problem JSON (under /fhir, a FHIR OperationOutcome): no HTML
pages, no stack traces."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException, UnsupportedMediaType

from retention.db.errors import is_transient

log = logging.getLogger(__name__)

PROBLEM_TYPE = "about:blank"
# Sent with every 503: long enough for a lock to clear or a dependency to come back,
# short enough that an EHR's next poll is not delayed much.
RETRY_AFTER_SECONDS = 5


class Problem(HTTPException):
    """An error with a specific detail for the client (status set per instance)."""

    def __init__(self, status: int, detail: str, title: str | None = None) -> None:
        super().__init__(description=detail)
        self.code = status
        self.title = title
        self.headers: dict[str, str] = {}

    def get_headers(self, *args: Any, **kwargs: Any) -> list[tuple[str, str]]:
        return [*super().get_headers(*args, **kwargs), *self.headers.items()]


# FHIR clients read errors as an OperationOutcome (issue type per status), not problem+json.
FHIR_ISSUE_TYPES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found",
                    405: "not-supported", 406: "not-supported", 415: "not-supported",
                    429: "throttled", 500: "exception", 503: "transient"}


def is_fhir(path: str) -> bool:
    return path == "/fhir" or path.startswith("/fhir/")


def operation_outcome(status: int, detail: str) -> Response:
    """An OperationOutcome with one error issue: what every error under /fhir is."""
    code = FHIR_ISSUE_TYPES.get(status, "exception" if status >= 500 else "processing")
    response = jsonify({"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": code, "diagnostics": detail}]})
    response.status_code = status
    response.mimetype = "application/fhir+json"
    return response


def problem(status: int, title: str, detail: str) -> Response:
    """A problem+json response (an OperationOutcome under /fhir)."""
    if is_fhir(request.path):
        return operation_outcome(status, detail)
    body = {"type": PROBLEM_TYPE, "title": title, "status": status, "detail": detail,
            "instance": request.path}
    response = jsonify(body)
    response.status_code = status
    response.mimetype = "application/problem+json"
    return response


def register_errorhandlers(app: Flask) -> None:
    """Turn HTTP errors and unexpected exceptions into problem JSON."""

    @app.before_request
    def refuse_bodies_that_are_not_json() -> None:
        # A body, if sent at all, must be JSON; but the case managers' pages (blueprint
        # "web") post HTML forms, and an OAuth token request is form-encoded (RFC 6749).
        if request.blueprint in ("web", "oauth"):
            return
        if request.content_length and request.mimetype not in ("application/json", ""):
            raise UnsupportedMediaType(
                f"request bodies must be application/json, got {request.mimetype}")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        title = getattr(exc, "title", None) or exc.name
        response = problem(status, title, exc.description or title)
        original = exc.get_response().headers
        for header in ("Allow", "Retry-After", "WWW-Authenticate"):
            if original.get(header):
                response.headers[header] = original[header]
        if status == 503 and "Retry-After" not in response.headers:
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response

    @app.errorhandler(SQLAlchemyError)
    def store_error(exc: SQLAlchemyError) -> Response:
        # Down, timed out (statement_timeout, lock_timeout), locked or out of connections:
        # worth a retry (503). A statement the store refuses is a bug (500).
        if not is_transient(exc):
            return unexpected(exc)
        # The type and route only: the message may quote the statement's values.
        cause = getattr(exc, "orig", None) or exc
        log.error("store unavailable (%s) on %s %s", type(cause).__name__, request.method,
                  request.path)
        response = problem(503, "Store unavailable", "The service database did not answer "
                           "in time; nothing was returned. Retry later.")
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        # Log the type and route only: the message may carry client data.
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.path)
        return problem(500, "Internal Server Error",
                       "The server could not complete the request; it has been logged.")
