"""The scoring job: risk and reasons for every open episode, published as one list."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, cast

import pandas as pd
from sqlalchemy import Connection, Engine, text

from retention.clinic.data import ClinicData
from retention.clock import Clock, SystemClock
from retention.features import FEATURE_NAMES
from retention.features.builder import RegistryMismatch, check_registry
from retention.model.booster import TrainedModel
from retention.model.drift import SCORE
from retention.pipelines.runs import RunRecord, Stopwatch, recorded_run
from retention.publish_guard import Acceptance, Comparison, PublishRefused, compare
from retention.reasons.catalogue import Catalogue
from retention.scoring import (
    ScoringError,
    drift_rows,
    inputs_digest,
    reasons_summary,
    score_rows,
)
from retention.settings import Settings
from retention.store.clinic_copy import copy_version, read_scoped_copy
from retention.store.features import read_features, write_features
from retention.store.lists import (
    count_scores,
    latest_publication,
    list_counts,
    publish_scores,
    record_drift,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreResult:
    run_id: int
    as_of: date
    scored: int
    high_risk: int
    model_version: str
    # Rows with reasons, and families left out of them because the client's facts point
    # the other way from the model's contribution (by family).
    explained: int = 0
    left_out: dict[str, int] = field(default_factory=dict)
    # The list against the last published one (None when the same list stood published).
    guard: Comparison | None = None
    accepted: Acceptance | None = None


def run_scoring(
    settings: Settings,
    store_db: Engine,
    model: TrainedModel,
    catalogue: Catalogue,
    as_of: date,
    scoped: tuple[ClinicData, int] | None = None,
    clock: Clock | None = None,
    accept: Acceptance | None = None,
) -> ScoreResult:
    """Score the features stored for ``as_of`` and publish the ranked list atomically.

    ``scoped`` is the ETL run's scoped read with the copy version it came from (the
    nightly run passes it on); it is used only if the copy has not changed since.
    ``clock`` times the run record and the publication (the machine's by default).
    A list whose open episodes or high tier moved too far since the last publication
    is refused (``PublishRefused``, the last list stays served) unless ``accept`` gives
    an operator's reason, which the run records (``retention.publish_guard``).
    """
    clock = clock or SystemClock()
    with recorded_run(store_db, "score", as_of, clock) as run:
        run.model_version = model.version
        check_model_registry(settings, model)
        watch = run.stopwatch()
        with store_db.connect() as conn:
            features = read_features(conn, as_of, FEATURE_NAMES)
            if features.empty:
                raise ScoringError(
                    f"no features stored for {as_of}: run `retention etl --as-of {as_of}` first"
                )
            digest = inputs_digest(conn, settings, model, catalogue, features, as_of)
            published = latest_publication(conn, as_of)
            if published is not None and published.get("inputs_digest") == digest:
                # Same model, data, features and settings: the list stands as published.
                run.rows_read, run.rows_changed = len(features), 0
                run.detail["unchanged"] = True
                high = count_scores(conn, as_of, tier="high")
                log.info(
                    "score run %s: list of %s already published from the same inputs",
                    run.run_id,
                    as_of,
                )
                return ScoreResult(
                    run.run_id, as_of, int(published["n_scored"]), high, model.version
                )
            if scoped is not None and scoped[1] == copy_version(conn):
                data = scoped[0]
            else:
                data = read_scoped_copy(conn, as_of, settings.etl.lookback_days,
                                        settings.instruments)
        watch.lap("read")
        run.rows_read = len(features)
        rows = score_rows(settings, model, catalogue, data, features, as_of, run.run_id)
        watch.lap("score_and_reasons")
        return publish(settings, store_db, run, watch, model, as_of, rows, features, digest,
                       clock, accept)


def network_scoring() -> Callable[..., ScoreResult]:
    """The Dask engine's scoring run (``retention.pipelines.network.run_network_scoring``),
    imported only when asked for: the local engine runs without Dask installed."""
    module = importlib.import_module("retention.pipelines.network")
    return cast(Callable[..., ScoreResult], module.run_network_scoring)


def check_model_registry(settings: Settings, model: TrainedModel) -> None:
    """Refuse a model trained on features read through another instrument registry."""
    try:
        check_registry(model.metadata, settings.instruments)
    except RegistryMismatch as exc:
        raise ScoringError(str(exc)) from exc


def publish(
    settings: Settings,
    store_db: Engine,
    run: RunRecord,
    watch: Stopwatch,
    model: TrainedModel,
    as_of: date,
    rows: list[dict[str, Any]],
    features: pd.DataFrame,
    digest: str,
    clock: Clock,
    accept: Acceptance | None = None,
    write: pd.DataFrame | None = None,
) -> ScoreResult:
    """Publish ranked ``rows`` as the list for ``as_of`` in one transaction, guarded.

    With ``write`` (features computed by the run itself, as a network's partitions do),
    those features are stored in the same transaction: the list and what it was scored
    from land together or not at all.
    """
    summary = reasons_summary(rows)
    run.detail["reasons"] = summary
    drifted = drift_rows(settings, model, features, rows, as_of)
    with store_db.begin() as conn:
        if write is not None:
            run.detail["features_changed"] = write_features(conn, as_of, write, FEATURE_NAMES,
                                                            run.run_id)
        # Compared with what is published when this list would replace it, in the
        # transaction that publishes it.
        guard = guard_list(conn, settings, as_of, model.version, rows)
        if guard.exceeded and accept is None:
            run.detail["publish_guard"] = guard.detail()
            log.warning(
                "score run %s: refused by the publish guard: %d counts in "
                "clinic(s) %s moved beyond the limits since the list of %s",
                run.run_id,
                len(guard.moves),
                ", ".join(sorted({m.clinic_id for m in guard.moves})),
                guard.baseline,
            )
            raise PublishRefused(guard.refusal())
        run.detail["publish_guard"] = guard.detail(accept, clock.now())
        if guard.exceeded:
            log.warning(
                "score run %s: %d counts moved beyond the publish guard's "
                "limits since the list of %s; published as accepted",
                run.run_id,
                len(guard.moves),
                guard.baseline,
            )
        publish_scores(conn, as_of, rows, run.run_id, model.version, digest, clock.now())
        record_drift(conn, run.run_id, as_of, model.version, drifted)
    if store_db.dialect.name == "postgresql":
        # Fresh statistics for the new list: with stale ones the planner sorted all
        # 100,000 rows for every page instead of walking the rank index.
        with store_db.begin() as conn:
            conn.execute(text("ANALYZE scores"))
    flagged = [d["feature"] for d in drifted if d["flagged"]]
    # The run record says so, not only the log.
    run.detail["drift_flagged"] = ["score" if f == SCORE else f for f in flagged]
    if flagged:
        log.warning(
            "score run %s: drift beyond PSI %.2f in %d of %d inputs",
            run.run_id,
            settings.evaluation.drift_psi_threshold,
            len(flagged),
            len(drifted),
        )
    watch.lap("publish")
    run.rows_changed = len(rows)
    high = sum(1 for r in rows if r["tier"] == "high")
    log.info("score run %s: published %d episodes as of %s", run.run_id, len(rows), as_of)
    if summary["left_out"]:
        log.info(
            "score run %s: families left out of reasons where the client's facts "
            "point the other way: %s",
            run.run_id,
            summary["left_out"],
        )
    return ScoreResult(
        run.run_id,
        as_of,
        len(rows),
        high,
        model.version,
        summary["explained"],
        summary["left_out"],
        guard,
        accept,
    )


def guard_list(
    connection: Connection,
    settings: Settings,
    as_of: date,
    model_version: str,
    rows: list[dict[str, Any]],
) -> Comparison:
    """The rows to publish against the last list published before ``as_of``."""
    baseline = latest_publication(connection, before=as_of)
    counts = list_counts(connection, baseline["as_of"]) if baseline else []
    return compare(settings, as_of, model_version, rows, baseline, counts)
