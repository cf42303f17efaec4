"""Prometheus metrics: requests and latency by route and status, and the last good run's age.

Each app has its own registry (nothing global at import). Under gunicorn the
server sets PROMETHEUS_MULTIPROC_DIR, every worker writes its samples there and a
scrape of any worker reports all of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from retention.api.services import services_of, state_or_none
from retention.clock import Clock
from retention.store import tables

log = logging.getLogger(__name__)

BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Label values come from this set only: a method is any token a client sends, and
# each new one would be a new series kept for good.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class LastRunAge(Collector):
    """Seconds since the newest successful run of each kind, read at scrape time."""

    def __init__(self, engine: Engine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("retention_last_successful_run_age_seconds",
                                   "Seconds since the last successful run finished, by kind",
                                   labels=["kind"])
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(
                    select(tables.runs.c.kind, func.max(tables.runs.c.finished_at))
                    .where(tables.runs.c.status == "succeeded").group_by(tables.runs.c.kind)
                ).all()
        except SQLAlchemyError:
            rows = []
        now = self._clock.now()
        for kind, finished in rows:
            if finished is not None:
                family.add_metric([kind], (now - finished).total_seconds())
        yield family


class RequestMetrics:
    """Requests and their latency by route template, method and status."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._requests = Counter("retention_http_requests_total", "HTTP requests",
                                 ["route", "method", "status"], registry=registry)
        self._latency = Histogram("retention_http_request_duration_seconds",
                                  "HTTP request latency", ["route", "method", "status"],
                                  buckets=BUCKETS, registry=registry)
        # Each label set's two series, looked up once: ``labels()`` validates and locks
        # on every call, a third of the hook's cost.
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._failed = False

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one request; ``route`` is a template, never a path with client ids in it.

        Counting never fails a request: a sample that cannot be written (the shared
        directory under gunicorn gone, a full disk) is logged once and dropped.
        """
        key = (route, method if method in METHODS else "other", status)
        try:
            found = self._series.get(key)
            if found is None:
                labels = (key[0], key[1], str(key[2]))
                found = self._series[key] = (self._requests.labels(*labels),
                                             self._latency.labels(*labels))
            found[0].inc()
            found[1].observe(seconds)
        except Exception as exc:
            if not self._failed:
                self._failed = True
                log.error("metrics cannot be recorded (%s); requests are still served",
                          type(exc).__name__)


def register_metrics(app: Flask, multiprocess_dir: str | None) -> None:
    """Time every request and serve ``/metrics`` (public: counts and ages, no client data).

    Under gunicorn (``multiprocess_dir`` set) a scrape reports every worker's samples.
    """
    found = services_of(app)
    registry, recorder, engine = found.metrics, found.request_metrics, found.store

    @app.after_request
    def observe(response: Response) -> Response:
        rule = request.url_rule
        current = state_or_none()
        started = current.started if current is not None else time.perf_counter()
        recorder.observe(rule.rule if rule else "unmatched", request.method,
                         response.status_code, time.perf_counter() - started)
        return response

    @app.get("/metrics")
    def metrics() -> Response:
        if multiprocess_dir:
            scrape = CollectorRegistry()
            MultiProcessCollector(scrape)
        else:
            scrape = registry
        body = generate_latest(scrape) + generate_latest(_run_age_registry(engine, found.clock))
        return Response(body, mimetype=CONTENT_TYPE_LATEST.split(";")[0],
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


def _run_age_registry(engine: Engine, clock: Clock) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(LastRunAge(engine, clock))
    return registry
