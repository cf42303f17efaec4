"""Rows that break the contract are held in quarantine with their rule; the run goes on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from retention.db.engines import source_engine, store_engine
from retention.etl.load import QuarantineLimitExceeded
from retention.etl.validation import RULES
from retention.pipelines.etl import run_etl
from retention.settings import EtlSettings
from retention.store import tables
from retention.store.checks import table_checksums
from retention.store.runs import list_runs
from tests.conftest import REPO
from tests.support.sources import AS_OF, Source, appointment

STAMP = datetime(2026, 6, 1, 12, 0)  # after the synthetic clinic's last write


@pytest.fixture(params=["sqlite"])
def loose(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Source]:
    """A text-only clinic in SQLite, or (parametrised indirectly) in PostgreSQL, where
    its text comes through the ADBC reader rather than SQLAlchemy, or in MariaDB, read
    from a server-side cursor."""
    url = (request.getfixturevalue("pg_url") if request.param == "postgresql"
           else request.getfixturevalue("mariadb_url") if request.param == "mariadb"
           else f"sqlite:///{tmp_path / 'clinic.db'}")
    src = Source.loose(url, n_clients=150)
    yield src
    src.dispose()


# These tests write many bad rows at once: the limits are loose unless a test sets them
# (the limits have tests of their own, tests/etl/test_limits.py).
LOOSE_LIMITS = {"max_quarantine_share": 0.5, "max_table_quarantine_share": 1.0,
                "max_code_quarantine_share": 1.0, "max_clinic_quarantine_share": 1.0}


def etl(src: Source, store_db: Engine, **settings: Any) -> Any:
    """An ETL run, with loose quarantine limits unless given."""
    settings = {**LOOSE_LIMITS, **settings}
    engine = source_engine(src.url)
    try:
        # The test server's role is a superuser (docs/nightly.md: a clinic's is not).
        etl_settings = EtlSettings(allow_superuser_source=True, **settings)
        return run_etl(engine, store_db, AS_OF, etl_settings)
    finally:
        engine.dispose()


def held(store_db: Engine) -> dict[tuple[str, str], str]:
    with store_db.connect() as conn:
        rows = conn.execute(select(tables.quarantine.c.table_name, tables.quarantine.c.row_key,
                                   tables.quarantine.c.rule))
        return {(t, k): r for t, k, r in rows}


def copied(store_db: Engine, table: str) -> set[str]:
    copy = tables.copies[table]
    key = copy.primary_key.columns.values()[0]
    with store_db.connect() as conn:
        return set(conn.execute(select(key)).scalars())


def measure(measure_id: str, episode: dict[str, Any], instrument: str, total: float | None,
            rater: str = "client", **scales: float) -> dict[str, Any]:
    return {"measure_id": measure_id, "episode_id": episode["episode_id"],
            "client_id": episode["client_id"], "appointment_id": None,
            "instrument": instrument, "rater": rater,
            "administered_at": STAMP - timedelta(hours=1), "score_total": total,
            "goal": scales.get("goal"), "task": scales.get("task"), "bond": scales.get("bond"),
            "updated_at": STAMP}


def items(measure_id: str, responses: list[float]) -> list[dict[str, Any]]:
    return [{"measure_id": measure_id, "item_number": n, "response": r}
            for n, r in enumerate(responses, start=1)]


# Every rule a row can break, with the row that breaks it.
EXPECTED = {
    ("appointments", "Q-CODE"): "unknown_code",
    ("appointments", "Q-DUP"): "duplicate_key",
    ("appointments", "Q-MISSING"): "missing_required",
    ("appointments", "Q-DATE"): "malformed_date",
    ("appointments", "Q-BOOL"): "malformed_value",
    ("appointments", "Q-ORPHAN"): "orphan",
    ("appointments", "Q-EARLY"): "before_admission",
    ("appointments", "Q-NOT-THEIRS"): "episode_of_another_client",
    ("alliance_measures", "Q-NOT-THEIRS"): "episode_of_another_client",
    ("appointments", "Q-FUTURE"): "far_future",
    ("episodes", "Q-EP-DATE"): "malformed_date",
    ("alliance_measures", "Q-SRS-TOTAL"): "srs_total_out_of_range",
    ("alliance_measures", "Q-SRS-ITEM"): "srs_item_out_of_range",
    ("alliance_items", "Q-SRS-ITEM|3"): "srs_item_out_of_range",
    ("alliance_items", "Q-SRS-ITEM|1"): "measure_quarantined",
    ("alliance_measures", "Q-WAI-ITEM"): "wai_item_out_of_range",
    ("alliance_items", "Q-WAI-ITEM|5"): "wai_item_out_of_range",
    ("alliance_measures", "Q-DISAGREE"): "total_disagrees_with_items",
    ("alliance_measures", "Q-WAI-SUB"): "total_disagrees_with_items",
}
# Items are read with their measure; an item whose measure never existed is seen by a
# full reload.
FULL_RELOAD_ONLY = {("alliance_items", "Q-NO-MEASURE|1"): "orphan"}


def break_the_contract(src: Source) -> dict[str, Any]:
    """Write one row per rule into a clinic source; returns the episode they belong to."""
    episode = next(e for e in src.rows("episodes") if e["discharged_on"] is None)
    admitted = datetime.fromisoformat(episode["admitted_on"])
    when = STAMP + timedelta(days=2)
    other = next(c for c in src.rows("clients") if c["client_id"] != episode["client_id"])
    not_theirs = {**episode, "client_id": other["client_id"]}
    appts = [
        appointment("Q-NOT-THEIRS", not_theirs, when, stamp=STAMP),
        appointment("Q-CODE", episode, when, status="XX", stamp=STAMP),
        appointment("Q-DUP", episode, when, stamp=STAMP),
        appointment("Q-DUP", episode, when + timedelta(hours=1), stamp=STAMP),
        appointment("Q-MISSING", episode, when, stamp=STAMP, service_type=None),
        appointment("Q-DATE", episode, when, stamp=STAMP, scheduled_at="2026-02-30 10:00"),
        appointment("Q-BOOL", episode, when, stamp=STAMP, telehealth="maybe"),
        appointment("Q-ORPHAN", {**episode, "episode_id": "E-NOBODY"}, when, stamp=STAMP),
        appointment("Q-EARLY", episode, admitted - timedelta(days=3), stamp=STAMP),
        appointment("Q-FUTURE", episode, datetime(2031, 6, 2, 10), status="scheduled",
                    stamp=STAMP),
    ]
    src.insert("appointments", appts)
    src.insert("episodes", [{**episode, "episode_id": "Q-EP-DATE", "admitted_on": "yesterday",
                             "updated_at": STAMP}])
    src.insert("alliance_measures", [
        measure("Q-SRS-TOTAL", episode, "SRS", 44.0),
        measure("Q-SRS-ITEM", episode, "SRS", 40.0),
        measure("Q-WAI-ITEM", episode, "WAI-SR", 40.0, goal=3.0, task=3.0, bond=3.0),
        measure("Q-DISAGREE", episode, "SRS", 30.0),
        measure("Q-NOT-THEIRS", not_theirs, "SRS", 30.0),
        measure("Q-WAI-SUB", episode, "WAI-SR", 36.0, goal=4.5, task=3.0, bond=3.0),
    ])
    src.insert("alliance_items", [
        *items("Q-SRS-ITEM", [10, 10, 12, 8]),
        *items("Q-WAI-ITEM", [3, 3, 3, 3, 7, 3, 3, 3, 3, 3, 3, 3]),
        *items("Q-DISAGREE", [10, 10, 10, 9]),
        *items("Q-WAI-SUB", [3] * 12),
        *items("Q-NO-MEASURE", [5]),
    ])
    return episode


@pytest.mark.slow
@pytest.mark.parametrize("loose", ["sqlite", "postgresql", "mariadb"], indirect=True)
def test_each_rule_holds_its_row_back_and_the_run_goes_on(loose: Source, store_url: str) -> None:
    store_db = store_engine(store_url)
    assert etl(loose, store_db).rows_quarantined == 0
    break_the_contract(loose)
    result = etl(loose, store_db)
    quarantined = held(store_db)
    for key, rule in EXPECTED.items():
        assert quarantined.get(key) == rule, key
    assert set(quarantined.values()) <= set(RULES)
    assert not {k for t, k in EXPECTED if t == "appointments"} & copied(store_db, "appointments")
    assert not {k for t, k in EXPECTED if t == "alliance_measures"} & copied(
        store_db, "alliance_measures")
    assert result.open_episodes > 0 and result.rows_quarantined >= len(EXPECTED)
    with store_db.connect() as conn:
        run = list_runs(conn, 1)[0]
        entry = conn.execute(select(tables.quarantine).where(
            tables.quarantine.c.row_key == "Q-DUP")).one()
    assert run["status"] == "succeeded"
    assert json.loads(run["detail"])["quarantine_by_rule"]["appointments"]["duplicate_key"] == 2
    # Both rows of the duplicate key are kept, so a fix can be checked again.
    assert len(json.loads(entry.rows_json)) == 2 and entry.run_id == run["run_id"]
    engine = source_engine(loose.url)
    run_etl(engine, store_db, AS_OF, EtlSettings(allow_superuser_source=True, **LOOSE_LIMITS),
            full=True)
    engine.dispose()
    assert held(store_db) == {**quarantined, **FULL_RELOAD_ONLY}
    store_db.dispose()


@pytest.mark.slow
def test_rows_fixed_at_the_source_are_released_by_the_next_run(loose: Source,
                                                                tmp_path: Path) -> None:
    store_db = store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    etl(loose, store_db)
    episode = break_the_contract(loose)
    etl(loose, store_db)
    later = STAMP + timedelta(hours=3)
    loose.update("appointments", {"appointment_id": "Q-CODE"}, status="attended",
                 updated_at=later)
    loose.insert("episodes", [{**episode, "episode_id": "E-NOBODY", "updated_at": later}])
    loose.update("alliance_items", {"measure_id": "Q-SRS-ITEM", "item_number": "3"},
                 response="9")
    loose.update("alliance_measures", {"measure_id": "Q-SRS-ITEM"}, score_total="37",
                 updated_at=later)
    result = etl(loose, store_db)
    now_held = held(store_db)
    for key in (("appointments", "Q-CODE"), ("appointments", "Q-ORPHAN"),
                ("alliance_measures", "Q-SRS-ITEM"), ("alliance_items", "Q-SRS-ITEM|3")):
        assert key not in now_held, key
    assert {"Q-CODE", "Q-ORPHAN"} <= copied(store_db, "appointments")
    assert "Q-SRS-ITEM" in copied(store_db, "alliance_measures")
    assert ("appointments", "Q-DUP") in now_held  # not fixed: still held
    with store_db.connect() as conn:
        detail = json.loads(list_runs(conn, 1)[0]["detail"])
    assert detail["released"] >= 4 and result.rows_changed > 0
    store_db.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("loose", ["sqlite", "postgresql"], indirect=True)
def test_rows_of_an_episode_moved_at_the_source_are_checked_again(loose: Source,
                                                                   store_url: str) -> None:
    """An episode given to another client (a merge of two records), and one whose
    admission is corrected to a later day, without a change to their sessions and
    ratings: the night holds the rows that no longer fit, as a full reload would."""
    store_db = store_engine(store_url)
    etl(loose, store_db)
    with_rows = {r["episode_id"] for r in loose.rows("alliance_measures")}
    merged, corrected = [e for e in loose.rows("episodes") if e["episode_id"] in with_rows][:2]
    other = next(c for c in loose.rows("clients") if c["client_id"] != merged["client_id"])
    later = STAMP + timedelta(hours=3)
    loose.update("episodes", {"episode_id": merged["episode_id"]},
                 client_id=other["client_id"], updated_at=later)
    slots = sorted(a["scheduled_at"] for a in loose.rows(
        "appointments", {"episode_id": corrected["episode_id"]}))
    assert len(slots) >= 2
    loose.update("episodes", {"episode_id": corrected["episode_id"]},
                 admitted_on=str(slots[1])[:10], updated_at=later)

    etl(loose, store_db)
    after_night = held(store_db)
    moved = {(t, k): r for (t, k), r in after_night.items() if r == "episode_of_another_client"}
    expected = {("appointments", a["appointment_id"]) for a in loose.rows(
        "appointments", {"episode_id": merged["episode_id"]})} | {
        ("alliance_measures", m["measure_id"]) for m in loose.rows(
            "alliance_measures", {"episode_id": merged["episode_id"]})}
    assert expected and set(moved) >= expected
    assert {k for t, k in moved if t == "appointments"}.isdisjoint(
        copied(store_db, "appointments"))
    early = {k for (t, k), r in after_night.items() if r == "before_admission"}
    assert early and early.isdisjoint(copied(store_db, "appointments"))
    items = {k for (t, k), r in after_night.items()
             if t == "alliance_items" and r == "measure_quarantined"}
    assert {k.split("|")[0] for k in items} == {k for t, k in moved if t == "alliance_measures"}
    copies = [copy.name for copy in tables.copies.values()]
    with store_db.connect() as conn:
        before = table_checksums(conn, copies)

    engine = source_engine(loose.url)
    run_etl(engine, store_db, AS_OF, EtlSettings(allow_superuser_source=True, **LOOSE_LIMITS),
            full=True)
    engine.dispose()
    assert held(store_db) == after_night
    with store_db.connect() as conn:
        assert table_checksums(conn, copies) == before
    store_db.dispose()


@pytest.mark.slow
def test_a_run_over_the_quarantine_limit_fails_loudly_and_changes_nothing(
    loose: Source, tmp_path: Path
) -> None:
    store_db = store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    etl(loose, store_db)
    with store_db.connect() as conn:
        before = table_checksums(conn)
    episode = loose.rows("episodes", limit=1)[0]
    loose.insert("appointments", [
        appointment(f"Q-BULK{n:03d}", episode, STAMP + timedelta(days=1), status="??",
                    stamp=STAMP) for n in range(60)])
    with pytest.raises(QuarantineLimitExceeded, match=r"over the limit of 5\.0%"):
        etl(loose, store_db, **{k: 0.05 for k in LOOSE_LIMITS})
    with store_db.connect() as conn:
        assert table_checksums(conn) == before
        run = list_runs(conn, 1)[0]
    assert run["status"] == "failed" and "unknown_code" in run["error"]
    assert run["rows_quarantined"] == 60
    # A looser limit lets the same rows through to quarantine.
    assert etl(loose, store_db, max_quarantine_share=0.5).rows_quarantined == 60
    store_db.dispose()


@pytest.mark.slow
def test_quality_reports_the_quarantine_by_table_and_rule(loose: Source, tmp_path: Path) -> None:
    store_db = store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    etl(loose, store_db)
    break_the_contract(loose)
    etl(loose, store_db)
    store_db.dispose()
    config = tmp_path / "cfg.toml"
    config.write_text(f'source_url = "{loose.url}"\nstore_url = "sqlite:///{tmp_path}/store.db"\n')
    run = subprocess.run([sys.executable, "-m", "retention.pipelines.cli", "--config", str(config),
                          "quality"], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr
    for table, rule in (("appointments", "unknown_code"), ("appointments", "duplicate_key"),
                        ("alliance_measures", "srs_total_out_of_range"),
                        ("alliance_items", "measure_quarantined")):
        assert any(table in line and rule in line for line in run.stdout.splitlines()), rule
    assert "Q-CODE" in run.stdout  # keys, never values
    assert "2026-02-30" not in run.stdout
