"""The Dask engine against the single process, on a 10,000-client network and a real
cluster: a `dask scheduler` and two `dask worker` processes on loopback.

Both engines load the same source into stores of their own; the local one publishes
from the ETL run's features, the Dask one computes features, scores and reasons in
partitions of whole caseloads on the workers, through the commands an operator runs.
The features, the scores (to 1e-9) and the published lists must be the same.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select

from retention.clinic.synth import SynthConfig
from retention.clock import FixedClock
from retention.db.engines import source_engine, store_engine
from retention.pipelines.cli import main
from retention.pipelines.commands.common import Context
from retention.pipelines.etl import run_etl
from retention.pipelines.nightly import run_slot
from retention.pipelines.scoring import run_scoring
from retention.settings import Settings
from retention.store import tables
from tests.conftest import REPO, Scored, write_clinic
from tests.support.dask_cluster import Cluster
from tests.support.pg import drop_database, new_database

AS_OF = date(2026, 6, 1)
NIGHT = FixedClock(datetime.combine(AS_OF, time(2, 30)))
NETWORK = SynthConfig(end=AS_OF, n_clients=10_000, n_clinics=12, seed=23)
# Small enough that the network's larger clinics are split between their caseloads.
PARTITION_EPISODES = 150
TOLERANCE = 1e-9

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The 10,000-client network's database (SQLite: the engines differ in the store)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('network') / 'network.db'}"
    write_clinic(url, NETWORK)
    return url


def settings_for(scored: Scored, source: str, store: str) -> Settings:
    return scored.settings.with_overrides(
        source_url=source, store_url=store,
        # A first list has nothing to be guarded against; both engines run the same guard.
        publish_max_change_share=1.0)


def config_file(path: Path, settings: Settings) -> Path:
    path.write_text(
        f'source_url = "{settings.source_url}"\nstore_url = "{settings.store_url}"\n'
        f'models_dir = "{settings.models_dir}"\n'
        f'reasons_file = "{REPO / "config" / "reasons.toml"}"\n'
        "publish_max_change_share = 1.0\n"
        f"[engine]\npartition_episodes = {PARTITION_EPISODES}\n")
    return path


@pytest.fixture(scope="module")
def engines(scored: Scored, network: str, pg_server: str, dask_cluster: Cluster,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, Engine]]:
    """Two stores of the same network: one published by the single process, one by the
    Dask engine through `retention etl --engine dask` and `retention score --scheduler`."""
    made = [new_database(pg_server, "local"), new_database(pg_server, "dask")]
    try:
        yield from _published(scored, network, made, dask_cluster, tmp_path_factory)
    finally:
        for url in made:
            drop_database(url, pg_server)


def _published(scored: Scored, network: str, stores: list[str], dask_cluster: Cluster,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, Engine]]:
    local = settings_for(scored, network, stores[0])
    source, local_db = source_engine(network), store_engine(local.store_url)
    run_etl(source, local_db, AS_OF, local.etl, clock=NIGHT)
    run_scoring(local, local_db, scored.model, scored.catalogue, AS_OF, clock=NIGHT)
    source.dispose()

    on_dask = settings_for(scored, network, stores[1])
    config = config_file(tmp_path_factory.mktemp("dask") / "retention.toml", on_dask)
    for args in (["etl", "--engine", "dask", "--scheduler", dask_cluster.address],
                 ["score", "--scheduler", dask_cluster.address]):
        done = CliRunner().invoke(main, ["--config", str(config), *args, "--as-of",
                                         AS_OF.isoformat()],
                                  obj=Context(config_path=config, clock=NIGHT))
        assert done.exit_code == 0, done.output
    dask_db = store_engine(on_dask.store_url)
    yield local_db, dask_db
    local_db.dispose()
    dask_db.dispose()


def rows(engine: Engine, table: Any, key: str) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        return {str(r[key]): dict(r) for r in conn.execute(select(table)).mappings()}


def close(a: Any, b: Any) -> bool:
    """Equal, numbers to 1e-9 (NaN and None alike: both are missing)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    missing = [v is None or (isinstance(v, float) and math.isnan(v)) for v in (a, b)]
    if any(missing):
        return all(missing)
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= TOLERANCE
    return bool(a == b)


def test_the_same_features_for_every_open_episode(engines: tuple[Engine, Engine]) -> None:
    local, dask = (rows(e, tables.features, "episode_id") for e in engines)
    assert len(local) > 1000
    assert local.keys() == dask.keys()
    for episode_id, row in local.items():
        other = dask[episode_id]
        for column in ("as_of", "client_id", "clinic_id", "case_manager_id"):
            assert row[column] == other[column], (episode_id, column)
        assert close(json.loads(row["values_json"]), json.loads(other["values_json"])), episode_id


def test_the_same_published_list(engines: tuple[Engine, Engine]) -> None:
    local, dask = (rows(e, tables.scores, "episode_id") for e in engines)
    assert local.keys() == dask.keys()
    for episode_id, row in local.items():
        other = dask[episode_id]
        assert close(row["risk"], other["risk"]), episode_id
        for column, value in row.items():
            if column in ("run_id", "risk"):
                continue
            if column == "reasons_json":
                assert close(json.loads(value), json.loads(other[column])), episode_id
            else:
                assert value == other[column], (episode_id, column)
    shown = sum(1 for r in dask.values() if json.loads(r["reasons_json"])["points"] is not None)
    assert shown > 500  # the list's top 500 and each caseload's top, across partitions


def test_the_dask_run_records_its_partitions_and_workers(
        engines: tuple[Engine, Engine], dask_cluster: Cluster) -> None:
    with engines[1].connect() as conn:
        detail = json.loads(conn.execute(
            select(tables.runs.c.detail).where(tables.runs.c.kind == "score")
        ).scalar_one())
    engine = detail["engine"]
    assert engine["kind"] == "dask" and engine["scheduler"] == dask_cluster.address
    assert engine["partitions"] > 12  # more than the clinics: the large ones were split
    assert engine["largest_partition"] <= PARTITION_EPISODES
    # Both workers took partitions, and each one's peak memory is on record.
    assert len(engine["worker_peak_rss_mib"]) == 2
    assert all(v > 0 for v in engine["worker_peak_rss_mib"].values())


def test_the_nightly_job_runs_on_the_configured_engine(
        scored: Scored, pg_url: str, dask_cluster: Cluster) -> None:
    """What the scheduler runs each night: the ETL loads the copy only, the workers compute
    the list, the job publishes it."""
    settings = settings_for(scored, scored.settings.source_url, pg_url).with_overrides(
        engine={"kind": "dask", "scheduler": dask_cluster.address})
    result = run_slot(settings, AS_OF)
    assert result.etl is not None and result.score is not None
    store = store_engine(pg_url)
    try:
        with store.connect() as conn:
            etl_detail, score_detail = (json.loads(conn.execute(
                select(tables.runs.c.detail).where(tables.runs.c.kind == kind)).scalar_one())
                for kind in ("etl", "score"))
            published = conn.execute(select(tables.publications.c.n_scored)).scalar_one()
    finally:
        store.dispose()
    assert "features_changed" not in etl_detail  # left to the workers
    assert result.etl.open_episodes is None  # not counted by the ETL: not "none open"
    assert score_detail["engine"]["partitions"] >= 1
    assert score_detail["features_changed"] == published == result.score.scored > 100
