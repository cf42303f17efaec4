"""Run the API under gunicorn from Python, with the app built in each worker after fork.

The scheduler never runs here: web workers only serve. Prometheus samples from every
worker go to one directory so a scrape of any worker reports them all.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from gunicorn.app.base import BaseApplication
from prometheus_client import multiprocess, values

from retention.api import create_app
from retention.settings import Settings


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
    multiprocess.mark_process_dead(worker.pid)


def gunicorn_options(host: str, port: int, workers: int) -> dict[str, Any]:
    """The production settings (the benchmark serves its bare endpoint with the same)."""
    return {
        "bind": f"{host}:{port}",
        "workers": workers,
        "preload_app": False,
        "accesslog": None,
        "timeout": 60,
        "child_exit": _child_exit,
    }


def run_gunicorn(settings: Settings, host: str, port: int, workers: int) -> None:
    """Serve until interrupted."""
    metrics_dir = tempfile.mkdtemp(prefix="retention-metrics-")
    # prometheus_client reads this in every worker; set before the workers fork.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        _Server(settings, gunicorn_options(host, port, workers)).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
