"""The case managers' pages: server-rendered HTML under /web, signed in with an access key."""

from __future__ import annotations

from collections.abc import Mapping

from flask import Flask

from retention.api.services import services_of
from retention.api.web.session import configure_sessions
from retention.api.web.views import bp


def register_web(app: Flask, environ: Mapping[str, str]) -> None:
    """Configure the session cookie and add the pages (off, with an error logged, if no secret)."""
    services_of(app).web_pages = configure_sessions(app, environ)
    app.register_blueprint(bp)
