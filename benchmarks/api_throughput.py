"""Throughput and latency of the list and client endpoints against a bare Flask endpoint.

Publishes a list of 100,000 clients in a fresh PostgreSQL database, serves the real
app, a bare Flask app (one constant JSON response) and two floors (only what every
list request must do: count it in Redis, append its audit record, send the page; as
a WSGI function and as a Flask view) under the same gunicorn settings, and drives
each with the same closed-loop load from local processes.
Prints one table (with the CPU time each request cost the server, PostgreSQL, Redis
and the load generator) and a one-line summary; record the output in
docs/performance-api.md.

    .venv/bin/python -m benchmarks.api_throughput [--clients 100000] [--seconds 15]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import random
import resource
import statistics
import sys
import tempfile
import time
import uuid
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import create_engine, insert

from retention.access.keys import create_key
from retention.clock import utcnow
from retention.store import schema, tables

REPO = Path(__file__).resolve().parents[1]
ADMIN_URL = os.environ.get("RETENTION_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = "redis://127.0.0.1:6379/14"
AS_OF = date(2026, 6, 1)
CLINICS = ("clinic-east", "clinic-north", "clinic-west")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def new_database() -> str:
    name = f"retention_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    return f"{base}/{name}"


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                     (name,))
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def reasons(rng: random.Random) -> str:
    """Three reasons with evidence, about the size the scoring job writes."""
    def one(code: str) -> dict[str, Any]:
        return {"code": code, "family": code.split(".")[0], "title": "A reason title",
                "text": "Missed 3 of 5 sessions in the last 4 weeks: 2 no-shows on 3 and 10 Mar",
                "log_odds": round(rng.random(), 4),
                "percentage_points": round(rng.random() * 20, 1),
                "suggestion": "Consider reaching out soon to acknowledge the gap and offer a time.",
                "appointment_ids": [f"A{rng.randrange(10**8):08d}" for _ in range(4)],
                "measure_ids": [f"M{rng.randrange(10**8):08d}"]}
    return json.dumps({"raw_score": 0.1, "expected_value": -2.0, "protective": [],
                       "reasons": [one("disengagement.NOTHING_BOOKED"), one("setting.GROUP"),
                                   one("alliance_rupture.SRS_LATEST")]})


def publish(store_url: str, n: int) -> tuple[str, str]:
    """A published list of ``n`` clients and a clinic-scoped key; returns (token, a client id).

    The key is a clinic's staff key (case_manager, whole clinic): an ehr key acts for an
    outside recipient and reads under consent, which benchmarks/disclosure_cost.py measures.
    """
    engine = create_engine(store_url)
    rng = random.Random(1)
    risks = sorted((rng.random() for _ in range(n)), reverse=True)
    with engine.begin() as conn:
        schema.upgrade(conn)
        for start in range(0, n, 5000):
            conn.execute(insert(tables.scores), [{
                "as_of": AS_OF, "episode_id": f"E{i:07d}-1", "client_id": f"C{i:07d}",
                "clinic_id": CLINICS[i % 3], "case_manager_id": f"cm-{i % 60:02d}",
                "program": "outpatient", "rank": i + 1, "risk": round(risks[i], 6),
                "tier": "high" if risks[i] >= 0.5 else "medium" if risks[i] >= 0.25 else "low",
                "still_engaged": i % 4 != 0, "last_attended_on": AS_OF - timedelta(days=i % 40),
                "next_booked_at": datetime(2026, 6, 3, 10), "model_version": "bench",
                "run_id": 1, "reasons_json": reasons(rng),
            } for i in range(start, min(n, start + 5000))])
            say(f"  published {min(n, start + 5000):,}/{n:,} rows")
        conn.execute(insert(tables.publications).values(
            as_of=AS_OF, run_id=1, model_version="bench", published_at=utcnow(), n_scored=n))
        _, token = create_key(conn, "case_manager", [CLINICS[0]], label="benchmark")
    # Fresh planner statistics, as autovacuum gives a table after a nightly publish
    # (committed: statistics gathered in a rolled-back transaction are thrown away).
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE scores")
    engine.dispose()
    return token, "C0000003"


def bare_app() -> Any:
    from flask import Flask, jsonify

    app = Flask("bare")

    @app.get("/bare")
    def bare() -> Any:
        return jsonify({"status": "ok"})

    return app


def floor_app(store_url: str, page: bytes, flask: bool) -> Any:
    """The least a list request can cost: what the issue requires of every one, nothing else.

    Counts the request in Redis (the app's own counter), appends its audit record
    (one prepared INSERT, durable when it returns) and sends a page already made.
    No key check, no scope, no claims, no metrics; ``flask`` puts it in one Flask view.
    """
    import psycopg

    from retention.api.ratelimit import RedisCounter

    counter = RedisCounter(REDIS_URL)
    audit = ("INSERT INTO audit_log (at, key_id, role, action, client_ids_json, request_id,"
             " source, outcome, status) VALUES (now() AT TIME ZONE 'UTC', 'floor', 'ehr',"
             " 'risk_list.read', %s, %s, %s, 'ok', 200)")
    ids = json.dumps([item["client_id"] for item in json.loads(page)["items"]])
    db: list[psycopg.Connection[Any]] = []

    def serve_page(remote: str | None) -> None:
        if not db:  # after the fork, in the worker
            db.append(psycopg.connect(store_url.replace("+psycopg", ""), autocommit=True))
        counter.hit("floor", 60)
        db[0].execute(audit, (ids, uuid.uuid4().hex, remote), prepare=True)

    if flask:
        from flask import Flask, Response, request

        app = Flask("floor")

        @app.get("/floor")
        def view() -> Response:
            serve_page(request.remote_addr)
            return Response(page, mimetype="application/json")

        return app

    def wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        serve_page(environ.get("REMOTE_ADDR"))
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(page)))])
        return [page]

    return wsgi


def serve(kind: str, store_url: str, port: int, workers: int, page: bytes = b"") -> None:
    """Child process: gunicorn with the production options serving ``kind``."""
    from gunicorn.app.base import BaseApplication

    from retention.pipelines.gunicorn_app import gunicorn_options
    from retention.settings import settings_from_mapping

    settings = settings_from_mapping({
        "source_url": "sqlite:///unused.db", "store_url": store_url,
        "api_rate_limit_per_minute": 10**9, "api_rate_limit_storage": REDIS_URL,
    })

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in gunicorn_options("127.0.0.1", port, workers).items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            if kind == "bare":
                return bare_app()
            if kind.startswith("floor"):
                return floor_app(store_url, page, flask=kind == "floor_flask")
            from retention.api import create_app

            return create_app(settings)

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp()
    Server().run()


def client_loop(port: int, path: str, token: str, seconds: float, out: Any,
                ranks: int, signing: tuple[str, str] = ("", "")) -> None:
    """One closed-loop client: request, wait for the answer, repeat; latencies in ms.

    A path with ``{rank}`` asks each time for the page after a random rank below
    ``ranks``, so few requests find their page in a worker's cache.
    """
    headers = {"Authorization": f"Bearer {token}"}
    latencies, errors = [], 0
    rng = random.Random(os.getpid())
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        url = (path.format(rank=_cursor(signing, rng.randrange(ranks))) if "{rank}" in path
               else path)
        started = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", url, headers=headers)
        response = conn.getresponse()
        response.read()
        conn.close()
        latencies.append((time.perf_counter() - started) * 1000)
        errors += response.status != 200
    out.put((latencies, errors))


def measure(port: int, path: str, token: str, seconds: float, clients: int,
            watched: dict[str, list[int]], ranks: int = 1,
            signing: tuple[str, str] = ("", "")) -> dict[str, float]:
    """Closed-loop load from ``clients`` processes; latencies, and CPU seconds by component."""
    queue: Any = mp.Queue()
    procs = [mp.Process(target=client_loop, args=(port, path, token, seconds, queue, ranks,
                                                       signing))
             for _ in range(clients)]
    before = {name: cpu_seconds(pids) for name, pids in watched.items()}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = {name: cpu_seconds(pids) - before[name] for name, pids in watched.items()}
    cpu["clients"] = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    latencies = sorted(x for r in results for x in r[0])
    q = statistics.quantiles(latencies, n=100)
    return {"rps": len(latencies) / seconds, "p50": q[49], "p99": q[98], "n": len(latencies),
            "errors": sum(r[1] for r in results),
            **{f"cpu_{name}": 1000 * secs / len(latencies) for name, secs in cpu.items()}}


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of these processes so far (Linux /proc)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited
        total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def processes(match: Any) -> list[int]:
    """Process ids whose command line satisfies ``match``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if match(int(entry.name), cmdline):
                found.append(int(entry.name))
    return found


def descendants(root: int) -> list[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def first_page(port: int, token: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/v1/risk-list?limit=50", headers={"Authorization": f"Bearer {token}"})
    body = conn.getresponse().read()
    conn.close()
    return body


def wait_up(port: int, path: str = "/metrics") -> None:
    for _ in range(200):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", path)
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"server on port {port} did not start; see its output above")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=100_000, help="rows in the published list")
    parser.add_argument("--seconds", type=float, default=15.0, help="per endpoint")
    parser.add_argument("--concurrency", type=int, default=8, help="client processes")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers (both servers)")
    args = parser.parse_args()
    say(f"bench: publishing {args.clients:,} clients in a new PostgreSQL database ...")
    store_url = new_database()
    servers: list[mp.Process] = []
    try:
        token, client_id = publish(store_url, args.clients)
        ports = {"bare": 18301, "api": 18302, "floor_wsgi": 18303, "floor_flask": 18304}
        page = b""
        for kind, port in ports.items():
            proc = mp.Process(target=serve, args=(kind, store_url, port, args.workers, page))
            proc.start()
            servers.append(proc)
            wait_up(port, "/floor" if kind.startswith("floor") else "/metrics")
            if kind == "api":  # the floors send the page the API sends
                page = first_page(port, token)
        cases = [("bare Flask constant", ports["bare"], "/bare"),
                 ("floor: WSGI, count+audit+page", ports["floor_wsgi"], "/floor"),
                 ("floor: Flask, count+audit+page", ports["floor_flask"], "/floor"),
                 ("ranked list, page of 50", ports["api"], "/v1/risk-list?limit=50"),
                 ("ranked list, tier=high, page 2", ports["api"],
                  "/v1/risk-list?limit=50&tier=high&cursor="
                  + _cursor(cursor_signing(store_url, token, tier="high"), 150)),
                 ("ranked list, random page", ports["api"], "/v1/risk-list?limit=50&cursor={rank}"),
                 ("client risk", ports["api"], f"/v1/clients/{client_id}/risk")]
        database = store_url.rsplit("/", 1)[1]
        rows = []
        signing = cursor_signing(store_url, token)  # the random pages' view: no filters
        for label, port, path in cases:
            # Watched afresh per case: pooled backends and workers exist once warmed up.
            measure(port, path, token, 2, args.concurrency, {}, args.clients,  # warm up
                    signing)
            server = servers[list(ports.values()).index(port)]
            watched = {
                "server": descendants(server.pid or 0),
                "postgres": processes(lambda _pid, cmd: f" {database} " in cmd),
                "redis": processes(lambda _pid, cmd: cmd.startswith("redis-server")),
            }
            say(f"bench: {label} for {args.seconds:.0f} s with {args.concurrency} clients ...")
            rows.append((label, measure(port, path, token, args.seconds, args.concurrency,
                                        watched, args.clients, signing)))
        print(f"{'endpoint':<32} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'requests':>9} "
              f"{'errors':>6}   CPU ms per request: server postgres redis clients")
        for label, r in rows:
            print(f"{label:<32} {r['rps']:>8.0f} {r['p50']:>8.1f} {r['p99']:>8.1f} "
                  f"{r['n']:>9,} {r['errors']:>6}   {r['cpu_server']:>25.2f} "
                  f"{r['cpu_postgres']:>8.2f} {r['cpu_redis']:>5.2f} {r['cpu_clients']:>7.2f}")
        by_label = dict(rows)
        bare = by_label["bare Flask constant"]["rps"]
        listed = by_label["ranked list, page of 50"]
        floors = [by_label[f"floor: {kind}, count+audit+page"]["rps"] / bare
                  for kind in ("WSGI", "Flask")]
        say(f"bench: list at {listed['rps'] / bare:.0%} of the bare endpoint's throughput "
            f"(floors: WSGI {floors[0]:.0%}, Flask {floors[1]:.0%}), p99 {listed['p99']:.1f} ms "
            f"({args.clients:,} clients, {args.workers} workers, {args.concurrency} clients)")
    finally:
        for proc in servers:
            proc.terminate()
            proc.join(10)
        drop_database(store_url)


def cursor_signing(store_url: str, token: str, **filters: Any) -> tuple[str, str]:
    """The store's cursor key and the view (the key's scope, these filters) cursors are for."""
    from retention.access.keys import authenticate, signing_key
    from retention.access.scope import ListFilter
    from retention.api.routes import view_of

    engine = create_engine(store_url)
    with engine.connect() as conn:
        secret, who = signing_key(conn, "cursor"), authenticate(conn, token)
    engine.dispose()
    assert secret is not None and who is not None
    return secret, view_of(who, ListFilter(**filters))


def _cursor(signing: tuple[str, str], rank: int) -> str:
    """The cursor the API returns after ``rank`` rows of the view ``signing`` names."""
    from retention.api.routes import cursor_signer, encode_cursor

    return encode_cursor(cursor_signer(signing[0]), AS_OF, rank, signing[1])


if __name__ == "__main__":
    main()
