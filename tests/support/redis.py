"""Redis for tests: the shared server for counting, a private server for anything rougher.

The root conftest registers this module as a plugin.

- ``redis_url`` (function): the shared server on this machine (``RETENTION_TEST_REDIS_URL``,
  default ``redis://127.0.0.1:6379/15``), or a skip; with ``CI`` set an unreachable
  server fails the run. Tests use keys of their own there and nothing that touches
  the whole server (no FLUSH, no SCRIPT FLUSH, no CLIENT KILL).
- ``private_redis`` (function): a ``redis-server`` this test starts on a free port in
  its own directory, for flushing scripts, killing clients, restarts and outages;
  stopped after the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.support.apps import free_port

SHARED_URL = os.environ.get("RETENTION_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _unavailable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message + " (CI requires it; .ci/run starts it)", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def redis_url() -> str:
    """The shared Redis server's URL (tests keep to keys of their own there)."""
    try:
        redis.Redis.from_url(SHARED_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        _unavailable(f"Redis at {SHARED_URL} does not answer: {exc}")
    return SHARED_URL


@dataclass
class PrivateRedis:
    """A Redis server of the test's own: start, stop and restart it at will."""

    directory: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            _unavailable("redis-server is not installed (Debian package redis-server)")
            return
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
        self.stop()
        pytest.fail(f"a private redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test's own on a free port, stopped after the test."""
    server = PrivateRedis(tmp_path, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
