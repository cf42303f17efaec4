"""The scoring run on a Dask cluster (``[engine] kind = "dask"``): features, scores and
reasons computed partition by partition on the workers, published here as one list.

On this engine the ETL run loads the copy only (``run_etl(features=False)``); this run
plans the partitions from the committed copy, has the workers compute them
(``retention.engine.network``), ranks them as one list and stores the features with the
list in one transaction (``retention.pipelines.scoring.publish``): the publication
switches once every partition has landed, or not at all.
"""

from __future__ import annotations

import logging
from datetime import date

import pandas as pd
from sqlalchemy import Engine

from retention.clock import Clock, SystemClock
from retention.engine.network import PartitionResult, compute
from retention.engine.partitions import open_caseloads, plan
from retention.model.booster import TrainedModel
from retention.pipelines.etl import LOCK_WAIT_SECONDS, etl_lock
from retention.pipelines.runs import recorded_run
from retention.pipelines.scoring import ScoreResult, check_model_registry, publish
from retention.publish_guard import Acceptance
from retention.reasons.catalogue import Catalogue
from retention.scoring import ScoredPart, ScoringError, inputs_digest, ranked_rows
from retention.settings import Settings
from retention.store.clinic_copy import copy_version

log = logging.getLogger(__name__)


def run_network_scoring(
    settings: Settings,
    store_db: Engine,
    model: TrainedModel,
    catalogue: Catalogue,
    as_of: date,
    clock: Clock | None = None,
    accept: Acceptance | None = None,
) -> ScoreResult:
    """Compute and publish the list for ``as_of`` on the configured Dask cluster."""
    clock = clock or SystemClock()
    with recorded_run(store_db, "score", as_of, clock) as run:
        run.model_version = model.version
        check_model_registry(settings, model)
        watch = run.stopwatch()
        # No ETL run writes the copy while the partitions read it, each in a transaction
        # of its own: they read one state of it.
        with etl_lock(store_db, LOCK_WAIT_SECONDS):
            with store_db.connect() as conn:
                run.detail["copy_version"] = copy_version(conn)
                partitions = plan(open_caseloads(conn, as_of),
                                  settings.engine.partition_episodes)
            if not partitions:
                raise ScoringError(f"no episodes open at {as_of} in the store's copy: run "
                                   f"`retention etl --as-of {as_of}` first")
            watch.lap("plan")
            log.info("score run %s: %d partitions of at most %d open episodes on %s",
                     run.run_id, len(partitions), max(p.episodes for p in partitions),
                     settings.engine.scheduler)

            def done(result: PartitionResult, n: int, total: int) -> None:
                log.info("score run %s: partition %d of %d done (%d episodes, %.1f s, worker "
                         "peak %d MiB)", run.run_id, n, total, len(result.features),
                         result.seconds, result.peak_rss_mib)

            results = compute(settings, as_of, partitions, model.version, catalogue, done)
            watch.lap("partitions")
            parts = [r.scored for r in results if r.scored is not None]
            rows = ranked_rows(settings, parts, as_of, run.run_id, model.version)
            features = _features(parts)
            with store_db.connect() as conn:
                digest = inputs_digest(conn, settings, model, catalogue, features, as_of)
            run.rows_read = len(features)
            run.detail["engine"] = engine_detail(settings, results)
            watch.lap("rank")
            return publish(settings, store_db, run, watch, model, as_of, rows, features,
                           digest, clock, accept, write=features)


def _features(parts: list[ScoredPart]) -> pd.DataFrame:
    """The partitions' features as one frame in episode order, as ``build_features``
    orders a whole list's."""
    return pd.concat([p.features for p in parts]).sort_index()


def engine_detail(settings: Settings, results: list[PartitionResult]) -> dict[str, object]:
    """For the run record: how the work was split and what it cost on each worker."""
    workers: dict[str, int] = {}
    for r in results:
        workers[r.worker] = max(workers.get(r.worker, 0), r.peak_rss_mib)
    return {
        "kind": "dask",
        "scheduler": settings.engine.scheduler,
        "partitions": len(results),
        "largest_partition": max((len(r.features) for r in results), default=0),
        "partition_seconds_max": max((r.seconds for r in results), default=0.0),
        "partition_seconds_sum": round(sum(r.seconds for r in results), 3),
        "worker_peak_rss_mib": dict(sorted(workers.items())),
    }
