"""Health, readiness, models and runs: what operators and analysts need, no client data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import inspect
from sqlalchemy.exc import SQLAlchemyError

from retention.api.auth import ANY, OPERATIONS, requires
from retention.api.errors import Problem
from retention.api.routes import check_params, freshness, iso, settings, store_engine
from retention.model import artifacts
from retention.model.booster import ModelError
from retention.store import tables
from retention.store.lists import latest_publication
from retention.store.runs import list_runs

bp = Blueprint("operations", __name__)

CARD_FIELDS = ("version", "task", "created_at", "trained_as_of", "horizon_days", "window",
               "metrics", "libraries", "sha256")


@bp.get("/health")
def health() -> ResponseReturnValue:
    """Liveness plus the freshness of the served list; 200 even when stale."""
    try:
        with store_engine().connect() as conn:
            pub = latest_publication(conn)
    except SQLAlchemyError:
        raise Problem(503, "the store cannot be read; run the ETL first",
                      "Service unavailable") from None
    return jsonify({"status": "ok", "list": freshness(pub) if pub else None})


@bp.get("/ready")
def ready() -> ResponseReturnValue:
    """Ready to serve: the store answers, keys and audit tables exist, a list is published."""
    try:
        with store_engine().connect() as conn:
            present = set(inspect(conn).get_table_names())
            pub = latest_publication(conn) if "publications" in present else None
    except SQLAlchemyError:
        raise Problem(503, "the store cannot be read", "Not ready") from None
    missing = sorted({tables.api_keys.name, tables.audit_log.name} - present)
    if missing:
        raise Problem(503, f"table(s) {', '.join(missing)} missing: run "
                      "`retention keys create` once to create them", "Not ready")
    if pub is None:
        raise Problem(503, "no list has been published yet", "Not ready")
    return jsonify({"status": "ready", "list": freshness(pub)})


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
    raw = request.args.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= 200:
        raise Problem(400, "limit must be a whole number from 1 to 200", "Invalid query parameter")
    with store_engine().connect() as conn:
        rows = list_runs(conn, int(raw))
    # Errors stay in the CLI: their text is free-form and may name records.
    return jsonify({"items": [{k: iso(v) for k, v in r.items() if k != "error"}
                              | {"failed": r["status"] == "failed"} for r in rows]})
