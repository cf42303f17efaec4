"""The nightly job: ETL then scoring for one as-of date, with engines owned here.

``run_slot`` is what the scheduler runs: at most one nightly run per date across
every process that might start it (a database lock, then a check that the date's
list is not already published), retried with backoff while a database is
unreachable or timed out. An error that would only repeat (a mapping's SQL refused, a
table gone, too many bad rows) fails the night at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

from sqlalchemy import Engine, inspect
from sqlalchemy.exc import DBAPIError

from retention.db import errors, locks
from retention.db.engines import store_engine
from retention.etl.extract import SourceError
from retention.etl.sources import open_source
from retention.model import artifacts, signing
from retention.pipelines.etl import EtlResult, ranges_checker, run_etl
from retention.pipelines.scoring import ScoreResult, network_scoring, run_scoring
from retention.reasons.catalogue import load_catalogue
from retention.settings import Settings
from retention.store.lists import latest_publication

log = logging.getLogger(__name__)

LOCK_NAME = locks.NIGHTLY


def is_retryable(exc: BaseException) -> bool:
    """Worth another try later: the source or the store could not be reached or timed out
    (not a query refused, a table missing or bad rows: those fail the same way again)."""
    if isinstance(exc, SourceError):
        return exc.transient
    if isinstance(exc, DBAPIError):
        return errors.is_transient(exc)
    return isinstance(exc, OSError)


@dataclass(frozen=True)
class NightlyResult:
    etl: EtlResult | None
    score: ScoreResult | None
    skipped: str | None = None  # why nothing ran, when nothing did


def run_nightly(settings: Settings, as_of: date, *, full: bool | None = None) -> NightlyResult:
    """Extract, compute features and publish the scored list for ``as_of``.

    The model and reason catalogue are checked before any data is read, so a
    bad model fails the run early and the last good list stays published.
    """
    model = artifacts.load(settings.models_dir, key=signing.model_key(settings))
    catalogue = load_catalogue(settings.reasons_file, settings.instruments)
    etl = settings.etl
    source = open_source(settings.source_url, settings.etl, settings.instruments)
    store_db = store_engine(settings.store_url)
    try:
        if settings.engine.kind == "dask":
            # The copy here; features, scores and reasons on the workers, published here.
            extracted = run_etl(source, store_db, as_of, etl, full=full,
                                registry=settings.instruments, features=False,
                                check_ranges=ranges_checker(settings))
            scored = network_scoring()(settings, store_db, model, catalogue, as_of)
            return NightlyResult(extracted, scored)
        extracted = run_etl(source, store_db, as_of, etl, full=full,
                            registry=settings.instruments)
        handed = None if extracted.scoped is None or extracted.copy_version is None else (
            extracted.scoped, extracted.copy_version)
        scored = run_scoring(settings, store_db, model, catalogue, as_of, handed)
    finally:
        source.dispose()
        store_db.dispose()
    return NightlyResult(extracted, scored)


def run_slot(
    settings: Settings,
    as_of: date,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> NightlyResult:
    """The nightly run for one date, once, whichever process gets there first.

    Holds a lock on the store (PostgreSQL advisory lock, a lock file beside a
    SQLite store) for the whole run: a second process finds it taken and stands
    down; one that comes after finds the date's list published and does nothing.
    A run that fails because a database is unreachable is recorded as failed and
    tried again after ``retry_delay_seconds``, growing by ``retry_backoff``; the
    last good list stays published meanwhile.
    """
    etl = settings.etl
    store_db = store_engine(settings.store_url)
    try:
        with locks.try_lock(store_db, LOCK_NAME) as got:
            if not got:
                return NightlyResult(None, None, "another process is running the nightly job")
            if is_published(store_db, as_of):
                return NightlyResult(None, None, f"the list for {as_of} is already published")
            for attempt in range(1, etl.retry_attempts + 1):
                try:
                    return run_nightly(settings, as_of)
                except Exception as exc:
                    if not is_retryable(exc) or attempt == etl.retry_attempts:
                        raise
                    wait = etl.retry_delay_seconds * etl.retry_backoff ** (attempt - 1)
                    log.warning("nightly run for %s failed (attempt %d of %d: %s); "
                                "retrying in %.0f s", as_of, attempt, etl.retry_attempts,
                                type(exc).__name__, wait)
                    sleep(wait)
            raise AssertionError("unreachable")
    finally:
        store_db.dispose()


def is_published(store_db: Engine, as_of: date) -> bool:
    """Whether a list for ``as_of`` is published (False for a store not yet set up)."""
    with store_db.connect() as conn:
        if "publications" not in inspect(conn).get_table_names():
            return False
        return latest_publication(conn, as_of) is not None
