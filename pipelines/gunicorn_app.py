"""Run the API under gunicorn from Python, with the app built in each worker after fork."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from retention.config import Settings


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
        from api import create_app

        return create_app(self._settings)


def run_gunicorn(settings: Settings, host: str, port: int, workers: int) -> None:
    """Serve until interrupted."""
    _Server(settings, {
        "bind": f"{host}:{port}",
        "workers": workers,
        "preload_app": False,
        "accesslog": None,
        "timeout": 60,
    }).run()
