"""A full reload in parts read and checked on a real Dask cluster's workers, against the
same reload read whole in the job.

The workers are `dask worker` processes on loopback, each with the source's URL in its
own environment (``RETENTION_SOURCE_URL``), none from the job. They read their ranges in
the job's exported snapshot and check them with the job's check: the copy, quarantine,
watermarks and run record must be what one read of everything gives, and a worker that
cannot read in that snapshot must fail the run with the copy as it was.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from retention.clock import FixedClock
from retention.db.engines import source_engine, store_engine
from retention.etl.extract import SourceError
from retention.etl.parts import Landing, RangeReading
from retention.etl.validation import LOOKING_UP, Context
from retention.pipelines.etl import EtlResult, ranges_checker, run_etl
from retention.settings import EngineSettings, EtlSettings, Settings
from retention.store import tables
from tests.etl.test_partitioned_reload import (
    NEXT_NIGHT,
    NIGHT,
    PART_ROWS,
    assert_failed_and_kept,
    assert_parts,
    held_rules,
    judged,
    record,
    settings,
    watermarks,
)
from tests.support.apps import free_port
from tests.support.broken import BROKEN_RULES, broken_network
from tests.support.dask_cluster import Cluster, require, start_cluster
from tests.support.pg import drop_database, new_database
from tests.support.sources import AS_OF, Source, stored

reload = require("retention.engine.reload")
EngineUnavailable = require("retention.engine.network").EngineUnavailable

pytestmark = pytest.mark.slow

# For checks that fail before landing.
NOWHERE = Landing(make_url("postgresql://nowhere.invalid/none"), "beside_landed_0123456789abcdef")


@pytest.fixture(scope="module")
def broken(pg_server: str) -> Iterator[Source]:
    """The broken network as a text-only PostgreSQL clinic, for the module's clusters."""
    url = new_database(pg_server, "clinic")
    src = Source.loose_frames(url, broken_network(AS_OF))
    yield src
    src.dispose()
    drop_database(url, pg_server)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, broken: Source,
            model_key_home: Path) -> Iterator[Cluster]:
    """Two workers that read the clinic with the URL of their own environment."""
    with start_cluster(tmp_path_factory.mktemp("reload-cluster"), workers=2,
                       env={reload.SOURCE_URL_ENV: broken.url}) as started:
        yield started


@pytest.fixture
def stores(pg_databases: Callable[[str], str]) -> Iterator[tuple[Engine, Engine]]:
    pair = store_engine(pg_databases("whole")), store_engine(pg_databases("workers"))
    yield pair
    for engine in pair:
        engine.dispose()


def on_workers(src: Source, store_db: Engine, etl_settings: EtlSettings, scheduler: str,
               as_of: date = AS_OF, clock: FixedClock = NIGHT) -> EtlResult:
    """A full reload whose ranges the cluster at ``scheduler`` reads and checks, found as
    the jobs find it."""
    check = ranges_checker(Settings(source_url=src.url, store_url="",
                                    engine=EngineSettings(kind="dask", scheduler=scheduler)))
    assert check is not None
    source = source_engine(src.url)
    try:
        return run_etl(source, store_db, as_of, etl_settings, full=True, clock=clock,
                       check_ranges=check)
    finally:
        source.dispose()


def in_job(src: Source, store_db: Engine, etl_settings: EtlSettings) -> EtlResult:
    source = source_engine(src.url)
    try:
        return run_etl(source, store_db, AS_OF, etl_settings, full=True, clock=NIGHT)
    finally:
        source.dispose()


def test_ranges_checked_on_the_workers_store_what_a_whole_reload_does(
    broken: Source, stores: tuple[Engine, Engine], cluster: Cluster,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every range goes to a worker, both workers take some, and the outcome is one read
    of everything in the job's process: copy, quarantine, watermarks, record."""
    whole_db, workers_db = stores
    caplog.set_level(logging.INFO, logger="retention")
    whole = in_job(broken, whole_db, settings(0))
    parts = on_workers(broken, workers_db, settings(PART_ROWS), cluster.address)
    expected, got = record(whole_db, whole.run_id), record(workers_db, parts.run_id)
    assert (expected["status"], got["status"]) == ("succeeded", "succeeded")
    assert_parts(got["detail"])

    assert stored(workers_db) == stored(whole_db)
    assert watermarks(workers_db) == watermarks(whole_db)
    assert judged(got["detail"]) == judged(expected["detail"])
    assert ((parts.rows_read, parts.rows_quarantined, parts.open_episodes)
            == (whole.rows_read, whole.rows_quarantined, whole.open_episodes))
    assert held_rules(workers_db) == BROKEN_RULES

    # Each range is said once where it ran and once as it landed, in the ranges' order.
    ran = [re.fullmatch(r"full reload in parts: (\w+ range \d+ of \d+) on Dask worker "
                        r"(tcp://127\.0\.0\.1:\d+) \(its peak \d+ MiB\)", r.getMessage())
           for r in caplog.records if "Dask worker" in r.getMessage()]
    landed = [m[1] for r in caplog.records
              if (m := re.fullmatch(r"full reload in parts: (\w+ range \d+ of \d+) read and "
                                    r"checked: \d+ rows, \d+ held", r.getMessage()))]
    assert ran and all(ran)
    assert [m[1] for m in ran if m is not None] == landed
    assert len(landed) == sum(got["detail"]["parts"].values())
    workers = cluster_workers(cluster)
    assert {m[2] for m in ran if m is not None} == set(workers)
    # The record says where the ranges ran, and what each worker process held at most.
    on = got["detail"]["parts_on_workers"]
    assert sorted(on) == workers
    assert sum(w["ranges"] for w in on.values()) == len(landed)
    # The workers appended every row of the large tables themselves.
    with workers_db.connect() as conn:
        large = sum(conn.execute(text(f"SELECT count(*) FROM {tables.copies[t].name}")).scalar_one()
                    for t in LOOKING_UP)
    assert large > 0 and sum(w["rows"] for w in on.values()) == large
    assert all(w["peak_rss_mib"] > 100 for w in on.values())  # a Python process with pandas
    assert all(w["seconds"] > 0 for w in on.values())
    assert 0 < got["detail"]["parts_waited_s"] <= sum(got["detail"]["seconds"].values())
    assert "parts_on_workers" not in record(whole_db, whole.run_id)["detail"]


def test_a_worker_reading_another_database_fails_the_run_and_keeps_the_copy(
    broken: Source, pg_databases: Callable[[str], str], tmp_path: Path,
    model_key_home: Path,
) -> None:
    """A worker whose URL names another database cannot import the job's snapshot: the
    run fails with a source's error that says what to fix, after Dask's retries, with
    the copy as it was and nothing built beside it."""
    store_db = store_engine(pg_databases("store"))
    try:
        in_job(broken, store_db, settings(PART_ROWS))
        before = stored(store_db)
        elsewhere = pg_databases("elsewhere")
        with (start_cluster(tmp_path, workers=1, env={reload.SOURCE_URL_ENV: elsewhere}) as other,
              pytest.raises(SourceError) as failed):
            on_workers(broken, store_db, settings(PART_ROWS), other.address,
                       as_of=AS_OF + timedelta(days=1), clock=NEXT_NIGHT)
        message = str(failed.value)
        assert "read on Dask worker tcp://127.0.0.1:" in message
        # The server's reason, then what to check.
        assert "cannot import a snapshot from a different database" in message
        assert message.endswith(f"with the {reload.SOURCE_URL_ENV} of its own environment: the "
                                "job's source database, as a least-privilege role)")
        assert_failed_and_kept(store_db, before)
    finally:
        store_db.dispose()


def test_a_scheduler_that_does_not_answer_is_the_engines_error_not_the_sources(
    broken: Source, pg_databases: Callable[[str], str],
) -> None:
    """The cluster unreachable after the small tables were read: the run fails as the
    engine being down (the nightly job retries it), not as the clinic's database, and
    leaves the copy as it was."""
    store_db = store_engine(pg_databases("store"))
    try:
        in_job(broken, store_db, settings(PART_ROWS))
        before = stored(store_db)
        with pytest.raises(EngineUnavailable, match="did not answer"):
            on_workers(broken, store_db, settings(PART_ROWS), f"tcp://127.0.0.1:{free_port()}",
                       as_of=AS_OF + timedelta(days=1), clock=NEXT_NIGHT)
        assert_failed_and_kept(store_db, before)
    finally:
        store_db.dispose()


def test_a_worker_without_a_source_url_says_what_it_needs(
    monkeypatch: pytest.MonkeyPatch, broken: Source,
) -> None:
    """The source's credentials never travel with a task: a worker without its own says so."""
    monkeypatch.delenv(reload.SOURCE_URL_ENV, raising=False)
    reading = RangeReading("00000003-00000002-1", EtlSettings().mapping, 1, 90, True)
    with pytest.raises(SourceError, match=f"has no {reload.SOURCE_URL_ENV}: a full reload "
                                          "in parts on the Dask engine reads the source on "
                                          "the workers"):
        reload.check_on_worker(reading, Context(), pd.DataFrame(), NOWHERE,
                               ("appointments range 1 of 1", []))


def test_a_worker_that_cannot_land_its_range_says_so(
    monkeypatch: pytest.MonkeyPatch, broken: Source, pg_url: str,
) -> None:
    """A range checked but not appended to the store (here: the builds it was for are
    gone) fails as the store's error, in words that travel back to the job."""
    monkeypatch.setenv(reload.SOURCE_URL_ENV, broken.url)
    gone = Landing(make_url(pg_url), "beside_landed_0123456789abcdef")
    clients = pd.DataFrame(columns=["client_id", "clinic_id"])
    with broken.engine.connect() as held:
        snapshot = held.execute(text("SELECT pg_export_snapshot()")).scalar_one()
        reading = RangeReading(snapshot, EtlSettings().mapping, 1, 90, True)
        with pytest.raises(reload.LandingFailed, match=r"(?s)appointments range 1 of 1, landed by "
                           r"Dask worker .*does not exist.*it must reach the store"):
            reload.check_on_worker(reading, Context(), clients, gone,
                                   ("appointments range 1 of 1", []))


def test_a_worker_refuses_a_source_role_that_reads_anything(
    monkeypatch: pytest.MonkeyPatch, broken: Source,
) -> None:
    """The worker runs the job's mapped queries: a superuser role is refused there as in
    the job, unless [etl] allow_superuser_source (the test server's role is one)."""
    monkeypatch.setenv(reload.SOURCE_URL_ENV, broken.url)
    reading = RangeReading("00000003-00000002-1", EtlSettings().mapping, 1, 90, False)
    with pytest.raises(SourceError, match="is a superuser on the clinic's PostgreSQL"):
        reload.check_on_worker(reading, Context(), pd.DataFrame(), NOWHERE,
                               ("appointments range 1 of 1", []))


def test_the_local_engine_reads_ranges_in_the_job() -> None:
    assert ranges_checker(Settings(source_url="sqlite://", store_url="sqlite://")) is None


def cluster_workers(cluster: Cluster) -> list[str]:
    distributed = require("distributed")
    with distributed.Client(cluster.address, set_as_default=False) as client:
        return sorted(client.scheduler_info()["workers"])

