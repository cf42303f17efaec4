"""What the app's requests share, as one typed object; and what one request carries.

``Services`` is built once per app by the factory (so once per gunicorn worker, after
the fork): settings, clock, store engine, request connections, rate limiter, read
cache and metrics. A test builds the app with its own settings and clock instead of
patching globals. ``RequestState`` is everything one request learns on its way
(its id, its connection, its caller, what the audit record will say), kept on
``flask.g`` under one name.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from flask import Flask, current_app, g
from prometheus_client import CollectorRegistry
from sqlalchemy import Connection, Engine

from retention.access.consent import Policy, Verdict
from retention.access.keys import Caller
from retention.api.cache import ReadCache
from retention.api.connections import RequestConnections
from retention.api.ratelimit import RateLimiter
from retention.clock import Clock
from retention.reasons.catalogue import Catalogue
from retention.settings import Settings

EXTENSION = "retention"


class RequestRecorder(Protocol):
    """Counts requests by route template, method and status (``metrics.RequestMetrics``)."""

    def observe(self, route: str, method: str, status: int, seconds: float) -> None: ...


@dataclass
class Services:
    """One per app, so one per gunicorn worker."""

    settings: Settings
    clock: Clock
    # The reason catalogue: its thresholds are what the pages' glossary explains.
    catalogue: Catalogue
    store: Engine
    connections: RequestConnections
    limiter: RateLimiter
    cache: ReadCache
    metrics: CollectorRegistry
    request_metrics: RequestRecorder
    # Whether the case managers' pages can sign people in (a session secret is set).
    web_pages: bool = False


def install(app: Flask, found: Services) -> None:
    app.extensions[EXTENSION] = found


def services_of(app: Flask) -> Services:
    found: Services = app.extensions[EXTENSION]
    return found


def services() -> Services:
    """The current app's services (inside a request or app context)."""
    return services_of(current_app)


@dataclass
class RequestState:
    """What one request has learned so far; ``state()`` returns the current request's."""

    request_id: str
    started: float = field(default_factory=time.perf_counter)
    # The request's one store connection, once taken (``auth.connection``).
    db: Connection | None = None
    # The authenticated caller, and what a presented key claimed before it was checked.
    caller: Caller | None = None
    claimed_key_id: str | None = None
    token_digest: str | None = None
    # The published list the response is built from, and whether it was the latest.
    publication_claim: tuple[dict[str, Any], bool] | None = None
    # What the audit record of this request will say about the data returned.
    audit_client_ids: tuple[str, ...] = ()
    audit_outcome: str | None = None
    # An outside recipient's consent verdicts, by client (``auth.disclosable``).
    disclosure: dict[str, Verdict] = field(default_factory=dict)
    # Taken once, so every read and check of the request sees the same moment.
    consent_policy: Policy | None = None


STATE = "retention_request"


def begin_request(request_id: str) -> RequestState:
    """Start the current request's state (the first hook of every request)."""
    found = RequestState(request_id)
    setattr(g, STATE, found)
    return found


def state() -> RequestState:
    """The current request's state."""
    found: RequestState = getattr(g, STATE)
    return found


def state_or_none() -> RequestState | None:
    """The current request's state, if a request got as far as having one."""
    found: RequestState | None = g.get(STATE)
    return found
