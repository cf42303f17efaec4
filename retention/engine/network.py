"""A network's nightly features, scores and reasons, computed on a Dask cluster.

Each partition (``retention.engine.partitions``) is one Dask task: on a worker it reads
its caseloads' scoped rows from the store's copy, builds their features and scores and
words their reasons with the very functions the single process calls
(``read_scoped_copy``, ``build_features``, ``retention.scoring.score_part``), and hands
them back. The job ranks the partitions as one list (``retention.scoring.ranked_rows``)
and publishes it with the features in one transaction, so a list is whole or absent: a
partition that fails is retried by Dask (``RETRIES``), and one that still fails
fails the run with nothing published.

What travels with a task is the job's settings less what a worker never needs: the
clinic's source URL, the store owner's URL and the model signing key stay with the job.
A worker resolves the signing key itself (``RETENTION_MODEL_KEY`` in its environment,
``model_key_file``, or its account's default) and checks the model version the job
names before using it; it reads the store with the job's ``store_url``, so the links
must be TLS (docs/network.md).
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

import pandas as pd
from distributed import Client, KilledWorker, Security, as_completed, get_worker
from sqlalchemy import Engine

from retention.db.engines import store_engine
from retention.engine.memory import peak_rss_mib
from retention.engine.partitions import Partition
from retention.features import build_features
from retention.model import artifacts, signing
from retention.model.booster import TrainedModel
from retention.reasons.catalogue import Catalogue
from retention.scoring import ScoredPart, ScoringError, score_part
from retention.settings import EngineSettings, Settings
from retention.store.clinic_copy import read_scoped_copy

log = logging.getLogger(__name__)

# Dask runs a failed partition again this many times before the run fails.
RETRIES = 2
# How long the job waits for the scheduler to answer, and then for a worker to join it.
CONNECT_TIMEOUT = "30s"
WORKERS_TIMEOUT = 120.0


class EngineUnavailable(OSError):
    """The Dask scheduler did not answer: the nightly job retries, as for a database."""


class PartitionFailed(ScoringError):
    """A partition kept killing its workers: the run stops with nothing published."""


@dataclass(frozen=True)
class PartitionResult:
    """What one partition computed, and what it cost on its worker."""

    number: int
    features: pd.DataFrame
    scored: ScoredPart | None  # None when only features were asked for
    seconds: float
    worker: str
    peak_rss_mib: int  # the worker process's peak so far (VmHWM)


def security(engine: EngineSettings) -> Security | None:
    """TLS for the links to the scheduler and workers, when the settings name the files."""
    if engine.tls_ca_file is None:
        return None
    return Security(tls_ca_file=str(engine.tls_ca_file),
                    tls_client_cert=str(engine.tls_cert_file),
                    tls_client_key=str(engine.tls_key_file), require_encryption=True)


@contextmanager
def connect(engine: EngineSettings) -> Iterator[Client]:
    """A client of the configured scheduler; a clear error when it does not answer."""
    try:
        client = Client(engine.scheduler, security=security(engine), timeout=CONNECT_TIMEOUT,
                        set_as_default=False)
    except OSError as exc:
        raise EngineUnavailable(
            f"the Dask scheduler at {engine.scheduler} did not answer ({exc}); start it and "
            "its workers (docs/network.md), or set [engine] kind = \"local\" to compute in "
            "this process") from exc
    try:
        try:
            client.wait_for_workers(1, timeout=WORKERS_TIMEOUT)
        except TimeoutError as exc:
            raise EngineUnavailable(
                f"the Dask scheduler at {engine.scheduler} has had no worker for "
                f"{WORKERS_TIMEOUT:.0f} s; start `dask worker {engine.scheduler}` processes "
                "(docs/network.md)") from exc
        yield client
    finally:
        client.close()


def compute(
    settings: Settings,
    as_of: date,
    partitions: Sequence[Partition],
    model_version: str | None,
    catalogue: Catalogue | None,
    on_done: Callable[[PartitionResult, int, int], None] | None = None,
) -> list[PartitionResult]:
    """Every partition's features (and, given a model version, scores and reasons), in
    partition order. ``on_done(result, done, total)`` reports each one as it lands."""
    if not partitions:
        return []
    travelling = for_workers(settings)
    with connect(settings.engine) as client:
        # Unique per call: Dask would otherwise hand back a finished task of the same key.
        token = f"{as_of.isoformat()}-{uuid.uuid4().hex}"
        futures = {client.submit(compute_partition, travelling, as_of, p, model_version,
                                 catalogue, key=f"retention-partition-{token}-{p.number}",
                                 retries=RETRIES, pure=False): p
                   for p in partitions}
        results = []
        try:
            with client.as_current():  # as_completed asks for the current client
                done = as_completed(list(futures))
            for future in done:
                try:
                    result = future.result()
                except KilledWorker as exc:
                    p = futures[future]
                    raise PartitionFailed(
                        f"partition {p.number} ({p.episodes:,} open episodes) kept killing "
                        "the Dask workers that ran it (Dask gives up after "
                        "distributed.scheduler.allowed-failures deaths), most likely by "
                        "running out of memory: lower [engine] partition_episodes or raise "
                        "the workers' --memory-limit (docs/network.md); nothing was "
                        "published") from exc
                results.append(result)
                if on_done is not None:
                    on_done(result, len(results), len(futures))
        finally:
            client.cancel(list(futures))
    return sorted(results, key=lambda r: r.number)


def for_workers(settings: Settings) -> Settings:
    """The settings a task carries: the job's, less the secrets a worker never needs (the
    clinic's source, the store owner, the model signing key)."""
    travelling = replace(settings, source_url="", store_owner_url="", model_key="")
    # The registry the job read and checked travels too: a worker need not hold the file.
    travelling.__dict__["instruments"] = settings.instruments
    return travelling


def compute_partition(
    settings: Settings,
    as_of: date,
    partition: Partition,
    model_version: str | None,
    catalogue: Catalogue | None,
) -> PartitionResult:
    """One partition, on a worker: its scoped read, features, and scores and reasons."""
    started = time.perf_counter()
    with _store(settings.store_url).connect() as conn:
        data = read_scoped_copy(conn, as_of, settings.etl.lookback_days, settings.instruments,
                                partition.caseloads)
    features = build_features(data, as_of, settings.instruments)
    scored = None
    if model_version is not None:
        if catalogue is None:
            raise ValueError("scoring a partition needs the reason catalogue")
        model = _model(settings, model_version)
        # One process per partition: Dask's workers are the parallelism.
        scored = score_part(settings, model, catalogue, data, features, as_of, workers=1)
    return PartitionResult(partition.number, features, scored,
                           round(time.perf_counter() - started, 3), worker_address(),
                           peak_rss_mib())


@functools.cache
def _store(url: str) -> Engine:
    """The store, opened once per worker process."""
    return store_engine(url)


def _model(settings: Settings, version: str) -> TrainedModel:
    """The model version named, with the signing key this worker holds."""
    key = signing.resolve_key(os.environ.get(signing.KEY_ENV, ""), settings.model_key_file,
                              models_dir=settings.models_dir)
    return _load_model(settings.models_dir, version, key)


@functools.lru_cache(maxsize=2)
def _load_model(models_dir: Path, version: str, key: signing.SigningKey) -> TrainedModel:
    """The version the job named, checked (signature, hashes, features) on this worker."""
    return artifacts.load(models_dir, version, key=key)


def worker_address() -> str:
    try:
        return str(get_worker().address)
    except ValueError:  # run outside a worker (tests call it directly)
        return "local"
