"""The application factory."""

from __future__ import annotations

from typing import Any

from flask import Flask

from api.errors import register_errorhandlers
from api.routes import bp as v1
from retention.config import Settings, load_settings
from retention.db import store_engine


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    """Build the API: settings from the entry point (or the config file), engines per app.

    ``overrides`` go into ``app.config`` last, so tests can set TESTING or a
    clock without patching globals.
    """
    app = Flask(__name__)
    app.config["JSON_SORT_KEYS"] = False
    app.json.sort_keys = False  # type: ignore[attr-defined]
    settings = settings or load_settings()
    app.config.update(overrides)
    register_extensions(app, settings)
    register_blueprints(app)
    register_errorhandlers(app)
    return app


def register_extensions(app: Flask, settings: Settings) -> None:
    """Engines are made here, per app (and so per worker after fork), never at import."""
    app.extensions["retention"] = {"settings": settings, "store": store_engine(settings.store_url)}


def register_blueprints(app: Flask) -> None:
    app.register_blueprint(v1)
