"""How long the case manager's list page takes to render on the server, for a caseload of 200.

Publishes two nights' lists (so "changed since yesterday" has work to do) of 200
episodes in one clinic, with every client's contact details and MRN and a week of
outreach for a quarter of them, into a fresh SQLite store; signs a case manager in and
times today's calls (everyone, and the still-engaged default), the CSV export and a
filtered view with Flask's test client (server-side only: routing, session check,
scoped reads, contacts, outreach counts, audit write, template).
Usage: .venv/bin/python benchmarks/web_list.py [--n 200]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path

from sqlalchemy import insert

from retention.access.keys import create_key
from retention.api import create_app
from retention.casework import outreach
from retention.clock import FixedClock
from retention.db.engines import store_engine
from retention.settings import settings_from_mapping
from retention.store import schema
from retention.store.lists import publish_scores
from retention.store.tables import copies

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


AS_OF = date(2026, 6, 1)
CLINIC = "clinic-bench"
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.3.9999.1"


def reason(rng: random.Random, i: int) -> dict[str, object]:
    return {"code": f"R{i}", "family": "disengagement", "title": "Drifting out of contact",
            "text": "Missed 3 of 5 sessions in the last 4 weeks: 2 no-shows on 3 and 10 May",
            "log_odds": round(rng.random(), 3), "percentage_points": round(rng.random() * 20, 1),
            "suggestion": "Consider reaching out soon to acknowledge the gap.",
            "appointment_ids": [f"A{i}-{k}" for k in range(3)], "measure_ids": []}


def publish(engine: object, n: int, rng: random.Random) -> None:
    with engine.begin() as conn:  # type: ignore[attr-defined]
        schema.upgrade(conn)
        for day, shift in ((AS_OF - timedelta(days=1), 0.03), (AS_OF, 0.0)):
            risks = sorted((rng.random() - shift for _ in range(n)), reverse=True)
            rows = [{
                "as_of": day, "episode_id": f"E{i:05d}", "client_id": f"C{i:05d}",
                "clinic_id": CLINIC, "case_manager_id": "cm-1", "program": "outpatient",
                "rank": rank, "risk": max(0.0, min(1.0, r)),
                "tier": "high" if r > 0.5 else "medium" if r > 0.25 else "low",
                "still_engaged": i % 3 != 0, "last_attended_on": day - timedelta(days=i % 30),
                "next_booked_at": datetime(2026, 6, 3, 10) if i % 4 else None,
                "model_version": "bench", "run_id": 1,
                "reasons_json": json.dumps({"reasons": [reason(rng, i) for _ in range(3)],
                                            "protective": [reason(rng, i)]}),
            } for rank, (i, r) in enumerate(zip(range(n), risks, strict=True), start=1)]
            publish_scores(conn, day, rows, 1, "bench")
        conn.execute(insert(copies["clients"]), [
            {"client_id": f"C{i:05d}", "clinic_id": CLINIC, "case_manager_id": "cm-1"}
            for i in range(n)])
        conn.execute(insert(copies["client_contacts"]), [
            {"client_id": f"C{i:05d}", "display_name": f"Client Number{i}",
             "preferred_name": None, "phone": f"(617) 555-01{i % 100:02d}",
             "preferred_channel": "phone", "may_text": True, "may_call": True,
             "language": "es" if i % 7 == 0 else "en", "updated_at": datetime(2026, 5, 1)}
            for i in range(n)])
        conn.execute(insert(copies["client_identifiers"]), [
            {"system": MRN_SYSTEM, "value": f"{1000000 + i}", "client_id": f"C{i:05d}",
             "updated_at": datetime(2026, 5, 1)} for i in range(n)])
        for i in range(0, n, 4):
            outreach.record_outreach(conn, outreach.Outreach(
                client_id=f"C{i:05d}", episode_id=f"E{i:05d}", clinic_id=CLINIC,
                list_as_of=AS_OF, risk=0.5, tier="high", key_id="bench", reached=True,
                channel="phone", outcome="booked", note="Booked for Thursday"))


def timed(client: object, path: str, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        answer = client.get(path)  # type: ignore[attr-defined]
        out.append((time.perf_counter() - start) * 1000)
        assert answer.status_code == 200, answer.status_code
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="caseload size")
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_from_mapping({"source_url": f"sqlite:///{tmp}/clinic.db",
                                          "store_url": f"sqlite:///{tmp}/store.db",
                                          "api_rate_limit_per_minute": 1_000_000,
                                          "ehr_link_template": "https://ehr.example/p/{mrn}",
                                          "ehr_link_system": MRN_SYSTEM})
        engine = store_engine(settings.store_url)
        publish(engine, args.n, rng)
        with engine.begin() as conn:
            _, token = create_key(conn, "case_manager", [CLINIC], case_manager_id="cm-1")
        clock = FixedClock(datetime.combine(AS_OF, clock_time(9)))
        app = create_app(settings, TESTING=True, clock=clock)
        client = app.test_client()
        form = client.get("/web/sign-in").get_data(as_text=True)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
        signed = client.post("/web/sign-in", data={"csrf_token": csrf, "key": token})
        assert signed.status_code == 303
        page = client.get("/web/?show=all").get_data(as_text=True)
        shown = len(re.findall(r'<tr id="c-', page))
        assert "555-01" in page, "no contact details on the page"
        timed(client, "/web/?show=all", 3)  # warm-up
        views = {
            f"today's calls, everyone ({shown} rows, {len(page) / 1024:.0f} KiB HTML)":
                "/web/?show=all",
            "today's calls, still engaged (the default)": "/web/",
            "CSV export, everyone": "/web/calls.csv?show=all",
            "sorted by change, high tier only": "/web/?sort=change&tier=high&show=all",
        }
        for name, path in views.items():
            took = timed(client, path, args.runs)
            print(f"{name}, {args.runs} runs: median {statistics.median(took):.1f} ms, "
                  f"p95 {statistics.quantiles(took, n=20)[18]:.1f} ms, max {max(took):.1f} ms")
        engine.dispose()


if __name__ == "__main__":
    main()
