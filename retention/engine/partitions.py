"""Splitting a network's open caseload into partitions a worker computes on its own.

A partition is a set of whole caseloads (``retention.store.clinic_copy.caseload_key``).
Any split would rank correctly (each partition words reasons for its own top and its
caseloads' tops, a superset of what the whole list shows from it), but a split caseload
would have its top worded once per piece; whole caseloads word each row once and are
what the scoped read selects by. Whole clinics are kept together when they fit, so a
partition reads few clinics' rows; a clinic larger than a partition is split between
its caseloads. Memory on a worker then follows ``partition_episodes``, not the network.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date

from sqlalchemy import Connection, text

from retention.store.clinic_copy import CASELOAD_SQL, OPEN_EPISODES
from retention.store.tables import COPY_PREFIX


@dataclass(frozen=True)
class Caseload:
    key: str  # caseload_key
    clinic_id: str  # the clinic it belongs to (the first, for a manager in several)
    episodes: int  # open at the as-of date


@dataclass(frozen=True)
class Partition:
    number: int
    caseloads: tuple[str, ...]
    clinics: tuple[str, ...]
    episodes: int


def open_caseloads(connection: Connection, as_of: date) -> list[Caseload]:
    """Every caseload with episodes open at ``as_of``, with their count (from the copy)."""
    rows = connection.execute(text(
        f"SELECT {CASELOAD_SQL} AS caseload, min(c.clinic_id) AS clinic_id, count(*) AS n"
        f" FROM {COPY_PREFIX}episodes e JOIN {COPY_PREFIX}clients c"
        " ON c.client_id = e.client_id"
        f" WHERE e.episode_id IN ({OPEN_EPISODES}) GROUP BY 1"
    ), {"cut_day": as_of}).fetchall()
    return [Caseload(str(r.caseload), str(r.clinic_id), int(r.n)) for r in rows]


def plan(caseloads: Iterable[Caseload], limit: int) -> list[Partition]:
    """Caseloads packed in clinic order into partitions of at most ``limit`` open episodes.

    A clinic that fits in what is left of the current partition joins it, and one that
    does not starts the next; a clinic larger than ``limit`` is packed caseload by
    caseload. Only a single caseload larger than ``limit`` makes a larger partition.
    Deterministic: the same caseloads give the same partitions.
    """
    by_clinic: dict[str, list[Caseload]] = {}
    for c in sorted(caseloads, key=lambda c: (c.clinic_id, c.key)):
        by_clinic.setdefault(c.clinic_id, []).append(c)
    parts: list[list[Caseload]] = [[]]

    def add(group: Sequence[Caseload]) -> None:
        size = sum(c.episodes for c in group)
        if parts[-1] and sum(c.episodes for c in parts[-1]) + size > limit:
            parts.append([])
        parts[-1].extend(group)

    for group in by_clinic.values():
        if sum(c.episodes for c in group) <= limit:
            add(group)
        else:
            for caseload in group:
                add([caseload])
    return [Partition(number, tuple(c.key for c in part),
                      tuple(sorted({c.clinic_id for c in part})),
                      sum(c.episodes for c in part))
            for number, part in enumerate((p for p in parts if p), start=1)]
