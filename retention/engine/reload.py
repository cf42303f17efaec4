"""A full reload's key ranges read and checked on a Dask cluster's workers.

With ``[engine] kind = "dask"`` and ``[etl] reload_part_rows`` set, the job reads and
checks the small tables and exports its snapshot of the source (``retention.etl.parts``);
each range of the large tables is then a task. Its worker imports that snapshot, so every
range is read in the one state of the source the job's transaction holds open; it reads
with the source URL of its own environment (``RETENTION_SOURCE_URL``: the source's
credentials never travel with a task), checks the range with ``parts.check_range``, the
check the job's process runs, against the small tables' outcome (sent to every worker
once), appends the range's valid rows to the tables the job builds beside the copy
(``parts.land``, with the job's ``store_url``, as the nightly partitions read the store),
and hands back its rejects, tally and stamps. The job takes those in range order, so
the copy, the quarantine and the run's record are those of a reload read in one process,
row for row (tests/engine/test_reload_on_workers.py), and no range's rows pass through
the scheduler or the job.

At most ``RANGES_PER_WORKER`` ranges per worker are out at once. A range that fails is
run again by Dask (``network.RETRIES``), landing its rows at most once
(``bulk.land_beside``); one that still fails fails the run, and the tables built beside
the copy are dropped, the copy untouched.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Generator, Iterator
from dataclasses import replace

import pandas as pd
from distributed import Client, Future, KilledWorker
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from retention.db import pg_arrow
from retention.db.engines import source_engine
from retention.engine import network
from retention.engine.memory import peak_rss_mib
from retention.etl import extract, parts
from retention.etl.extract import SourceError, SourceUnavailable
from retention.etl.validation import Context
from retention.settings import EngineSettings

log = logging.getLogger(__name__)

# Ranges handed to each worker ahead of the one the job takes next: enough that none idles
# while the job appends, few enough that results waiting to be taken stay small.
RANGES_PER_WORKER = 2
SOURCE_URL_ENV = "RETENTION_SOURCE_URL"


class RangeFailed(SourceError):
    """A range kept killing the Dask workers that read it: nothing was swapped in."""


class LandingFailed(RuntimeError):
    """A worker could not append its range's rows to the store: nothing was swapped in."""


def checked_on_workers(engine: EngineSettings) -> parts.CheckRanges:
    """``parts.CheckRanges`` on the cluster ``engine`` names."""

    def check(job: parts.RangeJob,
              ranges: Iterator[parts.Range]) -> Generator[parts.RangeChecked, None, None]:
        with network.connect(engine) as client:
            yield from _in_order(client, job, ranges)

    return check


def _in_order(client: Client, job: parts.RangeJob,
              ranges: Iterator[parts.Range]) -> Iterator[parts.RangeChecked]:
    """The ranges' results in their order, ``RANGES_PER_WORKER`` per worker out at once."""
    against, clients = client.scatter([job.against, job.clients], broadcast=True, hash=False)
    window = RANGES_PER_WORKER * max(1, len(client.scheduler_info()["workers"]))
    token = uuid.uuid4().hex  # Dask would hand back a finished task of the same key
    out: deque[tuple[str, Future]] = deque()
    submitted = 0
    try:
        while True:
            while len(out) < window and (following := next(ranges, None)) is not None:
                submitted += 1
                out.append((following[0], client.submit(
                    check_on_worker, job.reading, against, clients, job.landing, following,
                    key=f"retention-range-{token}-{submitted}", retries=network.RETRIES,
                    pure=False)))
            if not out:
                return
            which, future = out.popleft()
            try:
                landed: parts.RangeChecked = future.result()
            except KilledWorker as exc:
                raise RangeFailed(
                    f"{which} kept killing the Dask workers that read it (Dask gives up "
                    "after distributed.scheduler.allowed-failures deaths), most likely by "
                    "running out of memory: lower [etl] reload_part_rows or raise the "
                    "workers' --memory-limit (docs/network.md); the copy is unchanged") from exc
            finally:
                future.release()
            log.info("full reload in parts: %s on Dask worker %s (its peak %d MiB)",
                     which, landed.worker, landed.worker_peak_rss_mib)
            yield landed
    finally:
        client.cancel([f for _, f in out] + [against, clients])


def check_on_worker(reading: parts.RangeReading, against: Context, clients: pd.DataFrame,
                    landing: parts.Landing, range_: parts.Range) -> parts.RangeChecked:
    """One range, on a worker: read in the job's snapshot, checked as the job checks, its
    valid rows appended to the tables built beside the copy (``parts.land``)."""
    started = time.perf_counter()
    which, statements = range_
    try:
        with extract.read_errors():
            url = _source_url()
            if not reading.allow_superuser:
                _role_checked(url)
            frames = extract.read_in_snapshot(make_url(url), reading.snapshot, statements,
                                              reading.mapping, reading.connections)
    except SourceError as exc:
        # Said again as a plain error of its kind: the job gets it back pickled, and the
        # driver's exception chained to it may not unpickle there.
        kind = SourceUnavailable if exc.transient else SourceError
        raise kind(f"{which}, read on Dask worker {network.worker_address()}: {exc} (each "
                   f"worker reads in the job's snapshot with the {SOURCE_URL_ENV} of its own "
                   "environment: the job's source database, as a least-privilege role)"
                   ) from None
    checked = parts.check_range(which, frames, against, clients, reading.max_days_ahead)
    del frames
    try:
        checked = parts.land(checked, landing)
    except pg_arrow.Error as exc:
        raise LandingFailed(f"{which}, landed by Dask worker {network.worker_address()}: "
                            f"{exc} (each worker appends its ranges' rows to the store with "
                            "the job's store_url: it must reach the store)") from None
    seconds = round(time.perf_counter() - started, 3)
    log.info("full reload in parts: %s on this worker in %.1f s", which, seconds)
    return replace(checked, worker=network.worker_address(), worker_seconds=seconds,
                   worker_peak_rss_mib=peak_rss_mib())


@functools.cache
def _role_checked(url: str) -> None:
    """The worker's source role refused as the job's is (``extract.check_source_role``):
    it runs the job's mapped queries. Once per worker process; a refusal is not kept."""
    engine = source_engine(url)
    try:
        with engine.connect() as conn:
            extract.check_source_role(conn)
    finally:
        engine.dispose()


def _source_url() -> str:
    """The source as this worker reaches it: its own environment's, never the job's."""
    value = os.environ.get(SOURCE_URL_ENV, "")
    if not value:
        raise SourceError(
            f"Dask worker {network.worker_address()} has no {SOURCE_URL_ENV}: a full reload "
            "in parts on the Dask engine reads the source on the workers, each with the "
            "source's read-only role in its own environment (docs/network.md)")
    try:
        make_url(value)
    except ArgumentError:
        raise SourceError(f"Dask worker {network.worker_address()}: {SOURCE_URL_ENV} is "
                          "not a database URL") from None
    return value
