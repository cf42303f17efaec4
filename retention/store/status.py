"""How the service stands: how old the served list is, and how the last nightly run went.

One answer for /health, /ready and the pages' banner, so an operator's probe and a case
manager's screen never disagree about a stale list or a failed night. Functions take a
connection first and never commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, select

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
    last_run: dict[str, Any] | None  # kind, status, run_id, as_of, finished_at
    failed_at: datetime | None  # when the newest nightly run failed, if it did
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """For JSON: no error texts (they may quote source values), only kinds and times."""
        last = None if self.last_run is None else {
            k: (v.isoformat() if isinstance(v, date | datetime) else v)
            for k, v in self.last_run.items()}
        return {"stale": self.stale, "age_days": self.age_days, "last_nightly_run": last,
                "problems": list(self.problems)}


def service_status(connection: Connection, today: date) -> Status:
    """The list served today and the newest nightly run, with the problems a person must know."""
    pub = latest_publication(connection)
    age = (today - pub["as_of"]).days if pub else None
    stale = age is None or age > 1
    row = connection.execute(
        select(runs.c.run_id, runs.c.kind, runs.c.status, runs.c.as_of, runs.c.started_at,
               runs.c.finished_at)
        .where(runs.c.kind.in_(NIGHTLY_KINDS)).order_by(runs.c.run_id.desc()).limit(1)
    ).first()
    last = None if row is None else dict(row._mapping)
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
    return Status(pub, age, stale, last, failed_at, problems)
