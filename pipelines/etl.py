"""The ETL job: extract the clinic tables, copy them into the store, compute features."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date

from sqlalchemy import Engine

from pipelines.runs import recorded_run
from retention import store
from retention.clinic_data import read_clinic
from retention.features import FEATURE_NAMES, build_features

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EtlResult:
    run_id: int
    as_of: date
    rows_read: int
    open_episodes: int


def run_etl(source: Engine, store_db: Engine, as_of: date) -> EtlResult:
    """Copy the clinic's tables into the store and store features for ``as_of``.

    The copy and the features land in one transaction: a failed run leaves the
    store as it was.
    """
    with recorded_run(store_db, "etl", as_of) as run:
        with source.connect() as src:
            data = read_clinic(src)
        log.info("etl run %s: read %d source rows", run.run_id, data.n_rows)
        features = build_features(data, as_of)
        with store_db.begin() as conn:
            copied = store.replace_clinic_copy(conn, store.copy_as_contract(data))
            stored = store.write_features(conn, as_of, features, FEATURE_NAMES, run.run_id)
        run.rows_read = data.n_rows
        run.rows_written = copied + stored
        log.info("etl run %s: %d open episodes as of %s", run.run_id, stored, as_of)
        return EtlResult(run.run_id, as_of, data.n_rows, stored)
