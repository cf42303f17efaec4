"""The publish guard: a list that moved too far since the last one waits for a person.

A mapping typo that quarantines a program, or an EHR status code the mapping no longer
knows, breaks no rule of the scoring job: the list is simply thinner or swollen, and a
case manager cannot tell. So before a list is published its open episodes and its high
tier are counted per clinic and per clinic and program and compared with the last
published list; a move beyond ``publish_max_change_share`` (of at least
``publish_min_change`` episodes) stops the list until an operator accepts it with a
reason (``retention score --accept-change``). The job that reads and publishes is
``retention.pipelines.scoring``; this module only counts and compares.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from retention.settings import Settings

# What is counted in each group, as the message names it.
MEASURES = {"open": "open episodes", "high": "high tier"}
# A refusal lists at most this many moves; the run's detail keeps them all.
MAX_LISTED = 12

# (clinic_id, program or None for the whole clinic, measure) -> count.
Key = tuple[str, str | None, str]


class PublishRefused(RuntimeError):
    """The list moved beyond the guard's limits since the last publication; nothing was
    published, and the message says what moved and how to accept it."""


@dataclass(frozen=True)
class Acceptance:
    """An operator's word that a large move in the list is real: why, and who gave it."""

    reason: str
    by: str


def tally(rows: Iterable[tuple[str, str, str, int]]) -> Counter[Key]:
    """Open episodes and high-tier episodes per clinic and per clinic and program, from
    ``(clinic_id, program, tier, n)``: the same counting for a list to publish and a
    published one."""
    counts: Counter[Key] = Counter()
    for clinic, program, tier, n in rows:
        for where in (None, program):
            counts[(clinic, where, "open")] += n
            if tier == "high":
                counts[(clinic, where, "high")] += n
    return counts


@dataclass(frozen=True)
class Move:
    """One count that moved beyond the limits between the last list and this one."""

    clinic_id: str
    program: str | None  # None: the whole clinic
    measure: str  # a key of MEASURES
    before: int
    after: int

    def describe(self) -> str:
        where = self.clinic_id if self.program is None else f"{self.clinic_id} / {self.program}"
        share = f"{(self.after - self.before) / self.before:+.0%}" if self.before else "from none"
        return f"{where}: {MEASURES[self.measure]} {self.before} -> {self.after} ({share})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "clinic_id": self.clinic_id,
            "program": self.program,
            "measure": self.measure,
            "before": self.before,
            "after": self.after,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Move:
        """A move as a run's detail keeps it."""
        return cls(
            str(raw["clinic_id"]),
            raw["program"],
            str(raw["measure"]),
            int(raw["before"]),
            int(raw["after"]),
        )


def moves(
    before: Counter[Key], after: Counter[Key], max_share: float, min_change: int
) -> list[Move]:
    """Counts that moved by more than ``max_share`` of their last value and by at least
    ``min_change``: the share stops a large clinic's list, the minimum keeps a small
    program's few episodes from stopping a whole clinic's."""
    out = []
    for key in sorted(set(before) | set(after), key=lambda k: (k[0], k[1] or "", k[2] != "open")):
        was, now = before[key], after[key]
        if abs(now - was) >= min_change and abs(now - was) > max_share * was:
            out.append(Move(key[0], key[1], key[2], was, now))
    return out


@dataclass(frozen=True)
class Comparison:
    """This list against the last published one: what moved beyond the limits."""

    as_of: date
    baseline: date | None  # the as-of date of the last list published before ``as_of``
    max_share: float
    min_change: int
    moves: list[Move] = field(default_factory=list)
    scored: int = 0
    baseline_scored: int | None = None
    model_version: str | None = None
    baseline_model: str | None = None

    @property
    def exceeded(self) -> bool:
        """Whether anything moved beyond the limits: the list waits for an acceptance."""
        return bool(self.moves)

    def detail(
        self, accepted: Acceptance | None = None, at: datetime | None = None
    ) -> dict[str, Any]:
        """For the run's detail: the comparison, every move, and the acceptance if given."""
        out: dict[str, Any] = {
            "baseline": self.baseline.isoformat() if self.baseline else None,
            "max_change_share": self.max_share,
            "min_change": self.min_change,
            "scored": self.scored,
            "baseline_scored": self.baseline_scored,
            "moves": [m.to_dict() for m in self.moves],
            "refused": self.exceeded and accepted is None,
        }
        if accepted is not None:
            out["accepted"] = {
                "reason": accepted.reason,
                "by": accepted.by,
                "at": at.isoformat(timespec="seconds") if at else None,
            }
        return out

    def refusal(self) -> str:
        """Why the list was not published, what moved, and how to publish it anyway."""
        lines = [
            f"the list for {self.as_of} was not published: since the list published for "
            f"{self.baseline} these counts moved by more than publish_max_change_share "
            f"({self.max_share:.0%}) and by at least publish_min_change ({self.min_change}):"
        ]
        lines += [f"  {m.describe()}" for m in self.moves[:MAX_LISTED]]
        if len(self.moves) > MAX_LISTED:
            lines.append(f"  and {len(self.moves) - MAX_LISTED} more (all in the run's detail)")
        if self.baseline_model and self.baseline_model != self.model_version:
            lines.append(
                f"The model changed since ({self.baseline_model} -> "
                f"{self.model_version}): a new model can move the high tier."
            )
        lines.append(
            f"The list of {self.baseline} stays served, marked stale once a day old. Find the "
            "cause first (`retention quality`, the [etl] mapping, the clinic's EHR); if the "
            f"change is real, publish it with `retention score --as-of {self.as_of} "
            '--accept-change "reason"`; if moves this large are normal for a clinic, raise '
            "publish_max_change_share or publish_min_change in the config file."
        )
        return "\n".join(lines)


def compare(
    settings: Settings,
    as_of: date,
    model_version: str,
    rows: Iterable[dict[str, Any]],
    baseline: dict[str, Any] | None,
    baseline_counts: Iterable[tuple[str, str, str, int]] = (),
) -> Comparison:
    """Compare the rows about to be published with ``baseline``, the last publication
    (``publications`` row) and its counts by clinic, program and tier; with no baseline,
    the first list ever, there is nothing to compare with."""
    rows = list(rows)
    share, least = settings.publish_max_change_share, settings.publish_min_change
    if baseline is None:
        return Comparison(as_of, None, share, least, scored=len(rows), model_version=model_version)
    after = tally((r["clinic_id"], r["program"], r["tier"], 1) for r in rows)
    return Comparison(
        as_of,
        baseline["as_of"],
        share,
        least,
        moves(tally(baseline_counts), after, share, least),
        scored=len(rows),
        baseline_scored=int(baseline["n_scored"]),
        model_version=model_version,
        baseline_model=baseline["model_version"],
    )
