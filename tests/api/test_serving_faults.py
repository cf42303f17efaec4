"""Serving under faults, against real gunicorn processes, PostgreSQL and Redis.

A reload (HUP) and a worker stopped (TERM) cost no request; a locked table gets a
quick 503 problem JSON with Retry-After instead of a worker held for a minute;
gunicorn's own refusals are problem JSON; control characters a client sends do not
start lines in the access log; per-process rate limits with several workers are
refused at start.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import psycopg
import pytest
from gunicorn.config import Config
from sqlalchemy import create_engine

from retention.pipelines.gunicorn_app import ESCAPE_CONTROLS, ServiceLogger, problem_response
from tests.conftest import REPO, Scored
from tests.support.apps import copy_list, free_port, make_key
from tests.support.pg import libpq

RETENTION = [sys.executable, "-m", "retention.pipelines.cli"]
PROBLEM = "application/problem+json"
# Generous: two shared cores, and other engineers' tests running beside these.
START_SECONDS = 120
WAIT_SECONDS = 90


@dataclass
class Served:
    """A ``retention serve`` process (the gunicorn master) and what was sent to it."""

    proc: subprocess.Popen[bytes]
    port: int
    output: Path
    token: str
    sent: Counter[tuple[str, int]] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(
        self,
        path: str,
        keyed: bool = True,
        headers: dict[str, str] | None = None,
        timeout: float = 20,
    ) -> tuple[int, dict[str, str], bytes, float]:
        """Status, headers, body and seconds of one GET on a new connection."""
        sent = {"Authorization": f"Bearer {self.token}"} if keyed else {}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        started = time.monotonic()
        try:
            conn.request("GET", path, headers={**sent, **(headers or {})})
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        with self.lock:
            self.sent[(path, response.status)] += 1
        return (
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            body,
            time.monotonic() - started,
        )

    def workers(self) -> set[int]:
        """The master's live children: its workers."""
        found = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == self.proc.pid and stat[0] != "Z":
                found.add(int(entry.name))
        return found

    def log(self) -> str:
        return self.output.read_text(errors="replace")


def wait_for(what: str, done: Callable[[], bool], seconds: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {seconds} s for {what}")
        time.sleep(0.1)


@pytest.fixture
def pg_store(scored: Scored, pg_url: str) -> tuple[str, str]:
    """A PostgreSQL store of this test's own with the scored list, and an admin key."""
    copy_list(scored.store, pg_url)
    engine = create_engine(pg_url)
    token = make_key(engine, "admin")
    engine.dispose()
    return pg_url, token


def write_config(path: Path, scored: Scored, store_url: str, **extra: object) -> Path:
    values = {
        "source_url": scored.settings.source_url,
        "store_url": store_url,
        "models_dir": str(scored.settings.models_dir),
        "reasons_file": str(scored.settings.reasons_file),
        **extra,
    }
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    return path


@pytest.fixture
def serve(scored: Scored, tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start ``retention serve`` over a store; every server started is stopped after."""
    started: list[Served] = []

    def start(store_url: str, token: str, *args: str, **settings: object) -> Served:
        config = write_config(tmp_path / f"cfg{len(started)}.toml", scored, store_url, **settings)
        port = free_port()
        output = tmp_path / f"server{len(started)}.log"
        with output.open("wb") as sink:
            proc = subprocess.Popen(
                [*RETENTION, "--config", str(config), "serve", "--port", str(port), *args],
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        served = Served(proc, port, output, token)
        started.append(served)

        last: list[object] = []

        def answers() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"the server exited: {served.log()[-3000:]}")
            try:
                status, _, body, _ = served.get("/health", keyed=False, timeout=5)
            except OSError as exc:
                last[:] = [exc]
                return False
            last[:] = [status, body[:500]]
            return status == 200

        try:
            wait_for("the server to answer /health", answers, START_SECONDS)
        except pytest.fail.Exception:
            pytest.fail(
                f"no 200 from /health in {START_SECONDS} s (last: {last}); "
                f"server log: {served.log()[-3000:]}"
            )
        return served

    yield start
    for served in started:
        if served.proc.poll() is None:
            served.proc.terminate()
        try:
            served.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            served.proc.kill()
            served.proc.wait(timeout=30)


class Load(threading.Thread):
    """A client sending the given requests in a loop until stopped, keeping every failure."""

    def __init__(self, served: Served, paths: list[str]) -> None:
        super().__init__(daemon=True)
        self.served, self.paths = served, paths
        self.done = 0
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for path in self.paths:
                try:
                    status, _, body, _ = self.served.get(path, timeout=30)
                except Exception as exc:
                    self.failures.append(f"{path}: {type(exc).__name__}: {exc}")
                else:
                    if status != 200:
                        self.failures.append(f"{path}: {status} {body[:300]!r}")
                self.done += 1

    def more(self, count: int) -> None:
        """Wait until ``count`` more requests have been answered."""
        target = self.done + count
        wait_for(f"{count} more requests", lambda: self.done >= target)


def health_count(served: Served) -> float:
    """What /metrics says the workers, live and exited, answered to /health with 200."""
    text = served.get("/metrics", keyed=False)[2].decode()
    prefix = 'retention_http_requests_total{method="GET",route="/health",status="200"}'
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


@pytest.mark.slow
def test_a_reload_and_a_worker_stopped_cost_no_request(
    pg_store: tuple[str, str], redis_url: str, serve: Callable[..., Served]
) -> None:
    served = serve(
        *pg_store,
        "--workers",
        "2",
        api_rate_limit_storage=redis_url,
        api_rate_limit_per_minute=10**6,
    )
    wait_for("two workers", lambda: len(served.workers()) == 2)
    first = served.workers()
    load = Load(served, ["/health", "/v1/risk-list?limit=5", "/v1/risk-list?limit=2&tier=high"])
    load.start()
    try:
        load.more(30)
        os.kill(served.proc.pid, signal.SIGHUP)  # a routine reload: new workers, old ones out
        wait_for(
            "the reload to replace both workers",
            lambda: len(served.workers()) == 2 and not served.workers() & first,
        )
        load.more(60)
        stopped = min(served.workers())
        os.kill(stopped, signal.SIGTERM)  # one worker stopped; the master starts another
        wait_for(
            "a new worker", lambda: len(served.workers()) == 2 and stopped not in served.workers()
        )
        load.more(60)
    finally:
        load.halt.set()
        load.join(timeout=60)
    print(f"\nreload and worker restart: {load.done} requests, {len(load.failures)} failed")
    assert load.failures == []
    assert load.done >= 150
    # The samples of the workers that exited are still there: nothing removed the directory.
    assert health_count(served) == served.sent[("/health", 200)]


@pytest.mark.slow
def test_a_locked_table_gets_a_quick_503_problem_and_health_still_answers(
    pg_store: tuple[str, str], redis_url: str, serve: Callable[..., Served]
) -> None:
    lock_timeout = 0.5
    served = serve(
        *pg_store,
        "--workers",
        "2",
        api_rate_limit_storage=redis_url,
        api_rate_limit_per_minute=10**6,
        api_lock_timeout_seconds=lock_timeout,
        api_statement_timeout_seconds=2.0,
    )
    # Both workers must hold the key, the list and its first page (the cached request
    # below may reach either).
    warm_every_worker(served, "/v1/risk-list?limit=5", workers=2)
    bound = lock_timeout + 4.0  # the lock wait, and a loaded machine's slack
    timings = {}
    with psycopg.connect(libpq(pg_store[0])) as holder:
        holder.execute("LOCK TABLE audit_log IN ACCESS EXCLUSIVE MODE")
        for path in ("/v1/risk-list?limit=5", "/v1/risk-list?limit=9", "/v1/clients/C1/risk"):
            status, headers, body, seconds = served.get(path)
            timings[path] = seconds
            problem = json.loads(body)
            assert (status, headers["content-type"], problem["status"]) == (503, PROBLEM, 503)
            assert problem["title"] == "Audit unavailable" and "items" not in problem
            assert int(headers["retry-after"]) > 0
            assert seconds < bound, (path, seconds)
        status, _, body, seconds = served.get("/health", keyed=False)
        assert status == 200 and seconds < bound, (body, seconds)
        holder.rollback()

        holder.execute("LOCK TABLE scores IN ACCESS EXCLUSIVE MODE")
        status, headers, body, seconds = served.get("/v1/risk-list?limit=11")  # not cached
        timings["scores locked"] = seconds
        assert (status, headers["content-type"]) == (503, PROBLEM), body
        assert json.loads(body)["title"] == "Store unavailable"
        assert int(headers["retry-after"]) > 0 and seconds < bound
        status, _, _, seconds = served.get("/v1/risk-list?limit=5")  # cached: served
        assert status == 200 and seconds < bound
        holder.rollback()
    print(
        f"\nseconds to 503 with a lock held (lock_timeout {lock_timeout} s): "
        + ", ".join(f"{k} {v:.2f}" for k, v in timings.items())
    )
    # The locks gone, the same workers serve again.
    for path in ("/v1/risk-list?limit=9", "/v1/risk-list?limit=11"):
        assert served.get(path)[0] == 200


def warm_every_worker(served: Served, path: str, workers: int) -> None:
    """Have each of the server's ``workers`` answer ``path`` once (200).

    Which worker accepts a connection is the kernel's choice: twenty requests in a row
    once all went to one worker on a loaded machine. A sync worker holds the connection
    it accepted until the request on it is complete, so ``workers`` requests left one
    line short are each held by a different worker; they are completed once every worker
    holds one (seen in its sockets).
    """
    deadline = time.monotonic() + WAIT_SECONDS
    # The server answers once one worker has booted; the master forks the others after.
    while len(pids := [c.pid for c in psutil.Process(served.proc.pid).children()]) < workers:
        assert time.monotonic() < deadline, f"{len(pids)} of {workers} workers started"
        time.sleep(0.05)
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {served.token}\r\n"
    socks = [socket.create_connection(("127.0.0.1", served.port), timeout=20)
             for _ in range(workers)]
    try:
        for sock in socks:
            sock.sendall(head.encode())
        ours = {sock.getsockname()[1] for sock in socks}
        while True:
            held = {pid: {c.raddr.port for c in psutil.Process(pid).net_connections("tcp")
                          if c.raddr and c.laddr.port == served.port} & ours for pid in pids}
            if all(held.values()):
                break
            assert time.monotonic() < deadline, f"not every worker took a request: {held}"
            time.sleep(0.05)
        for sock in socks:
            sock.sendall(b"\r\n")
        for sock in socks:
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
            status = int(received.split(b" ", 2)[1])
            with served.lock:
                served.sent[(path, status)] += 1
            assert status == 200, received[:2000]
    finally:
        for sock in socks:
            sock.close()


def raw_request(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (no client library would send these) and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


@pytest.mark.slow
def test_what_gunicorn_answers_itself_is_problem_json_and_logs_stay_one_line(
    pg_store: tuple[str, str], redis_url: str, serve: Callable[..., Served]
) -> None:
    served = serve(
        *pg_store, "--workers", "2", "--access-log", "-", api_rate_limit_storage=redis_url
    )
    host = b"Host: x\r\n"
    cases = {
        414: b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n" + host + b"\r\n",
        431: b"GET / HTTP/1.1\r\n"
        + host
        + b"".join(b"X-%d: y\r\n" % n for n in range(120))
        + b"\r\n",
        400: b"NOT AN HTTP REQUEST\r\n\r\n",
    }
    cases_too_long_field = b"GET / HTTP/1.1\r\n" + host + b"X-Big: " + b"y" * 9000 + b"\r\n\r\n"
    for expected, data in [*cases.items(), (431, cases_too_long_field)]:
        status, headers, body = raw_request(served.port, data)
        assert status == expected
        assert headers["content-type"] == PROBLEM, (status, body[:200])
        assert headers["x-content-type-options"] == "nosniff"
        problem = json.loads(body)
        assert problem["status"] == expected and problem["title"] and problem["detail"]

    # The app's answers, the cached-list path's included, carry the security headers.
    for _ in range(3):
        status, headers, _, _ = served.get("/v1/risk-list?limit=3")
        assert status == 200
        assert (headers["cache-control"], headers["x-content-type-options"]) == (
            "no-store",
            "nosniff",
        )

    # U+0085 (NEL) in a header: a reader splitting lines would start a forged one there.
    marker = "FORGED-ACCESS-LINE"
    status = served.get("/health", keyed=False, headers={"User-Agent": f"agent\x85{marker}"})[0]
    assert status == 200
    # The path: a line break and a NUL, percent-encoded, in a client id.
    forged = "2026-06-01 ERROR FORGED-PATH-LINE"
    path = f"/v1/clients/X%0A{forged.replace(' ', '%20')}%00/risk"
    status, headers, _, _ = served.get(path)
    assert (status, headers["content-type"]) == (400, PROBLEM)
    # gunicorn writes an access line after its answer has gone: wait for the last one.
    wait_for(
        "the forged path's access line",
        lambda: any(path in line and '" 400 ' in line for line in served.log().splitlines()),
    )  # one line, as sent
    lines = served.log().splitlines()
    assert not any(line.startswith((marker, forged)) for line in lines)
    assert any(f"agent\\x85{marker}" in line for line in lines)


@pytest.mark.slow
def test_per_process_rate_limits_with_several_workers_are_refused(
    scored: Scored, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "cfg.toml", scored, scored.settings.store_url, api_rate_limit_storage="memory://"
    )
    result = subprocess.run(
        [
            *RETENTION,
            "--config",
            str(config),
            "serve",
            "--workers",
            "2",
            "--port",
            str(free_port()),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "api_rate_limit_storage" in result.stderr and "--workers 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_problem_json_from_gunicorn_keeps_its_status_and_title() -> None:
    raw = problem_response(
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
        b"Content-Type: text/html\r\n\r\n<html></html>"
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"Content-Type: application/problem+json" in head
    assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) == len(body)
    assert json.loads(body)["status"] == 431


def test_the_services_log_lines_escape_what_a_client_sent() -> None:
    """gunicorn's logger puts the filter on the root handlers (where the app's loggers
    write): a path with a line break, NUL or NEL in it stays on one line."""
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        config = Config()
        config.set("errorlog", os.devnull)
        ServiceLogger(config)
        logging.getLogger("retention.api.errors").error(
            "unhandled %s on %s %s",
            "DataError",
            "GET",
            "/v1/clients/X\n2026-06-01 ERROR forged line\x00\x85\u2028\x1b[2J/risk",
        )
    finally:
        root.removeHandler(handler)
        handler.removeFilter(ESCAPE_CONTROLS)
    assert sink.getvalue().splitlines() == [
        "unhandled DataError on GET /v1/clients/X\\n2026-06-01 ERROR forged line"
        "\\x00\\x85\\u2028\\x1b[2J/risk"
    ]
