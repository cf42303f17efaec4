"""The weekly retrain: it reads the clinic through its own mapping, and runs once at a time."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from retention.db import locks
from retention.db.engines import store_engine
from retention.pipelines.retrain import RetrainResult, run_retrain
from retention.settings import Settings
from retention.store import tables
from retention.store.checks import table_checksums
from retention.store.runs import list_runs
from tests.conftest import Scored, make_settings

# The clinic's admissions live in a table of its own naming, with its own column names.
EPISODES = ("SELECT adm_id AS episode_id, client_id, program, start_date AS admitted_on, "
            "planned_discharge_on, discharged_on, discharge_reason, updated_at "
            "FROM ehr_admissions")


@pytest.fixture
def mapped(scored: Scored, tmp_path: Path) -> Settings:
    """The scored clinic with its episodes renamed, mapped in [etl.queries]; a new store."""
    clinic = tmp_path / "clinic.db"
    with sqlite3.connect(scored.settings.source_url.removeprefix("sqlite:///")) as a, \
            sqlite3.connect(clinic) as b:
        a.backup(b)
    with sqlite3.connect(clinic) as conn:
        conn.execute("ALTER TABLE episodes RENAME TO ehr_admissions")
        conn.execute("ALTER TABLE ehr_admissions RENAME COLUMN episode_id TO adm_id")
        conn.execute("ALTER TABLE ehr_admissions RENAME COLUMN admitted_on TO start_date")
    shutil.copytree(scored.settings.models_dir, tmp_path / "models")
    return make_settings(tmp_path, etl={"queries": {"episodes": EPISODES}})


@pytest.mark.slow
def test_the_retrain_reads_the_clinic_through_its_mapping(mapped: Settings,
                                                          scored: Scored) -> None:
    result = run_retrain(mapped, scored.as_of)
    assert result.skipped is None and result.etl is not None and result.train is not None
    assert result.etl.rows_quarantined == 0 and result.etl.open_episodes > 0
    store_db = store_engine(mapped.store_url)
    names = [t.name for t in tables.copies.values()]
    with store_db.connect() as conn, scored.store.connect() as reference:
        assert table_checksums(conn, names) == table_checksums(reference, names)
        runs = list_runs(conn)
    assert [(r["kind"], r["status"]) for r in runs] == [("train", "succeeded"),
                                                         ("etl", "succeeded")]
    assert runs[0]["model_version"] == result.train.version
    store_db.dispose()


@pytest.mark.slow
def test_two_retrains_at_once_run_once(mapped: Settings, scored: Scored) -> None:
    """Two schedulers started by mistake both fired the weekly job; one must stand down."""
    store_db = store_engine(mapped.store_url)
    with locks.try_lock(store_db, locks.RETRAIN) as got:  # another scheduler's retrain
        assert got
        assert run_retrain(mapped, scored.as_of) == RetrainResult(
            None, None, "another process is running the retrain")
    with store_db.connect() as conn:
        assert "runs" not in conn.dialect.get_table_names(conn) or list_runs(conn) == []

    outcomes: list[RetrainResult] = []
    start = threading.Barrier(2)

    def retrain() -> None:
        start.wait()
        outcomes.append(run_retrain(mapped, scored.as_of))

    threads = [threading.Thread(target=retrain) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(o.skipped is None for o in outcomes) == [False, True]
    with store_db.connect() as conn:
        assert [r["kind"] for r in list_runs(conn)] == ["train", "etl"]
    store_db.dispose()
