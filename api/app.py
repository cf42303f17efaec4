"""The application factory: a list of small named steps, nothing configured at import."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flask import Flask
from prometheus_client import CollectorRegistry

from retention.api import cds_hooks, fhir, oauth, openapi, operations, routes
from retention.api.auth import register_request_guards, register_request_ids
from retention.api.cache import ReadCache
from retention.api.connections import RequestConnections
from retention.api.errors import register_errorhandlers
from retention.api.fastpath import register_fast_path
from retention.api.metrics import RequestMetrics, register_metrics
from retention.api.ratelimit import build_limiter
from retention.api.services import Services, install
from retention.api.web import register_web
from retention.clock import Clock, SystemClock
from retention.db.engines import store_engine
from retention.reasons.catalogue import load_catalogue
from retention.settings import Settings, load_settings

# Every response: never sniffed as another type; never stored by a cache (lists, risks
# and FHIR bundles hold client data), unless the response says otherwise (static files).
SECURITY_HEADERS = (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"))
_HEADER_NAMES = tuple(name.lower() for name, _ in SECURITY_HEADERS)


class ApiFlask(Flask):
    """Flask, with the security headers added outside every WSGI layer.

    Outside ``app.wsgi_app``, so the cached-list path (``api.fastpath``) and Flask's
    own answers get them alike, and the test client sees what gunicorn sends.
    """

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            present = {name.lower() for name, _ in headers}
            headers.extend(h for h, name in zip(SECURITY_HEADERS, _HEADER_NAMES, strict=True)
                           if name not in present)
            return start_response(status, headers, *exc_info)

        return self.wsgi_app(environ, start)


def create_app(settings: Settings | None = None, clock: Clock | None = None,
               environ: Mapping[str, str] | None = None, **overrides: Any) -> Flask:
    """Build the API and the pages: settings and clock from the entry point, engines per app.

    ``overrides`` go into ``app.config`` last, so tests can set TESTING without
    patching globals; they hand in a fixed ``clock`` the same way. ``environ``
    (default: the process's) holds the pages' session secret and the metrics
    directory gunicorn sets.
    """
    app = ApiFlask(__name__)
    # "//" must not redirect: an empty client id is a 404 like any other unknown one.
    app.url_map.merge_slashes = False
    app.config["JSON_SORT_KEYS"] = False
    app.json.sort_keys = False  # type: ignore[attr-defined]
    settings = settings or load_settings()
    environ = os.environ if environ is None else environ
    app.config.update(overrides)
    register_services(app, settings, clock or SystemClock())
    register_request_ids(app)
    register_metrics(app, environ.get("PROMETHEUS_MULTIPROC_DIR"))
    register_blueprints(app)
    # The case managers' pages; their session secret comes from the config or environment.
    register_web(app, environ)
    register_errorhandlers(app)
    register_fast_path(app)
    # Last: ProxyFix (trusted_proxies) wraps every WSGI layer; control characters refused.
    register_request_guards(app)
    return app


def register_services(app: Flask, settings: Settings, clock: Clock) -> None:
    """Engines, request connections, the rate limiter, the read cache and the metrics
    registry: per app, so per worker after fork."""
    engine = store_engine(settings.store_url, settings.api_statement_timeout_seconds,
                          settings.api_lock_timeout_seconds)
    registry = CollectorRegistry()
    install(app, Services(
        settings=settings,
        clock=clock,
        catalogue=load_catalogue(settings.reasons_file, settings.instruments),
        store=engine,
        connections=RequestConnections(engine),
        limiter=build_limiter(settings.api_rate_limit_storage,
                              settings.api_rate_limit_per_minute,
                              lambda: clock.now().timestamp()),
        cache=ReadCache(),
        metrics=registry,
        request_metrics=RequestMetrics(registry),
    ))


def register_blueprints(app: Flask) -> None:
    for blueprint in (routes.bp, operations.bp, fhir.bp, openapi.bp, cds_hooks.bp):
        app.register_blueprint(blueprint)
    # SMART Backend Services: the token endpoint and the authorization server behind it.
    oauth.register_oauth(app)
