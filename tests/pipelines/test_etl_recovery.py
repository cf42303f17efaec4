"""A run killed mid-load leaves the store as it was; the next run succeeds."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine

from retention.db.engines import source_engine, store_engine
from retention.etl.load import read_watermarks
from retention.pipelines import etl as etl_job
from retention.pipelines.etl import run_etl
from retention.settings import EtlSettings
from retention.store.checks import table_checksums
from retention.store.runs import list_runs
from tests.support.pg import libpq
from tests.support.sources import AS_OF, Source, appointment, stored


def data_checksums(engine: Engine) -> dict[str, tuple[int, str]]:
    with engine.connect() as conn:
        return table_checksums(conn)


@pytest.mark.slow
def test_a_run_killed_mid_load_leaves_the_store_as_it_was(
    tmp_path: Path, pg_databases: Callable[[str], str]
) -> None:
    src = Source.synthetic(f"sqlite:///{tmp_path / 'clinic.db'}", n_clients=150)
    store_url = pg_databases("killed")
    store_db = store_engine(store_url)
    source = source_engine(src.url)
    run_etl(source, store_db, AS_OF, EtlSettings())
    before = data_checksums(store_db)
    with store_db.connect() as conn:
        marks = read_watermarks(conn)

    # New rows at the source, so the next run has something to load.
    episode = next(e for e in src.rows("episodes") if e["discharged_on"] is None)
    stamp = datetime(2026, 6, 1, 12)
    src.insert("appointments", [appointment(f"AK{n}", episode, stamp + timedelta(days=n),
                                            status="scheduled", stamp=stamp)
                                for n in range(1, 6)])

    # Hold the watermarks table against writers: the run loads the copy, then waits on
    # the lock inside its transaction, and is killed there.
    blocker = psycopg.connect(libpq(store_url))
    blocker.execute("LOCK TABLE watermarks IN EXCLUSIVE MODE")
    failure: list[BaseException] = []

    def run() -> None:
        try:
            run_etl(source, store_db, AS_OF + timedelta(days=1), EtlSettings())
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    with psycopg.connect(libpq(store_url), autocommit=True) as admin:
        deadline = time.monotonic() + 60
        pid = None
        while pid is None and time.monotonic() < deadline:
            time.sleep(0.2)
            row = admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()").fetchone()
            pid = row[0] if row else None
        assert pid is not None, "the run never reached the watermark update"
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    blocker.rollback()
    blocker.close()
    worker.join(timeout=60)
    assert failure, "the killed run should have failed"

    assert data_checksums(store_db) == before  # nothing of the run's writes remains
    with store_db.connect() as conn:
        assert read_watermarks(conn) == marks
        last = list_runs(conn, 1)[0]
    assert last["status"] == "failed"

    after = run_etl(source, store_db, AS_OF + timedelta(days=1), EtlSettings())
    assert after.rows_changed > 0 and not after.full
    full_url = pg_databases("reference")
    reference = store_engine(full_url)
    run_etl(source, reference, AS_OF + timedelta(days=1), EtlSettings(), full=True)
    assert stored(store_db, AS_OF + timedelta(days=1)) == stored(reference,
                                                                   AS_OF + timedelta(days=1))
    for engine in (reference, store_db, source):
        engine.dispose()
    src.dispose()


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def test_a_failure_inside_the_load_rolls_everything_back(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watermark advances only in the transaction that commits the data."""
    src = Source.synthetic(f"sqlite:///{tmp_path / 'clinic.db'}", n_clients=100)
    url = (f"sqlite:///{tmp_path / 'store.db'}" if kind == "sqlite"
           else request.getfixturevalue("pg_databases")("rollback"))
    store_db, source = store_engine(url), source_engine(src.url)
    run_etl(source, store_db, AS_OF, EtlSettings())
    before = data_checksums(store_db)
    episode = next(e for e in src.rows("episodes") if e["discharged_on"] is None)
    src.insert("appointments", [appointment("AROLL", episode, datetime(2026, 6, 3, 10),
                                            status="scheduled", stamp=datetime(2026, 6, 1, 13))])

    def boom(*args: object, **kwargs: object) -> int:
        raise RuntimeError("disk full")

    monkeypatch.setattr(etl_job, "write_features", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        run_etl(source, store_db, AS_OF, EtlSettings())
    assert data_checksums(store_db) == before
    monkeypatch.undo()
    assert run_etl(source, store_db, AS_OF, EtlSettings()).rows_changed >= 1
    store_db.dispose()
    source.dispose()
    src.dispose()
