"""Run the API under gunicorn from Python, with the app built in each worker after fork.

The scheduler never runs here: web workers only serve. Prometheus samples from every
worker go to one directory so a scrape of any worker reports them all; only the
master removes it, so a reload or a worker restart costs no request. What gunicorn
answers itself (a request line or headers too large, a request it cannot parse, a
worker stopped mid-request) is problem JSON like the app's answers, and control
characters in every log line, gunicorn's and the service's, are escaped.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger
from gunicorn.workers.sync import SyncWorker
from prometheus_client import multiprocess, values

from retention.api import create_app
from retention.api.app import SECURITY_HEADERS
from retention.api.errors import PROBLEM_TYPE
from retention.api.ratelimit import counts_per_process
from retention.settings import ConfigError, Settings


class _Server(BaseApplication):
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self._settings = settings
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # Called in each worker (preload_app is off): engines are made after fork.
        # The master may have imported prometheus_client before the directory was set.
        values.ValueClass = values.get_value_class()

        return create_app(self._settings)


def _child_exit(_server: Any, worker: Any) -> None:
    """In the master: an exited worker's live gauges leave the scrape; its counts stay."""
    multiprocess.mark_process_dead(worker.pid)


# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: anything a
# log reader may take for the end of a line or a terminal command.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """``text`` with each control character written as its escape (``\\n``, ``\\x00``)."""
    return CONTROL_CHARACTERS.sub(
        lambda m: (
            _NAMED.get(m[0])
            or (f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}")
        ),
        text,
    )


class EscapeControls(logging.Filter):
    """On a handler: a value a client sent (a path with ``%0A`` in it, a header) cannot
    start a log line of its own. Tracebacks are formatted after this and keep their lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        escaped = escape_controls(message)
        if escaped != message:
            record.msg, record.args = escaped, None
        return True


ESCAPE_CONTROLS = EscapeControls()


def escape_log_lines(*loggers: logging.Logger) -> None:
    """Escape control characters in whatever these loggers' handlers write."""
    for logger in loggers:
        for handler in logger.handlers:
            handler.addFilter(ESCAPE_CONTROLS)  # once: addFilter ignores a repeat


class ServiceLogger(Logger):
    """gunicorn's logger; its lines, the access log's and the root handlers' are escaped.

    ``setup`` runs again on every reload (HUP), with new handlers.
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        escape_log_lines(self.error_log, self.access_log, logging.getLogger())


# What a client is told when gunicorn refuses its request before the app sees it.
GUNICORN_DETAILS = {
    400: "The request could not be read as HTTP/1.1.",
    414: "The request line is longer than the server accepts.",
    431: "The request has more header fields, or longer ones, than the server accepts.",
    500: "The server could not complete the request; it has been logged.",
}
STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ([^\r\n]*)")


def problem_response(written: bytes) -> bytes:
    """gunicorn's HTML error response rewritten as problem JSON with the same status."""
    match = STATUS_LINE.match(written)
    status, title = (
        (int(match[1]), match[2].decode("latin-1")) if match else (500, "Internal Server Error")
    )
    body = json.dumps(
        {
            "type": PROBLEM_TYPE,
            "title": title,
            "status": status,
            "detail": GUNICORN_DETAILS.get(status, title),
        }
    ).encode()
    head = [
        f"HTTP/1.1 {status} {title}",
        "Connection: close",
        "Content-Type: application/problem+json",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in SECURITY_HEADERS),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class _ProblemSocket:
    """The client's socket as gunicorn's error handler sees it: the one response it
    writes there, an HTML page, goes out as problem JSON."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(problem_response(data))


class ProblemJSONWorker(SyncWorker):
    """gunicorn's sync worker, whose own error answers are problem JSON (RFC 9457)."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        super().handle_error(req, _ProblemSocket(client), addr, exc)


def gunicorn_options(
    host: str, port: int, workers: int, access_log: str | None = None
) -> dict[str, Any]:
    """The production settings (the benchmark serves its bare endpoint with the same).

    gunicorn's request limits stay at its defaults (request line 4094 bytes, 100 header
    fields of 8190 bytes); what it refuses is answered as problem JSON.
    """
    return {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": ProblemJSONWorker,
        "logger_class": ServiceLogger,
        "preload_app": False,
        "accesslog": access_log,
        "timeout": 60,
        "child_exit": _child_exit,
    }


def check_workers(settings: Settings, workers: int) -> None:
    """Refuse per-process rate limits with several workers: each would count on its own."""
    if workers > 1 and counts_per_process(settings.api_rate_limit_storage):
        raise ConfigError(
            f"api_rate_limit_storage is {settings.api_rate_limit_storage!r}, counted in each "
            f"process: {workers} workers would let {workers} times "
            f"api_rate_limit_per_minute through. Set api_rate_limit_storage to a Redis URL "
            "(redis://host:6379/0) that every worker shares, or serve with --workers 1."
        )


def run_gunicorn(
    settings: Settings, host: str, port: int, workers: int, access_log: str | None = None
) -> None:
    """Serve until interrupted."""
    check_workers(settings, workers)
    metrics_dir = tempfile.mkdtemp(prefix="retention-metrics-")
    # prometheus_client reads this in every worker; set before the workers fork.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    master = os.getpid()
    try:
        _Server(settings, gunicorn_options(host, port, workers, access_log)).run()
    finally:
        # Workers are forked inside run() and leave it through here too (SystemExit):
        # only the master may remove the directory the others still write to.
        if os.getpid() == master:
            shutil.rmtree(metrics_dir, ignore_errors=True)
