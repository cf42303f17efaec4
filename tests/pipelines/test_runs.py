"""Run records: a run whose process was killed is marked failed, and no error quotes a value."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date, datetime

import psycopg
import pytest
from sqlalchemy import Engine

from retention.clock import FixedClock
from retention.db import locks
from retention.db.engines import store_engine
from retention.etl.extract import MappingError
from retention.pipelines.runs import error_text, recorded_run
from retention.settings import SourceMapping
from retention.store.runs import list_runs
from retention.store.status import service_status
from tests.support.pg import libpq

NIGHT = FixedClock(datetime(2026, 6, 1, 2, 30))
AS_OF = date(2026, 6, 1)

# A job that starts a run and is then killed with SIGKILL before it can record anything.
JOB = """
import sys, time
from datetime import date, datetime
from retention.clock import FixedClock
from retention.db import locks
from retention.db.engines import store_engine
from retention.pipelines.runs import recorded_run
engine = store_engine(sys.argv[1])
with recorded_run(engine, "etl", date(2026, 6, 1), FixedClock(datetime(2026, 6, 1, 2, 0))) as run:
    print(run.run_id, flush=True)
    time.sleep(600)
"""


@pytest.fixture
def job(store_url: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A process in the middle of a run, and the run's id."""
    process = subprocess.Popen([sys.executable, "-c", JOB, store_url], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline() if process.stdout else ""
        if not line.strip().isdigit():
            process.kill()
            _, err = process.communicate(timeout=30)
            pytest.fail(f"the job did not start its run:\n{err}")
        yield process, int(line)
    finally:
        process.kill()
        process.communicate(timeout=30)


def runs_by_id(engine: Engine) -> dict[int, dict[str, object]]:
    with engine.connect() as conn:
        return {int(r["run_id"]): r for r in list_runs(conn)}


def last_status(engine: Engine, tries: int = 50) -> str:
    """The newest nightly run's status as the pages see it; a killed backend's session may
    take a moment to end on the server, so ``died`` is waited for a little."""
    seen = "running"
    for _ in range(tries):
        with engine.connect() as conn:
            last = service_status(conn, AS_OF).last_run
        assert last is not None
        seen = str(last["status"])
        if seen != "running":
            break
        time.sleep(0.1)
    return seen


@pytest.mark.slow
def test_a_run_whose_process_was_killed_is_marked_failed_at_the_next_start(
    store_url: str, job: tuple[subprocess.Popen[str], int],
) -> None:
    process, run_id = job
    engine = store_engine(store_url)
    with engine.connect() as conn:
        status = service_status(conn, AS_OF)
    assert status.last_run is not None and status.last_run["status"] == "running"
    assert not any("died" in p for p in status.problems)
    # A run started while the job lives leaves the job's run alone.
    with recorded_run(engine, "train", None, NIGHT):
        pass
    assert runs_by_id(engine)[run_id]["status"] == "running"

    process.kill()
    process.wait(timeout=30)
    assert last_status(engine) == "died"  # the pages and /ready say so before anyone runs
    with engine.connect() as conn:
        status = service_status(conn, AS_OF)
    assert status.failed_at == datetime(2026, 6, 1, 2, 0)
    assert any(f"run {run_id}, started 2026-06-01 02:00 UTC) died" in p for p in status.problems)
    assert "host" not in str(status.to_dict())

    with recorded_run(engine, "score", AS_OF, NIGHT):
        pass
    dead = runs_by_id(engine)[run_id]
    assert dead["status"] == "failed" and dead["finished_at"] == NIGHT.now()
    assert dead["host"] == socket.gethostname() and dead["pid"] == process.pid
    assert dead["error"] == (f"DeadRun: the process running it (host {socket.gethostname()}, "
                             f"pid {process.pid}) ended before the run finished (killed or "
                             "crashed); marked failed when a later run started")
    engine.dispose()


def test_a_finished_runs_lock_is_let_go(store_url: str) -> None:
    """Otherwise a later run's check would take a finished run's process for alive."""
    engine = store_engine(store_url)
    with recorded_run(engine, "etl", AS_OF, NIGHT) as run:
        pass
    with engine.connect() as conn:
        assert locks.live_runs(conn, [run.run_id]) == set()
    engine.dispose()


SECRET = "Jane Roe"


def test_a_database_errors_text_keeps_neither_its_values_nor_its_context(pg_url: str) -> None:
    """PostgreSQL's COPY context quoted the whole field of the row a load stopped at."""
    with psycopg.connect(libpq(pg_url)) as conn:
        conn.execute("CREATE TEMP TABLE t (n integer)")
        with pytest.raises(psycopg.Error) as caught, conn.cursor().copy(
                "COPY t (n) FROM STDIN") as copy:
            copy.write_row([SECRET])
    assert SECRET in str(caught.value)
    assert error_text(caught.value) == (
        'InvalidTextRepresentation: invalid input syntax for type integer: "…" '
        "(SQLSTATE 22P02)")


def test_the_services_own_errors_are_kept_whole_and_others_cut_before_their_value() -> None:
    own = MappingError("episodes", SourceMapping(queries={"episodes": "SELECT 1"}),
                       'column "admited_on" does not exist (SQLSTATE 42703)')
    assert error_text(own) == ('MappingError: the query for [etl.queries] episodes failed in '
                               'the clinic database: column "admited_on" does not exist '
                               "(SQLSTATE 42703)")
    assert error_text(ValueError(f"could not convert string to float: '{SECRET}'")) == (
        "ValueError: could not convert string to float: …")
    assert error_text(KeyError(SECRET)) == 'KeyError: "…"'


# A job whose second stage holds 300 MiB more than its first: its stopwatch's peaks.
STAGES = """
import json
from retention.pipelines.runs import RunRecord
run = RunRecord(run_id=1)
watch = run.stopwatch()
watch.lap("small")
held = b"\\x01" * (300 << 20)
watch.lap("large")
del held
watch.lap("after")
print(json.dumps(run.detail))
"""


def test_a_runs_record_says_how_much_memory_the_job_held_by_the_end_of_each_stage() -> None:
    """In a process of its own: a peak is the process's, whatever ran in it before."""
    out = subprocess.run([sys.executable, "-c", STAGES], capture_output=True, text=True,
                         timeout=60, check=True)
    detail = json.loads(out.stdout)
    peaks = detail["peak_mib"]
    assert list(peaks) == list(detail["seconds"]) == ["small", "large", "after"]
    assert 295 <= peaks["large"] - peaks["small"] < 400
    # A peak, not what is held now (Linux syncs its counters lazily: a MiB either way).
    assert abs(peaks["after"] - peaks["large"]) <= 2
