"""Version 1 of the JSON API: the ranked list, one client's risk, health."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from api.errors import Problem
from retention import store
from retention.config import Settings

bp = Blueprint("v1", __name__)

LIST_FIELDS = (
    "rank", "client_id", "episode_id", "clinic_id", "case_manager_id", "program", "risk",
    "tier", "still_engaged", "last_attended_on", "next_booked_at", "reasons", "protective",
)


def _settings() -> Settings:
    settings: Settings = current_app.extensions["retention"]["settings"]
    return settings


def _store() -> Engine:
    engine: Engine = current_app.extensions["retention"]["store"]
    return engine


def _today() -> date:
    clock = current_app.config.get("TODAY")
    return clock() if callable(clock) else date.today()


def _parse_date(name: str) -> date | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise Problem(400, f"{name} must be a date as YYYY-MM-DD, got {raw!r}",
                      "Invalid query parameter") from None


def _parse_limit(default: int = 50) -> int:
    raw = request.args.get("limit", str(default))
    maximum = _settings().api_max_limit
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise Problem(400, f"limit must be a whole number from 1 to {maximum}",
                      "Invalid query parameter")
    return int(raw)


def _check_params(allowed: set[str]) -> None:
    unknown = sorted(set(request.args) - allowed)
    if unknown:
        raise Problem(400, f"unknown query parameter(s): {', '.join(unknown)}; "
                      f"allowed: {', '.join(sorted(allowed))}", "Invalid query parameter")


def _publication(as_of: date | None) -> dict[str, Any]:
    with _store().connect() as conn:
        pub = store.latest_publication(conn, as_of)
    if pub is None:
        detail = (f"no list was published for {as_of}" if as_of
                  else "no list has been published yet; the nightly run has not completed")
        raise Problem(404, detail, "No published list")
    return pub


def _freshness(pub: dict[str, Any]) -> dict[str, Any]:
    as_of: date = pub["as_of"]
    age = (_today() - as_of).days
    return {"as_of": as_of.isoformat(), "model_version": pub["model_version"],
            "published_at": _iso(pub["published_at"]), "age_days": age, "stale": age > 1}


def _iso(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _public(row: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {k: _iso(row.get(k)) for k in fields}


@bp.get("/health")
def health() -> ResponseReturnValue:
    """Liveness plus the freshness of the served list; 200 even when stale."""
    try:
        with _store().connect() as conn:
            pub = store.latest_publication(conn)
    except SQLAlchemyError:
        detail = "the store cannot be read; run the ETL first"
        return jsonify({"status": "unavailable", "detail": detail}), 503
    return jsonify({"status": "ok", "list": _freshness(pub) if pub else None})


@bp.get("/v1/risk-list")
def risk_list() -> ResponseReturnValue:
    """Open episodes ranked by risk, highest first, with their reasons."""
    _check_params({"limit", "clinic_id", "as_of"})
    limit = _parse_limit()
    pub = _publication(_parse_date("as_of"))
    with _store().connect() as conn:
        rows = store.read_list(conn, pub["as_of"], clinic_id=request.args.get("clinic_id"),
                               limit=limit)
    return jsonify({**_freshness(pub), "count": len(rows),
                    "items": [_public(r, LIST_FIELDS) for r in rows]})


@bp.get("/v1/clients/<client_id>/risk")
def client_risk(client_id: str) -> ResponseReturnValue:
    """A client's current risk with reasons, and their risk over recent lists."""
    _check_params({"as_of"})
    pub = _publication(_parse_date("as_of"))
    with _store().connect() as conn:
        history = store.read_client_scores(conn, client_id, pub["as_of"])
    current = [h for h in history if h["as_of"] == pub["as_of"]]
    if not current:
        raise Problem(404, f"no open episode for client {client_id} on the list of "
                      f"{pub['as_of']}", "Client not on the list")
    since = pub["as_of"] - timedelta(days=90)
    return jsonify({
        **_freshness(pub),
        "client_id": client_id,
        "current": _public(current[0], LIST_FIELDS),
        "history": [
            {"as_of": h["as_of"].isoformat(), "episode_id": h["episode_id"],
             "risk": h["risk"], "tier": h["tier"], "rank": h["rank"]}
            for h in history if h["as_of"] >= since
        ],
    })
