"""Scheduling you can trust: one run per slot across processes, catch-up, retries, stale lists."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import Engine, insert

from retention.api import create_app
from retention.clock import FixedClock
from retention.db.engines import store_engine
from retention.etl.extract import MappingError, SourceUnavailable
from retention.pipelines.nightly import run_slot
from retention.pipelines.scheduler import JOB_ID, build_scheduler, catch_up_due, latest_slot
from retention.settings import Settings
from retention.store import schema, tables
from retention.store.lists import latest_publication
from retention.store.runs import list_runs
from retention.store.status import service_status
from tests.conftest import AS_OF, REPO, Scored, make_settings
from tests.support.apps import clock_on, keyed_client, make_key

RETENTION = [sys.executable, "-m", "retention.pipelines.cli"]


def copy_sqlite(src_url: str, dst: Path) -> None:
    """SQLite's backup API: a plain file copy would miss pages still in the WAL."""
    with sqlite3.connect(src_url.removeprefix("sqlite:///")) as a, sqlite3.connect(dst) as b:
        a.backup(b)


@pytest.fixture
def clinic(scored: Scored, tmp_path: Path) -> Path:
    """A private copy of the scored clinic's source and models (no store)."""
    copy_sqlite(scored.settings.source_url, tmp_path / "clinic.db")
    shutil.copytree(scored.settings.models_dir, tmp_path / "models")
    return tmp_path


def config_file(root: Path, store_url: str) -> Path:
    path = root / "cfg.toml"
    path.write_text("\n".join([
        f'source_url = "sqlite:///{root / "clinic.db"}"',
        f'store_url = "{store_url}"',
        f'models_dir = "{root / "models"}"',
        f'reasons_file = "{REPO / "config" / "reasons.toml"}"',
        # A slot that is never now: only --run-now starts a run in these tests.
        'schedule_cron = "0 0 1 1 *"',
    ]) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_two_scheduler_processes_make_one_run_per_slot(
    clinic: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    """Two schedulers started by mistake, both asked to run now: exactly one nightly run."""
    if kind == "sqlite":
        store_url = f"sqlite:///{clinic / 'store.db'}"
    else:
        make: Callable[[str], str] = request.getfixturevalue("pg_databases")
        store_url = make("sched")
    config = config_file(clinic, store_url)
    command = [*RETENTION, "--config", str(config), "scheduler", "--run-now",
               "--as-of", AS_OF.isoformat()]
    procs = [subprocess.Popen(command,
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    engine = store_engine(store_url)
    outputs = []
    try:
        deadline = time.monotonic() + 180
        done = False
        while time.monotonic() < deadline and not done:
            time.sleep(1)
            try:
                with engine.connect() as conn:
                    runs = list_runs(conn, 10)
            except Exception:  # the store is still being created
                continue
            done = any(r["kind"] == "score" and r["status"] != "running" for r in runs)
        time.sleep(3)  # let the second process get to its decision, whatever it is
    finally:
        for proc in procs:
            proc.terminate()
            outputs.append(proc.communicate(timeout=30)[0])
    with engine.connect() as conn:
        runs = list_runs(conn, 10)
        published = latest_publication(conn, AS_OF)
    engine.dispose()
    assert sorted((r["kind"], r["status"]) for r in runs) == [
        ("etl", "succeeded"), ("score", "succeeded")], outputs
    assert published is not None
    assert sum("nightly run for" in out and "skipped" not in out for out in outputs) == 1, outputs
    assert any("another process is running" in out or "already published" in out
               for out in outputs), outputs


@pytest.fixture
def published(scored: Scored, tmp_path: Path) -> Settings:
    """Settings on private copies of the scored clinic, its published store and models."""
    copy_sqlite(scored.settings.source_url, tmp_path / "clinic.db")
    copy_sqlite(scored.settings.store_url, tmp_path / "store.db")
    shutil.copytree(scored.settings.models_dir, tmp_path / "models")
    return make_settings(tmp_path)


def test_a_slot_already_published_is_not_run_again(published: Settings, scored: Scored) -> None:
    result = run_slot(published, scored.as_of)
    assert result.skipped == f"the list for {scored.as_of} is already published"
    engine = store_engine(published.store_url)
    with engine.connect() as conn:
        assert [r["kind"] for r in list_runs(conn, 5)] == ["score", "train", "etl"]
    engine.dispose()


def test_source_down_is_recorded_retried_with_backoff_and_the_last_list_served_as_stale(
    published: Settings, scored: Scored
) -> None:
    settings = published.with_overrides(
        source_url="postgresql://postgres@127.0.0.1:1/clinic",  # nothing listens on port 1
        etl={"retry_attempts": 3, "retry_delay_seconds": 10, "retry_backoff": 2.0},
    )
    waits: list[float] = []
    tonight = scored.as_of + timedelta(days=1)
    with pytest.raises(SourceUnavailable, match="could not be read"):
        run_slot(settings, tonight, sleep=waits.append)
    assert waits == [10, 20]
    engine = store_engine(settings.store_url)
    with engine.connect() as conn:
        runs = list_runs(conn, 3)
        latest = latest_publication(conn)
    assert [(r["kind"], r["status"]) for r in runs] == [("etl", "failed")] * 3
    assert all("clinic database could not be read" in r["error"] for r in runs)
    assert latest is not None and latest["as_of"] == scored.as_of
    token = make_key(engine)
    engine.dispose()
    app = create_app(settings, TESTING=True, clock=clock_on(tonight + timedelta(days=1)))
    body = keyed_client(app, token).get("/v1/risk-list?limit=3").get_json()
    assert body["as_of"] == scored.as_of.isoformat()
    assert body["stale"] is True and body["age_days"] == 2
    assert len(body["items"]) == 3


def test_a_mapping_error_fails_the_night_at_once_and_the_status_says_so(
    published: Settings, scored: Scored
) -> None:
    """A typo in [etl.queries] fails the same way every time: no retries, no outage."""
    typo = ("SELECT episode_id, client_id, program, admited_on AS admitted_on, "
            "planned_discharge_on, discharged_on, discharge_reason, updated_at FROM episodes")
    settings = published.with_overrides(etl={
        "retry_attempts": 3, "retry_delay_seconds": 10, "queries": {"episodes": typo}})
    waits: list[float] = []
    tonight = scored.as_of + timedelta(days=1)
    with pytest.raises(MappingError, match=r"^the query for \[etl.queries\] episodes failed "
                       r"in the clinic database: no such column: admited_on$"):
        run_slot(settings, tonight, sleep=waits.append)
    assert waits == []
    engine = store_engine(settings.store_url)
    with engine.connect() as conn:
        runs = list_runs(conn, 2)
        status = service_status(conn, tonight)
    engine.dispose()
    assert [(r["kind"], r["status"]) for r in runs] == [("etl", "failed"), ("score", "succeeded")]
    assert "[etl.queries] episodes" in runs[0]["error"]
    assert status.failed_at is not None and status.last_run is not None
    assert (status.last_run["status"], status.last_run["run_id"]) == ("failed", runs[0]["run_id"])
    assert f"run {runs[0]['run_id']}) failed" in " ".join(status.problems)


def test_the_scheduler_catches_up_a_missed_slot_once(tmp_path: Path) -> None:
    now = datetime(2026, 12, 6, 3, 40, tzinfo=UTC)  # a Sunday
    slot = now - timedelta(hours=1)
    clock = FixedClock(now.replace(tzinfo=None))
    settings = make_settings(tmp_path, schedule_cron=f"{slot.minute} {slot.hour} * * *")
    trigger = CronTrigger.from_crontab(settings.schedule_cron, timezone="UTC")
    assert latest_slot(trigger, now) == slot.replace(second=0, microsecond=0)
    assert catch_up_due(settings, trigger, now)  # nothing published for the slot yet
    job = build_scheduler(settings, clock=clock).get_job(JOB_ID)
    assert job.next_run_time == now

    engine: Engine = store_engine(settings.store_url)
    with engine.begin() as conn:
        schema.upgrade(conn)
        conn.execute(insert(tables.publications).values(
            as_of=slot.date(), run_id=1, model_version="v", published_at=datetime(2026, 6, 1, 3, 0),
            n_scored=0))
    engine.dispose()
    assert not catch_up_due(settings, trigger, now)  # the slot ran: nothing to catch up
    job = build_scheduler(settings, clock=clock).get_job(JOB_ID)
    assert getattr(job, "next_run_time", None) is None  # left to the trigger: tomorrow
    # A slot missed longer ago than the grace time is left alone.
    late = settings.with_overrides(misfire_grace_seconds=60)
    assert not catch_up_due(late, trigger, now + timedelta(days=1, minutes=-30))


def test_the_nightly_job_is_configured_to_coalesce_and_never_overlap(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    job = build_scheduler(settings).get_job(JOB_ID)
    assert (job.coalesce, job.max_instances) == (True, 1)
    assert job.misfire_grace_time >= 3600
    detail = json.dumps(str(job.func))
    assert "nightly_job" in detail
