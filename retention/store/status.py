"""How the service stands: how old the served list is, and how the last nightly run went.

One answer for /health, /ready and the pages' banner, so an operator's probe and a case
manager's screen never disagree about a stale list, a failed night, a nightly run whose
process died, or an optional table gone from the clinic's database. Functions take a
connection first and never commit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, select

from retention.db import locks
from retention.store.lists import latest_publication
from retention.store.tables import runs

# The nightly run's two halves; either failing means tonight's list was not published.
NIGHTLY_KINDS = ("etl", "score")


@dataclass(frozen=True)
class Status:
    """The served list's date and age, the last nightly run, and what is wrong, in words."""

    publication: dict[str, Any] | None
    age_days: int | None
    stale: bool
    last_run: dict[str, Any] | None  # kind, status, run_id, as_of, started_at, finished_at
    failed_at: datetime | None  # when the newest nightly run failed or died, if it did
    problems: list[str] = field(default_factory=list)
    # Optional tables the last ETL run found missing at the source while the copy holds rows.
    missing_tables: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """For JSON: no error texts, hosts or processes, only kinds, states and times."""
        last = None if self.last_run is None else {
            k: (v.isoformat() if isinstance(v, date | datetime) else v)
            for k, v in self.last_run.items()}
        return {"stale": self.stale, "age_days": self.age_days, "last_nightly_run": last,
                "missing_tables": list(self.missing_tables), "problems": list(self.problems)}


def service_status(connection: Connection, today: date) -> Status:
    """The list served today and the newest nightly run, with the problems a person must know.

    A run still marked ``running`` whose process is gone (its lock is free) is reported
    as ``died``: it failed, though only the next run's start will write that down.
    """
    pub = latest_publication(connection)
    age = (today - pub["as_of"]).days if pub else None
    stale = age is None or age > 1
    row = connection.execute(
        select(runs.c.run_id, runs.c.kind, runs.c.status, runs.c.as_of, runs.c.started_at,
               runs.c.finished_at)
        .where(runs.c.kind.in_(NIGHTLY_KINDS)).order_by(runs.c.run_id.desc()).limit(1)
    ).first()
    last = None if row is None else dict(row._mapping)
    if last is not None and last["status"] == "running" and not locks.live_runs(
            connection, [last["run_id"]]):
        last["status"] = "died"
    failed_at = None
    problems = []
    if pub is None:
        problems.append("no list has been published yet")
    elif stale:
        problems.append(f"the list is {age} days old: the nightly run has not published since "
                        f"{pub['as_of']}")
    if last is not None and last["status"] == "failed":
        failed_at = last["finished_at"] or last["started_at"]
        problems.append(f"the last nightly {last['kind']} run (run {last['run_id']}) failed; "
                        "`retention runs` says why")
    elif last is not None and last["status"] == "died":
        failed_at = last["started_at"]
        problems.append(f"the last nightly {last['kind']} run (run {last['run_id']}, started "
                        f"{last['started_at']:%Y-%m-%d %H:%M} UTC) died: its process is gone "
                        "(killed or crashed) and it never finished")
    missing = _missing_tables(connection)
    if missing:
        problems.append(f"optional table(s) {', '.join(missing)} missing at the clinic database, "
                        "whose rows the copy holds: the ETL stops rather than delete them")
    return Status(pub, age, stale, last, failed_at, problems, missing)


def _missing_tables(connection: Connection) -> list[str]:
    """The optional tables the newest ETL run found gone from the source (none if it read them)."""
    detail = connection.execute(
        select(runs.c.detail).where(runs.c.kind == "etl").order_by(runs.c.run_id.desc()).limit(1)
    ).scalar()
    if not detail:
        return []
    try:
        found = json.loads(detail).get("missing_tables") or []
    except (ValueError, AttributeError):
        return []
    return [str(t) for t in found]
