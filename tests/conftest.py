"""Shared fixtures: a small synthetic clinic, taken through ETL, training and scoring once."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from retention.clinic.data import ClinicData, read_clinic
from retention.clinic.synth import SynthConfig, generate, write
from retention.clock import FixedClock
from retention.db.engines import source_engine, store_engine
from retention.model import artifacts
from retention.model.booster import TrainedModel
from retention.pipelines.etl import run_etl
from retention.pipelines.scoring import run_scoring
from retention.pipelines.train import run_training
from retention.reasons.catalogue import Catalogue, load_catalogue
from retention.settings import Settings, settings_from_mapping
from tests.support.apps import copied_store

# PostgreSQL, Redis and MariaDB fixtures (pg_server, store_url, private_pg, redis_url,
# private_redis, mariadb_url, ...).
pytest_plugins = ("tests.support.pg", "tests.support.pg_cluster", "tests.support.redis",
                  "tests.support.mariadb", "tests.support.dask_cluster")

REPO = Path(__file__).resolve().parents[1]
AS_OF = date(2026, 6, 1)


def make_settings(root: Path, **overrides: object) -> Settings:
    """Settings pointing at SQLite files under ``root``."""
    values: dict[str, object] = {
        "source_url": f"sqlite:///{root / 'clinic.db'}",
        "store_url": f"sqlite:///{root / 'store.db'}",
        "models_dir": str(root / "models"),
        "reasons_file": str(REPO / "config" / "reasons.toml"),
    }
    values.update(overrides)
    return settings_from_mapping(values)


def write_clinic(url: str, config: SynthConfig) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        write(conn, generate(config))
    engine.dispose()


@dataclass(frozen=True)
class Scored:
    """A clinic that has been extracted, trained on and scored as of ``as_of``."""

    settings: Settings
    as_of: date
    source: Engine
    store: Engine
    model: TrainedModel
    catalogue: Catalogue

    def clinic(self) -> ClinicData:
        with self.source.connect() as conn:
            return read_clinic(conn)


@pytest.fixture(scope="session", autouse=True)
def model_key_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A home of the run's own, so that training's default model signing key
    (``~/.config/retention/model-signing.key``, created on first use) is the run's, never
    the account's; the processes tests start inherit it. No key from the environment."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        patch.delenv("RETENTION_MODEL_KEY", raising=False)
        patch.delenv("RETENTION_MODEL_KEY_FILE", raising=False)
        yield home


@pytest.fixture(scope="session")
def scored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scored]:
    root = tmp_path_factory.mktemp("clinic")
    settings = make_settings(root)
    # Large enough that the gate can tell the first model from the clinic's rules: at 500
    # clients its interval against "2 misses in a row" still reached zero.
    write_clinic(settings.source_url, SynthConfig(end=AS_OF, n_clients=800, seed=11))
    source, store_db = source_engine(settings.source_url), store_engine(settings.store_url)
    night = FixedClock(datetime.combine(AS_OF, time(2, 30)))  # the nightly slot
    run_etl(source, store_db, AS_OF, clock=night)
    run_training(settings, store_db, AS_OF, clock=night)
    model = artifacts.load(settings.models_dir)
    catalogue = load_catalogue(settings.reasons_file)
    run_scoring(settings, store_db, model, catalogue, AS_OF, clock=night)
    yield Scored(settings, AS_OF, source, store_db, model, catalogue)
    source.dispose()
    store_db.dispose()


@pytest.fixture
def private_store(scored: Scored, tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    """A private copy of the scored store (URL and engine), to change without touching it."""
    url = copied_store(scored.settings, tmp_path).store_url
    engine = store_engine(url)
    yield url, engine
    engine.dispose()
