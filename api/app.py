"""The application factory."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

from retention.api import fhir, openapi, operations, routes
from retention.api.auth import register_request_ids
from retention.api.cache import ReadCache
from retention.api.connections import RequestConnections
from retention.api.errors import register_errorhandlers
from retention.api.fastpath import register_fast_path
from retention.api.metrics import register_metrics
from retention.api.ratelimit import build_limiter
from retention.api.web import register_web
from retention.db.engines import store_engine
from retention.settings import Settings, load_settings


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    """Build the API: settings from the entry point (or the config file), engines per app.

    ``overrides`` go into ``app.config`` last, so tests can set TESTING or a
    clock without patching globals.
    """
    app = Flask(__name__)
    # "//" must not redirect: an empty client id is a 404 like any other unknown one.
    app.url_map.merge_slashes = False
    app.config["JSON_SORT_KEYS"] = False
    app.json.sort_keys = False  # type: ignore[attr-defined]
    settings = settings or load_settings()
    app.config.update(overrides)
    register_extensions(app, settings)
    register_request_ids(app)
    register_metrics(app)
    register_blueprints(app)
    # The case managers' pages; their session secret comes from the config or environment.
    register_web(app, os.environ)
    register_errorhandlers(app)
    register_fast_path(app)
    return app


def register_extensions(app: Flask, settings: Settings) -> None:
    """Engines, request connections, the rate-limit counter and the read cache: per app,
    so per worker after fork."""
    engine = store_engine(settings.store_url)
    app.extensions["retention"] = {
        "settings": settings,
        "store": engine,
        "connections": RequestConnections(engine),
        "limiter": build_limiter(settings.api_rate_limit_storage,
                                 settings.api_rate_limit_per_minute),
        "cache": ReadCache(),
    }


def register_blueprints(app: Flask) -> None:
    for blueprint in (routes.bp, operations.bp, fhir.bp, openapi.bp):
        app.register_blueprint(blueprint)
