"""Health, readiness, models and runs: what operators and analysts need, no client data."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import inspect
from sqlalchemy.exc import SQLAlchemyError

from retention.api.auth import ANY, OPERATIONS, requires
from retention.api.errors import Problem
from retention.api.ratelimit import WINDOW_SECONDS
from retention.api.routes import (
    check_params,
    freshness,
    iso,
    parse_limit,
    settings,
    store_engine,
    today,
)
from retention.api.services import services
from retention.model import artifacts
from retention.model.booster import ModelError
from retention.store import tables
from retention.store.runs import list_runs
from retention.store.status import service_status

log = logging.getLogger(__name__)

bp = Blueprint("operations", __name__)

CARD_FIELDS = ("version", "task", "created_at", "trained_as_of", "horizon_days", "window",
               "metrics", "libraries", "sha256")


# Counted like a request: its key cannot be a key id (12 hex digits), so it limits nobody.
PROBE_KEY = "readiness-probe"
RATE_LIMIT_DOWN = ("the rate-limit store cannot be reached: requests for client data get "
                   "503 until it answers")


def _rate_limit_store_answers() -> bool:
    """Whether a request could be counted now, the way every data request is."""
    try:
        services().limiter.counter.hit(PROBE_KEY, WINDOW_SECONDS)
    except Exception:
        log.warning("readiness: the rate-limit store did not answer")
        return False
    return True


@bp.get("/health")
def health() -> ResponseReturnValue:
    """Liveness, and how the service stands: "degraded" (still 200) when the list is stale,
    the last nightly run failed or the rate-limit store is down, with the problems in words."""
    try:
        with store_engine().connect() as conn:
            status = service_status(conn, today())
    except SQLAlchemyError:
        raise Problem(503, "the store cannot be read; run the ETL first",
                      "Service unavailable") from None
    pub = status.publication
    body = status.to_dict()
    if not _rate_limit_store_answers():
        body["problems"].append(RATE_LIMIT_DOWN)
    return jsonify({"status": "degraded" if body["problems"] else "ok",
                    "list": freshness(pub) if pub else None, **body})


@bp.get("/ready")
def ready() -> ResponseReturnValue:
    """Ready to serve: the store and the rate-limit store answer, keys and audit tables
    exist, a list is published and is not older than ``max_list_age_days``; otherwise 503
    with the reason."""
    try:
        with store_engine().connect() as conn:
            present = set(inspect(conn).get_table_names())
            status = service_status(conn, today()) if "publications" in present else None
    except SQLAlchemyError:
        raise Problem(503, "the store cannot be read", "Not ready") from None
    if not _rate_limit_store_answers():
        raise Problem(503, RATE_LIMIT_DOWN, "Not ready")
    missing = sorted({tables.api_keys.name, tables.audit_log.name} - present)
    if missing:
        raise Problem(503, f"table(s) {', '.join(missing)} missing: run "
                      "`retention keys create` once to create them", "Not ready")
    if status is None or status.publication is None:
        raise Problem(503, "no list has been published yet", "Not ready")
    limit = settings().max_list_age_days
    if status.age_days is not None and status.age_days > limit:
        raise Problem(503, "; ".join(status.problems) + f" (more than {limit} days: not fit to "
                      "serve; see `retention runs`)", "Not ready")
    return jsonify({"status": "degraded" if status.problems else "ready",
                    "list": freshness(status.publication), **status.to_dict()})


def _versions(models_dir: Path) -> list[dict[str, Any]]:
    try:
        current: str | None = artifacts.current_version(models_dir)
    except ModelError:
        current = None
    out = []
    for folder in sorted(models_dir.glob("*/metadata.json"), reverse=True):
        meta = json.loads(folder.read_text())
        out.append({"version": meta["version"], "created_at": meta.get("created_at"),
                    "trained_as_of": meta.get("trained_as_of"),
                    "current": meta["version"] == current})
    return out


@bp.get("/v1/models")
@requires(ANY, "models.read")
def models() -> ResponseReturnValue:
    """Saved model versions, newest first, with the current one marked."""
    check_params(set())
    return jsonify({"items": _versions(settings().models_dir)})


@bp.get("/v1/models/<version>")
@requires(ANY, "model_card.read")
def model_card(version: str) -> ResponseReturnValue:
    """A version's card: task, window, held-out metrics and the features it reads."""
    check_params(set())
    known = {v["version"]: v for v in _versions(settings().models_dir)}
    if version not in known:
        raise Problem(404, f"no model version {version!r}; GET /v1/models lists them",
                      "Unknown model version")
    meta = json.loads((settings().models_dir / version / artifacts.METADATA_FILE).read_text())
    card = {k: meta.get(k) for k in CARD_FIELDS}
    card["current"] = known[version]["current"]
    card["features"] = [{k: f.get(k) for k in ("name", "description", "family", "monotone")}
                        for f in meta.get("features", [])]
    return jsonify(card)


@bp.get("/v1/runs")
@requires(OPERATIONS, "runs.read")
def runs() -> ResponseReturnValue:
    """Recent ETL, training and scoring runs, newest first."""
    check_params({"limit"})
    limit = parse_limit(request.args, 200, default=20)
    with store_engine().connect() as conn:
        rows = list_runs(conn, limit)
    # Errors stay in the CLI: their text is free-form and may name records.
    return jsonify({"items": [{k: iso(v) for k, v in r.items() if k != "error"}
                              | {"failed": r["status"] == "failed"} for r in rows]})
