"""A full reload from a PostgreSQL source in parts: the job holds a part, not the network.

A first night read and held every row at once, about 4.2 GiB per 100,000 clients
(docs/performance.md): a million clients would not fit one machine. Here the tables
the others look up (``LOOKED_UP``: clients, episodes, consents, identifiers, contacts;
under 2% of a network's rows) are read and checked whole, and the rest in ranges of
their keys (``FAMILIES``), all in one exported snapshot: each range is checked against
the first tables' ``reference``, its valid rows appended to the tables built beside
the copy (``bulk.BesideBuilds``; on the Dask engine by the worker that checked it) and
let go. The limits are judged on the ranges' tallies added up, and ``load.apply`` swaps
the tables in as it does a whole reload's. The outcome is a whole reload's, row for row
(tests/etl/test_partitioned_reload.py); the check is the same ``validate``, the rows
the same reads, only cut by key.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, closing
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from itertools import pairwise

import pandas as pd
from sqlalchemy import URL, Connection, Engine

from retention.clinic.registry import Registry
from retention.db import bulk, pg_arrow
from retention.db.engines import SOURCE_CONNECT_ARGS
from retention.etl import extract, load
from retention.etl.quarantine import Tally, count
from retention.etl.validation import (
    LOOKED_UP,
    LOOKING_UP,
    ORDER,
    Context,
    Outcome,
    reference,
    rejects_in_order,
    validate,
)
from retention.settings import EtlSettings, SourceMapping
from retention.store import tables

log = logging.getLogger(__name__)

# A range checked: its outcome, its tally, the newest updated_at of each table it read.
Part = tuple[Outcome, Tally, dict[str, pd.Timestamp | None]]
# A range to read: its name in the progress log, and each of its tables' statement.
Range = tuple[str, list[tuple[str, str]]]


@dataclass(frozen=True)
class RangeReading:
    """How any range is read and checked, less the source's URL: what a Dask task carries."""

    snapshot: str
    mapping: SourceMapping
    connections: int
    max_days_ahead: int
    allow_superuser: bool  # [etl] allow_superuser_source: a reader's role is not checked


@dataclass(frozen=True)
class Landing:
    """Where a checker that runs outside the job (a Dask worker) appends a range's valid
    rows itself: the store, and the landing table of the tables built beside its copy
    (``bulk.BesideBuilds``). The URL holds the store role's password, as the nightly
    partitions' ``store_url`` does: it is kept out of the dataclass's repr, which a failed
    task's log would print."""

    store: URL = field(repr=False)
    table: str


@dataclass(frozen=True)
class RangeJob:
    """What reading and checking any range takes: how (``reading``), and the small tables'
    outcome to check against. ``url`` is the job's source, for ranges read in its
    process; a Dask worker reads with its own (``retention.engine.reload``) and lands the
    range's rows in the store itself (``landing``)."""

    url: URL
    reading: RangeReading
    against: Context
    clients: pd.DataFrame  # each client read, with its clinic: the tally's clinics
    landing: Landing


@dataclass(frozen=True)
class RangeChecked:
    which: str  # the range's name, as ``Range`` gives it
    rows_read: int
    part: Part
    worker: str = ""  # the Dask worker that read and checked it; "" in the job
    worker_seconds: float = 0.0  # how long it took there
    worker_peak_rss_mib: int = 0  # that worker process's peak after it
    # The rows its checker appended to the tables beside the copy itself, by table name
    # (``land``); None: the job appends ``part``'s valid rows.
    landed: dict[str, int] | None = None


# Reads and checks the ranges given, in their order: in the job (``checked_here``) or on
# a Dask cluster's workers (``retention.engine.reload.checked_on_workers``).
CheckRanges = Callable[[RangeJob, Iterator[Range]], Generator[RangeChecked, None, None]]

# The large tables, by the key each is cut by: a measure's items go with it (they are
# checked against its total), so every row of a key, duplicates too, is in one range.
FAMILIES = (("appointment_id", ("appointments",)),
            ("measure_id", ("alliance_measures", "alliance_items")),
            ("observation_id", ("session_observations",)))


@dataclass
class Staged:
    """A full reload checked, its large tables built beside the copy but not swapped in:
    ``finish`` indexes and commits them (their rows, by name), ``drop`` gives them up."""

    checked: load.Checked
    clock: datetime  # the source's, when the snapshot was taken
    builds: bulk.BesideBuilds
    parts: dict[str, int] = field(default_factory=dict)  # ranges read, per family's first table
    # The Dask workers that read ranges: each one's ranges, the rows it landed, their
    # seconds, its peak MiB.
    workers: dict[str, dict[str, float]] = field(default_factory=dict)
    waited_s: float = 0.0  # the job's time waiting for ranges read and checked

    def finish(self) -> dict[str, int]:
        return self.builds.finish()

    def drop(self) -> None:
        self.builds.drop()


def reload_in_parts(source: Engine, store: Engine, etl: EtlSettings, registry: Registry,
                    held: Callable[[str], int],
                    lap: Callable[[str], None] = lambda _stage: None,
                    check_ranges: CheckRanges | None = None) -> Staged:
    """Read, check and stage a full reload of ``source`` in ranges of about
    ``etl.reload_part_rows`` rows, each read and checked by ``check_ranges`` (in this
    process by default). ``lap`` marks the end of the small tables' read and check,
    "extract", and of the ranges', "parts"."""
    check_ranges = check_ranges or checked_here
    mapping = etl.mapping
    with ExitStack() as stack:
        with extract.read_errors():
            conn, clock = stack.enter_context(extract.source_snapshot(
                source, allow_superuser=etl.allow_superuser_source))
            missing = extract.missing_optional(conn, mapping, held)
            snapshot = extract.export_snapshot(conn)
            read = partial(extract.read_in_snapshot, source.url, snapshot, mapping=mapping,
                           connections=etl.source_connections)
            small = {**missing, **read([(t, _select(mapping, t)) for t in LOOKED_UP
                                        if t not in missing])}
        # The server sorts each family's keys for its bounds while the job checks (the
        # measures' take longest, and are needed last).
        aside = stack.enter_context(ThreadPoolExecutor(max_workers=1))
        ranges = {family[0]: aside.submit(_ranges, conn, source, snapshot, mapping, family,
                                          missing, etl.reload_part_rows)
                  for family in FAMILIES}
        first = validate(small, Context(registry=registry), max_days_ahead=etl.max_days_ahead)
        tally = count(first, {t: len(small[t]) if t in LOOKED_UP else 0 for t in ORDER})
        newest = load.newest_stamps(small)
        del small
        lap("extract")
        builds = bulk.BesideBuilds(store, [tables.copies[t] for t in LOOKING_UP])
        try:
            # Of the clients, what a range's tally finds its rows' clinics by: every
            # worker holds it, so not their other columns.
            clinics = first.checked["clients"][["client_id", "clinic_id"]]
            reading = RangeReading(snapshot, mapping, etl.source_connections,
                                   etl.max_days_ahead, etl.allow_superuser_source)
            landing = Landing(store.url, builds.landing)
            job = RangeJob(source.url, reading, reference(first, registry), clinics, landing)
            checked_ranges = stack.enter_context(closing(
                check_ranges(job, _statements(mapping, ranges, missing))))
            rejects, last = [first.rejects], first
            workers: dict[str, dict[str, float]] = {}
            timed = _Timed(checked_ranges)
            for done in timed:
                outcome, part_tally, part_newest = done.part
                tally += part_tally
                newest = {t: _later(newest[t], part_newest[t]) for t in newest}
                rejects.append(outcome.rejects)
                if done.landed is not None:  # by a Dask worker
                    builds.landed(done.landed)
                else:
                    for table in LOOKING_UP:
                        builds.append(tables.copies[table], outcome.valid[table])
                last = outcome
                _count_worker(workers, done)
                # Progress for whoever watches a long first night; counts only, no values.
                n_held = int(outcome.rejects["n_rows"].sum()) if len(outcome.rejects) else 0
                log.info("full reload in parts: %s read and checked: %d rows, %d held",
                         done.which, done.rows_read, n_held)
            with extract.read_errors():
                stack.close()
        except BaseException:
            builds.drop()
            raise
    lap("parts")
    outcome = _whole(first, last, rejects)
    n_ranges = {tables_[0]: len(ranges[key].result()) for key, tables_ in FAMILIES}
    log.info("full reload in parts: %s", ", ".join(f"{t} {n}" for t, n in n_ranges.items()))
    checked = load.checked_from(outcome, tally, outcome.checked, etl, newest)
    checked.detail["checked"] = dict(checked.detail["read"])  # every row read was checked
    return Staged(checked, clock, builds, n_ranges, workers,
                  round(timed.waited, 3))


def _count_worker(workers: dict[str, dict[str, float]], done: RangeChecked) -> None:
    """Add a range a Dask worker read to its ranges, the rows it landed, their seconds and
    its peak MiB."""
    if not done.worker:
        return
    seen = workers.setdefault(done.worker,
                              {"ranges": 0, "rows": 0, "seconds": 0.0, "peak_rss_mib": 0})
    seen["ranges"] += 1
    seen["rows"] += sum((done.landed or {}).values())
    seen["seconds"] = round(seen["seconds"] + done.worker_seconds, 3)
    seen["peak_rss_mib"] = max(seen["peak_rss_mib"], done.worker_peak_rss_mib)


def _select(mapping: SourceMapping, table: str, where: str = "") -> str:
    """A whole table's statement, as a full reload reads it, cut by ``where``."""
    sql = extract.full_statement(mapping, table)
    return f"{sql} WHERE {where}" if where else sql


def _ranges(conn: Connection, source: Engine, snapshot: str, mapping: SourceMapping,
            family: tuple[str, tuple[str, ...]], missing: dict[str, pd.DataFrame],
            part_rows: int) -> list[str]:
    """The conditions that cut a family's tables into ranges of about ``part_rows`` of
    their rows together, as the source orders the key (its type, its collation): every
    row in exactly one, those without a key in the first."""
    key, members = family
    present = [t for t in members if t not in missing]
    if not present:
        return [""]
    bounds = _bounds(source, snapshot, mapping, present, key, part_rows)
    if not bounds:
        return [""]

    def bound(value: str) -> str:
        return extract.untyped_literal(conn, value)

    column = f"src.{key}"
    cuts = [f"({column} < {bound(bounds[0])} OR {column} IS NULL)"]
    cuts += [f"{column} >= {bound(lo)} AND {column} < {bound(hi)}"
             for lo, hi in pairwise(bounds)]
    cuts.append(f"{column} >= {bound(bounds[-1])}")
    return cuts


def _bounds(source: Engine, snapshot: str, mapping: SourceMapping, members: list[str],
            key: str, part_rows: int) -> list[str]:
    """Every ``part_rows``-th key of the family's rows (a measure's and each of its items'
    count), in the server's order, as text, after the first: where its ranges start. A
    key repeated past a bound is one bound, so all its rows stay in one range. The
    server's work: a sort of the keys (9 s for the 26 million measures and items of a
    100,000-client network, docs/performance.md)."""
    keys_of = " UNION ALL ".join(f"SELECT m.{key} AS k FROM ({mapping.query(t)}) m"
                                 for t in members)
    sql = (f"SELECT b.k FROM (SELECT src.k::text AS k, row_number() OVER (ORDER BY src.k) "
           f"AS n FROM ({keys_of}) src WHERE src.k IS NOT NULL) b "
           f"WHERE mod(b.n - 1, {int(part_rows)}) = 0 ORDER BY b.n")
    with pg_arrow.in_snapshot(source.url, snapshot, SOURCE_CONNECT_ARGS) as reader:
        try:
            keys = pg_arrow.read(reader, sql).column(0).to_pylist()
        except pg_arrow.Error as exc:
            raise extract.read_failure(members[0], mapping, exc) from exc
    return list(dict.fromkeys(str(k) for k in keys[1:] if k != keys[0]))


class _Timed:
    """Ranges as they come, and how long the job waited for them (``waited``: seconds)."""

    def __init__(self, ranges: Iterator[RangeChecked]) -> None:
        self._ranges = ranges
        self.waited = 0.0

    def __iter__(self) -> _Timed:
        return self

    def __next__(self) -> RangeChecked:
        started = time.perf_counter()
        try:
            return next(self._ranges)
        finally:
            self.waited += time.perf_counter() - started


def check_range(which: str, frames: dict[str, pd.DataFrame], against: Context,
                clients: pd.DataFrame, max_days_ahead: int) -> RangeChecked:
    """The range ``which``'s rows checked against the small tables, with its tally and
    newest stamps; of the outcome only what the reload keeps (the valid rows and rejects:
    the rows given, typed, are the range's size again). The one check of a range,
    wherever it runs."""
    outcome = validate(frames, against, max_days_ahead=max_days_ahead)
    n_read = {t: len(frames[t]) if t in frames else 0 for t in ORDER}
    tally = count(outcome, n_read, clients=clients)
    slim = Outcome(valid=outcome.valid, rejects=outcome.rejects,
                   checked={t: f.iloc[:0] for t, f in outcome.checked.items()},
                   ok={t: s.iloc[:0] for t, s in outcome.ok.items()})
    return RangeChecked(which, sum(n_read.values()),
                        (slim, tally, load.newest_stamps(frames)))


def land(checked: RangeChecked, landing: Landing) -> RangeChecked:
    """A range checked outside the job, its valid rows appended to the tables built beside
    the copy by this process (once, however often it runs: ``bulk.land_beside``), and let
    go: what travels back to the job is its rejects, tally and stamps."""
    outcome, tally, newest = checked.part
    frames = [(tables.copies[t], outcome.valid[t]) for t in LOOKING_UP]
    bulk.land_beside(landing.store, landing.table, checked.which, frames)
    landed = {table.name: len(frame) for table, frame in frames}
    kept = replace(outcome, valid={t: f.iloc[:0] for t, f in outcome.valid.items()})
    return replace(checked, part=(kept, tally, newest), landed=landed)


def checked_here(job: RangeJob, ranges: Iterator[Range]) -> Generator[RangeChecked, None, None]:
    """Each range read in the job's process (the next one read meanwhile, on a thread of
    its own: the reads wait on the server, the checks on Python) and checked."""
    how = job.reading
    read = partial(extract.read_in_snapshot, job.url, how.snapshot, mapping=how.mapping,
                   connections=how.connections)

    def next_read() -> tuple[str, dict[str, pd.DataFrame]] | None:
        following = next(ranges, None)
        return None if following is None else (following[0], read(following[1]))

    with ThreadPoolExecutor(max_workers=1) as ahead:
        coming = ahead.submit(next_read)
        while True:
            # A driver's error while reading is the source's; the caller's own work (the
            # store's, between ranges) is not wrapped.
            with extract.read_errors():
                landed = coming.result()
            if landed is None:
                return
            coming = ahead.submit(next_read)
            which, frames = landed
            del landed
            checked = check_range(which, frames, job.against, job.clients, how.max_days_ahead)
            del frames
            yield checked


def _statements(mapping: SourceMapping, ranges: dict[str, Future[list[str]]],
                missing: dict[str, pd.DataFrame]) -> Iterator[Range]:
    """Every range's statements, family by family, named for the progress log."""
    for key, members in FAMILIES:
        with extract.read_errors():  # the bounds are the source's work
            cuts = ranges[key].result()
        for n, cut in enumerate(cuts, start=1):
            yield (f"{members[0]} range {n} of {len(cuts)}",
                   [(t, _select(mapping, t, cut)) for t in members if t not in missing])


def _whole(first: Outcome, last: Outcome, rejects: list[pd.DataFrame]) -> Outcome:
    """The outcome ``load.apply`` takes: the small tables' rows, every range's rejects, and
    no rows of the large tables (those are built beside the copy already)."""
    return Outcome(valid={t: last.valid[t].iloc[:0] if t in LOOKING_UP else first.valid[t]
                          for t in ORDER},
                   rejects=rejects_in_order(rejects),
                   checked={t: last.checked[t].iloc[:0] if t in LOOKING_UP
                            else first.checked[t] for t in ORDER},
                   ok={t: last.ok[t].iloc[:0] if t in LOOKING_UP else first.ok[t]
                       for t in ORDER})


def _later(a: pd.Timestamp | None, b: pd.Timestamp | None) -> pd.Timestamp | None:
    if a is None or b is None:
        return b if a is None else a
    return max(a, b)
