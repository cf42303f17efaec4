"""The store on SQLite and PostgreSQL: migrations, bulk upserts, the scoped read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, select, text
from sqlalchemy.exc import DBAPIError

from retention.db import bulk
from retention.db.engines import is_read_only, source_engine, store_engine
from retention.features import build_features
from retention.pipelines.etl import run_etl
from retention.scoring import explain_rows, score_rows, tier_names
from retention.settings import EtlSettings
from retention.store import schema, tables
from retention.store.checks import table_checksums
from retention.store.clinic_copy import read_clinic_copy, read_scoped_copy
from retention.store.features import _json_array, read_features
from retention.store.lists import count_scores, latest_publication, publish_scores, read_list
from tests.conftest import REPO, Scored

# --- migrations -------------------------------------------------------------------------


def test_migrations_build_exactly_the_schema_the_code_defines(store_url: str) -> None:
    engine = store_engine(store_url)
    before, after = schema.upgrade_engine(engine)
    assert (before, after) == (None, schema.head_revision())
    assert schema.upgrade_engine(engine) == (after, after)  # applying again does nothing
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                 tables.metadata)
    assert diffs == [], "a table or column changed without a migration (docs/migrations.md)"
    engine.dispose()


def test_two_processes_migrating_at_once_both_succeed(pg_url: str) -> None:
    engines = [store_engine(pg_url) for _ in range(2)]
    errors: list[BaseException] = []

    def upgrade(engine: object) -> None:
        try:
            schema.upgrade_engine(engine)  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upgrade, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    with engines[0].connect() as conn:
        assert schema.current_revision(conn) == schema.head_revision()
    for e in engines:
        e.dispose()


def test_retention_migrate_applies_and_checks(tmp_path: Path) -> None:
    config = tmp_path / "cfg.toml"
    config.write_text(f'source_url = "sqlite:///{tmp_path}/c.db"\n'
                      f'store_url = "sqlite:///{tmp_path}/store.db"\n')

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "retention.pipelines.cli", "--config",
                               str(config), *args], cwd=REPO, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})

    assert cli("migrate", "--check").returncode == 1
    first = cli("migrate")
    assert first.returncode == 0 and "upgraded from empty" in first.stderr
    assert "already at" in cli("migrate").stderr
    check = cli("migrate", "--check")
    assert check.returncode == 0 and schema.head_revision() in check.stdout


def test_a_store_made_before_migrations_is_refused_with_the_way_out(tmp_path: Path) -> None:
    engine = store_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE runs (run_id integer primary key)"))
    with pytest.raises(schema.SchemaError, match="new database"):
        schema.upgrade_engine(engine)
    engine.dispose()


# --- bulk upserts -------------------------------------------------------------------------


def test_sync_rows_writes_only_what_differs(store_url: str) -> None:
    engine = store_engine(store_url)
    table = Table("things", MetaData(), Column("k", String(8), primary_key=True),
                  Column("group_id", Integer), Column("v", String(8)))
    with engine.begin() as conn:
        table.create(conn)
        rows = pd.DataFrame({"k": ["a", "b", "c"], "group_id": [1, 1, 2], "v": ["x", "y", None]})
        assert bulk.sync_rows(conn, table, rows) == 3
        assert bulk.sync_rows(conn, table, rows) == 0  # the same rows: nothing written
        changed = rows.assign(v=["x", "z", None])
        assert bulk.sync_rows(conn, table, changed, delete_missing=False) == 1
        # Deleting the rows missing from a scope leaves other scopes alone.
        assert bulk.sync_rows(conn, table, changed.iloc[:1], scope={"group_id": 1}) == 1
        keys = conn.execute(select(table.c.k).order_by(table.c.k)).scalars().all()
        assert keys == ["a", "c"]
        assert bulk.delete_keys(conn, table, pd.DataFrame({"k": ["c", "nope"]})) == 1
    engine.dispose()


def test_the_clinic_source_is_opened_read_only(tmp_path: Path) -> None:
    path = tmp_path / "clinic.db"
    create_engine(f"sqlite:///{path}").connect().close()
    engine = source_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        assert is_read_only(conn)
        with pytest.raises(DBAPIError, match="readonly"):
            conn.execute(text("CREATE TABLE intruder (x integer)"))
    engine.dispose()


# --- the scoped read ----------------------------------------------------------------------

DAYS = [0, -1, -45, -200]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_scoped_read_gives_the_same_features_and_list_as_the_whole_copy(
    scored: Scored, kind: str, request: pytest.FixtureRequest
) -> None:
    """What the nightly run reads is enough: features, ranks, reasons and evidence equal
    those computed from every row, for as-of dates across the clinic's history."""
    if kind == "sqlite":
        engine, owned = scored.store, False
    else:
        make: Callable[[str], str] = request.getfixturevalue("pg_databases")
        engine, owned = store_engine(make("scoped")), True
        run_etl(scored.source, engine, scored.as_of, EtlSettings())
    with engine.connect() as conn:
        whole = read_clinic_copy(conn)
        for shift in DAYS:
            as_of = scored.as_of + timedelta(days=shift)
            scoped = read_scoped_copy(conn, as_of)
            assert len(scoped.appointments) < len(whole.appointments)
            features = build_features(whole, as_of)
            pd.testing.assert_frame_equal(build_features(scoped, as_of), features)
            if features.empty:
                continue
            full_rows = score_rows(scored.settings, scored.model, scored.catalogue, whole,
                                   features, as_of, run_id=1)
            scoped_rows = score_rows(scored.settings, scored.model, scored.catalogue, scoped,
                                     features, as_of, run_id=1)
            assert scoped_rows == full_rows, as_of
    if owned:
        engine.dispose()


def test_reasons_are_worded_for_the_top_of_the_list_and_of_each_caseload(
    scored: Scored,
) -> None:
    with scored.store.connect() as conn:
        features = read_features(conn, scored.as_of, scored.model.feature_names)
        data = read_scoped_copy(conn, scored.as_of)
    every = score_rows(scored.settings, scored.model, scored.catalogue, data, features,
                       scored.as_of, run_id=1)
    for per_caseload in (0, 2):
        settings = scored.settings.with_overrides(etl={"reasons_per_caseload": per_caseload})
        rows = score_rows(settings, scored.model, scored.catalogue, data, features,
                          scored.as_of, run_id=1, reasons_top_n=5)
        assert [r["episode_id"] for r in rows] == [r["episode_id"] for r in every]
        assert rows[:5] == every[:5]
        seen: dict[str, int] = {}
        for row, full in zip(rows, every, strict=True):
            caseload = str(row["case_manager_id"] or "clinic:" + row["clinic_id"])
            seen[caseload] = seen.get(caseload, 0) + 1
            explained = row["rank"] <= 5 or seen[caseload] <= per_caseload
            assert row == full if explained else json.loads(row["reasons_json"])["reasons"] == []
            assert {k: v for k, v in row.items() if k != "reasons_json"} == {
                k: v for k, v in full.items() if k != "reasons_json"}


def test_reasons_worded_in_parallel_equal_those_worded_in_one_process(scored: Scored) -> None:
    with scored.store.connect() as conn:
        features = read_features(conn, scored.as_of, scored.model.feature_names)
        data = read_scoped_copy(conn, scored.as_of)
    contributions = scored.model.contributions(features)
    families = {f["name"]: f["family"] for f in scored.model.metadata["features"]}
    args = (data, features, contributions, families, scored.catalogue, scored.as_of, 3)
    one = explain_rows(*args, workers=1)
    two = explain_rows(*args, workers=2, min_rows_per_worker=1)
    assert list(two) == list(one) and two == one


def tier(risk: float, thresholds: dict[str, float]) -> str:
    """The tier rule one risk at a time, as written before the list's were computed at once."""
    for name, cut in sorted(thresholds.items(), key=lambda kv: -kv[1]):
        if risk >= cut:
            return name
    return "low"


def test_tiers_of_a_whole_list_are_those_of_each_risk() -> None:
    thresholds = {"high": 0.5, "medium": 0.2}
    risk = np.array([0.0, 0.19999, 0.2, 0.35, 0.5, 0.99, np.nan])
    assert tier_names(risk, thresholds) == [tier(float(r), thresholds) for r in risk]


def test_reason_json_is_that_of_to_dict(scored: Scored) -> None:
    with scored.store.connect() as conn:
        features = read_features(conn, scored.as_of, scored.model.feature_names)
        data = read_scoped_copy(conn, scored.as_of)
    contributions = scored.model.contributions(features.iloc[:20])
    families = {f["name"]: f["family"] for f in scored.model.metadata["features"]}
    explained = explain_rows(data, features.iloc[:20], contributions, families,
                             scored.catalogue, scored.as_of, 3)
    shown = [r for e in explained.values() for r in [*e.reasons, *e.protective]]
    assert shown
    assert all(json.dumps(r.to_dict()) == json.dumps(asdict(r)) for r in shown)


def test_stored_json_is_read_back_with_nan_and_infinity() -> None:
    documents = ['{"a": 1.5, "b": null}', '{"a": NaN, "b": Infinity}']
    assert repr(_json_array(documents)) == repr([json.loads(d) for d in documents])
    assert _json_array(documents[:1]) == [{"a": 1.5, "b": None}]


def test_table_checksums_see_any_change(tmp_path: Path) -> None:
    engine = store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    schema.upgrade_engine(engine)
    with engine.begin() as conn:
        empty = table_checksums(conn)
        conn.execute(tables.publications.insert().values(
            as_of=date(2026, 1, 1), run_id=1, model_version="v",
            published_at=datetime(2026, 6, 1, 3, 0),
            n_scored=0))
        assert table_checksums(conn)["publications"][0] == 1
        assert table_checksums(conn) != empty
    engine.dispose()


def test_readers_see_the_previous_list_until_the_new_one_is_committed(store_url: str) -> None:
    engine = store_engine(store_url)
    schema.upgrade_engine(engine)
    old, new = date(2026, 6, 1), date(2026, 6, 2)

    def rows(as_of: date, n: int) -> list[dict[str, object]]:
        return [{"as_of": as_of, "episode_id": f"E{i}", "client_id": f"C{i}", "clinic_id": "k",
                 "case_manager_id": None, "program": "outpatient", "rank": i + 1,
                 "risk": 0.5, "tier": "high", "still_engaged": True, "last_attended_on": None,
                 "next_booked_at": None, "model_version": "v", "run_id": 1,
                 "reasons_json": '{"reasons": [], "protective": []}'} for i in range(n)]

    with engine.begin() as conn:
        publish_scores(conn, old, rows(old, 3), 1, "v")
    writer = engine.connect()
    transaction = writer.begin()
    publish_scores(writer, new, rows(new, 5), 2, "v")
    with engine.connect() as reader:  # the new list is written but not committed
        latest = latest_publication(reader)
        assert latest is not None and latest["as_of"] == old
        assert len(read_list(reader, old)) == 3
        assert count_scores(reader, new) == 0
    transaction.commit()
    writer.close()
    with engine.connect() as reader:
        latest = latest_publication(reader)
        assert latest is not None and latest["as_of"] == new
        assert len(read_list(reader, new)) == 5
    engine.dispose()
