"""WSGI entry point for a server started some other way: ``gunicorn 'retention.api.wsgi:app'``.

``retention serve`` is the supported way to run gunicorn: it answers gunicorn's own
errors as problem JSON, escapes control characters in every log line, removes the
metrics directory from the master only, and refuses ``memory://`` rate limits with
several workers. A server started otherwise gets none of that; the worker count is
not known here, so a per-process rate limit is only warned about, in every worker.
"""

from __future__ import annotations

import logging

from flask import Flask

from retention.api import create_app
from retention.api.ratelimit import counts_per_process
from retention.settings import Settings, load_settings

log = logging.getLogger(__name__)


def build(settings: Settings | None = None) -> Flask:
    """The app from the deployment's settings, warning when rate limits are per process."""
    settings = settings or load_settings()
    if counts_per_process(settings.api_rate_limit_storage):
        log.warning(
            "api_rate_limit_storage is %r: each worker process counts on its own, so N "
            "workers let N times api_rate_limit_per_minute through; set a Redis URL that "
            "every worker shares, or run one worker (or use `retention serve`)",
            settings.api_rate_limit_storage,
        )
    return create_app(settings)


app = build()
