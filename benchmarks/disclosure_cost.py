"""What the 42 CFR Part 2 consent check costs an EHR's read, beside a staff key's.

Publishes a list of ``--clients`` clients in a fresh PostgreSQL database (as
benchmarks/api_throughput.py does), records a treatment consent naming the benchmark's
EHR for 80% of them, and serves the real app in this process (Flask's test client: no
HTTP, so the figures are the app's and the database's own work). Each endpoint is read
``--requests`` times by a clinic's staff key and by an ehr key of the same clinic; the
staff list is cached after its first read (as in production), the EHR's never is (its
rows depend on consents, not on the list). Prints medians, 95th percentiles and the
EHR/staff ratios of one run; record the output in docs/performance.md. Drops only the
database it made.

    .venv/bin/python -m benchmarks.disclosure_cost [--clients 30000] [--requests 200]
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import datetime, timedelta
from datetime import time as clock_time
from typing import Any

from sqlalchemy import create_engine, insert, select

from benchmarks.api_throughput import AS_OF, CLINICS, drop_database, new_database, publish, say
from retention.access.keys import create_key
from retention.api import create_app
from retention.api.services import services_of
from retention.clock import FixedClock
from retention.settings import settings_from_mapping
from retention.store import tables

RECIPIENT = "bench-ehr"


def consent_most(store_url: str, share: float = 0.8) -> int:
    """A treatment consent naming RECIPIENT for ``share`` of the clients; returns how many."""
    engine = create_engine(store_url)
    consents = tables.copies["consents"]
    with engine.begin() as conn:
        clients = list(conn.execute(select(tables.scores.c.client_id)).scalars())
        chosen = [c for i, c in enumerate(clients) if i % 10 < share * 10]
        for start in range(0, len(chosen), 5000):
            conn.execute(insert(consents), [{
                "consent_id": f"K{c}", "client_id": c, "recipient": RECIPIENT,
                "purpose": "treatment", "effective_on": AS_OF - timedelta(days=90),
                "expires_on": None, "revoked_at": None,
                "updated_at": datetime.combine(AS_OF, clock_time(8)),
            } for c in chosen[start:start + 5000]])
        conn.exec_driver_sql("ANALYZE clinic_consents")
    engine.dispose()
    return len(chosen)


def timed(client: Any, url: str, n: int, before: Any = None) -> list[float]:
    """Milliseconds per request, each answered 200 (``before`` runs untimed before each)."""
    out = []
    for _ in range(n):
        if before is not None:
            before()
        started = time.perf_counter()
        response = client.get(url)
        out.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (url, response.status_code, response.get_data())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=30_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    url = new_database()
    try:
        say(f"disclosure cost: publishing {args.clients:,} clients")
        staff_token, _ = publish(url, args.clients)
        say(f"  {consent_most(url):,} consents naming {RECIPIENT}")
        engine = create_engine(url)
        with engine.begin() as conn:
            _, ehr_token = create_key(conn, "ehr", [CLINICS[0]], recipient=RECIPIENT)
            client_id = conn.execute(select(tables.scores.c.client_id).where(
                tables.scores.c.clinic_id == CLINICS[0]).order_by(tables.scores.c.rank)
                .limit(1)).scalar_one()
        engine.dispose()
        # A limit no loop here reaches: the benchmark measures reads, not the limiter.
        settings = settings_from_mapping({"source_url": "sqlite://", "store_url": url,
                                          "public_base_url": "https://risk.example",
                                          "api_rate_limit_per_minute": 1_000_000})
        app = create_app(settings, clock=FixedClock(datetime.combine(AS_OF, clock_time(9))))
        pages = services_of(app).cache.pages
        readers = {}
        # The staff's list twice: as served (pages cached) and with its page read each
        # time, which is what an outside recipient's read costs before its consent clause.
        for who, token, before in (("staff", staff_token, None),
                                   ("staff uncached", staff_token, pages.clear),
                                   ("ehr", ehr_token, None)):
            client = app.test_client()
            client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
            readers[who] = (client, before)
        endpoints = {
            "list, 50 rows": "/v1/risk-list?limit=50",
            "list, 500 rows": "/v1/risk-list?limit=500",
            "one client's risk": f"/v1/clients/{client_id}/risk",
            "FHIR search": f"/fhir/RiskAssessment?patient={client_id}",
        }
        print(f"{'endpoint':<18} {'staff p50/p95 ms':>17} {'uncached p50/p95':>17} "
              f"{'ehr p50/p95 ms':>15} {'ehr/uncached':>12} {'ehr/staff':>9}")
        for name, path in endpoints.items():
            row = {}
            for who, (client, before) in readers.items():
                timed(client, path, 5, before)  # warm: connections, caches, plans
                ms = timed(client, path, args.requests, before)
                row[who] = (statistics.median(ms), statistics.quantiles(ms, n=20)[18])
            (s50, s95), (u50, u95), (e50, e95) = row.values()
            print(f"{name:<18} {s50:>8.2f} / {s95:>6.2f} {u50:>8.2f} / {u95:>6.2f} "
                  f"{e50:>7.2f} / {e95:>5.2f} {e50 / u50:>11.1f}x {e50 / s50:>8.1f}x")
        say(f"disclosure cost: {args.requests} requests per endpoint and caller, "
            f"{args.clients:,} clients, one run")
    finally:
        drop_database(url)


if __name__ == "__main__":
    main()
