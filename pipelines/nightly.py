"""The nightly job: ETL then scoring for one as-of date, with engines owned here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from pipelines.etl import EtlResult, run_etl
from pipelines.scoring import ScoreResult, run_scoring
from retention import model as model_io
from retention.config import Settings
from retention.db import source_engine, store_engine
from retention.reasons import load_catalogue


@dataclass(frozen=True)
class NightlyResult:
    etl: EtlResult
    score: ScoreResult


def run_nightly(settings: Settings, as_of: date) -> NightlyResult:
    """Extract, compute features and publish the scored list for ``as_of``.

    The model and reason catalogue are checked before any data is read, so a
    bad model fails the run early and the last good list stays published.
    """
    model = model_io.load(settings.models_dir)
    catalogue = load_catalogue(settings.reasons_file)
    source = source_engine(settings.source_url)
    store_db = store_engine(settings.store_url)
    try:
        etl = run_etl(source, store_db, as_of)
        scored = run_scoring(settings, store_db, model, catalogue, as_of)
    finally:
        source.dispose()
        store_db.dispose()
    return NightlyResult(etl, scored)
