"""Published lists: the scores of one as-of date, its publication, and its drift.

A list is replaced as a whole and marked published in the same transaction, so
readers see it whole or not at all. Functions take a connection first and never
commit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

import pandas as pd
from sqlalchemy import Connection, delete, func, insert, select

from retention.clock import utcnow
from retention.db import bulk
from retention.model.drift import SCORE
from retention.store.tables import drift, publications, scores


def publish_scores(
    connection: Connection,
    as_of: date,
    rows: Sequence[Mapping[str, Any]],
    run_id: int,
    model_version: str,
    inputs_digest: str | None = None,
    at: datetime | None = None,
) -> None:
    """Replace the list for ``as_of`` and mark it published, in the caller's transaction."""
    connection.execute(delete(scores).where(scores.c.as_of == as_of))
    connection.execute(delete(publications).where(publications.c.as_of == as_of))
    frame = pd.DataFrame(list(rows), columns=[c.name for c in scores.columns])
    bulk.insert_frame(connection, scores, frame)
    connection.execute(
        insert(publications).values(
            as_of=as_of,
            run_id=run_id,
            model_version=model_version,
            published_at=at or utcnow(),
            n_scored=len(rows),
            inputs_digest=inputs_digest,
        )
    )


def latest_publication(
    connection: Connection, as_of: date | None = None, *, before: date | None = None
) -> dict[str, Any] | None:
    """The newest published list (the one for ``as_of``, or the newest before ``before``),
    or None."""
    query = select(publications)
    if as_of is not None:
        query = query.where(publications.c.as_of == as_of)
    if before is not None:
        query = query.where(publications.c.as_of < before)
    row = connection.execute(query.order_by(publications.c.as_of.desc()).limit(1)).first()
    return dict(row._mapping) if row else None


def count_scores(connection: Connection, as_of: date, tier: str | None = None) -> int:
    """How many rows a published list holds (in one tier, if given)."""
    query = select(func.count()).select_from(scores).where(scores.c.as_of == as_of)
    if tier is not None:
        query = query.where(scores.c.tier == tier)
    return int(connection.execute(query).scalar_one())


def list_counts(connection: Connection, as_of: date) -> list[tuple[str, str, str, int]]:
    """How many rows a published list holds by clinic, program and tier."""
    query = (
        select(scores.c.clinic_id, scores.c.program, scores.c.tier, func.count())
        .where(scores.c.as_of == as_of)
        .group_by(scores.c.clinic_id, scores.c.program, scores.c.tier)
    )
    return [(str(c), str(p), str(t), int(n)) for c, p, t, n in connection.execute(query)]


def read_list(
    connection: Connection,
    as_of: date,
    *,
    clinic_id: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """The ranked list for a published date, highest risk first."""
    query = select(scores).where(scores.c.as_of == as_of)
    if clinic_id is not None:
        query = query.where(scores.c.clinic_id == clinic_id)
    query = query.order_by(scores.c.rank).limit(limit)
    return [score_row(r._mapping) for r in connection.execute(query)]


# What a row's reasons JSON holds when a list published before it did has none of it.
REASON_DEFAULTS: dict[str, Any] = {
    "reasons": [],
    "protective": [],
    "context": [],
    "prompts": [],
    "points": None,
    "left_out": [],
}


def score_row(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A published score row with its reasons JSON unpacked into the row."""
    out = {str(k): v for k, v in row.items()}
    out.update(REASON_DEFAULTS)
    out.update(json.loads(out.pop("reasons_json")))
    return out


# --- drift ---------------------------------------------------------------------------


def record_drift(
    connection: Connection,
    run_id: int,
    as_of: date,
    model_version: str,
    results: list[dict[str, Any]],
) -> None:
    """Store one scoring run's drift rows (the caller owns the transaction)."""
    connection.execute(delete(drift).where(drift.c.run_id == run_id))
    if results:
        connection.execute(
            insert(drift),
            [
                {"run_id": run_id, "as_of": as_of, "model_version": model_version, **r}
                for r in results
            ],
        )


def latest_drift(connection: Connection) -> dict[str, Any]:
    """The newest scoring run's drift: flagged features, the score's PSI, and all values.

    Returns ``{"run_id": None, ...}`` when no run has recorded drift yet.
    """
    return run_drift(connection, connection.execute(select(func.max(drift.c.run_id))).scalar())


def run_drift(connection: Connection, run_id: int | None) -> dict[str, Any]:
    """One scoring run's drift, as ``latest_drift`` gives it (empty if none was recorded)."""
    rows = (
        []
        if run_id is None
        else connection.execute(select(drift).where(drift.c.run_id == run_id)).fetchall()
    )
    if not rows:
        return {
            "run_id": run_id,
            "as_of": None,
            "model_version": None,
            "drifted": False,
            "flagged": [],
            "score_psi": None,
            "psi": {},
        }
    psi_values = {r.feature: float(r.psi) for r in rows}
    flagged = sorted(r.feature for r in rows if r.flagged)
    score_psi = psi_values.pop(SCORE, math.nan)
    return {
        "run_id": int(rows[0].run_id),
        "as_of": rows[0].as_of.isoformat() if rows else None,
        "model_version": rows[0].model_version if rows else None,
        "drifted": bool(flagged),
        "flagged": ["score" if f == SCORE else f for f in flagged],
        "score_psi": None if math.isnan(score_psi) else score_psi,
        "psi": psi_values,
    }
