"""The service's own database: a copy of the clinic data, features, scores and runs.

Functions take a connection first and never commit: the caller owns the
transaction, so a run's writes land together or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Date,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    update,
)

from retention import contract
from retention.clinic_data import ClinicData, read_clinic

COPY_PREFIX = "clinic_"

metadata = MetaData()

# The service's copy of the clinic tables, named clinic_<contract name>.
copies = {
    name: table.to_metadata(metadata, name=COPY_PREFIX + name)
    for name, table in contract.TABLES.items()
}

runs = Table(
    "runs",
    metadata,
    Column("run_id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("as_of", Date),
    Column("started_at", DateTime, nullable=False),
    Column("finished_at", DateTime),
    Column("status", String(16), nullable=False),
    Column("rows_read", Integer),
    Column("rows_written", Integer),
    Column("model_version", String(64)),
    Column("error", Text),
)

features = Table(
    "features",
    metadata,
    Column("as_of", Date, primary_key=True),
    Column("episode_id", String(64), primary_key=True),
    Column("client_id", String(64), nullable=False),
    Column("clinic_id", String(64), nullable=False),
    Column("case_manager_id", String(64)),
    Column("run_id", Integer, nullable=False),
    Column("values_json", Text, nullable=False),
)

scores = Table(
    "scores",
    metadata,
    Column("as_of", Date, primary_key=True),
    Column("episode_id", String(64), primary_key=True),
    Column("client_id", String(64), nullable=False, index=True),
    Column("clinic_id", String(64), nullable=False),
    Column("case_manager_id", String(64)),
    Column("program", String(32), nullable=False),
    Column("rank", Integer, nullable=False),
    Column("risk", Float, nullable=False),
    Column("tier", String(16), nullable=False),
    Column("still_engaged", Boolean, nullable=False),
    Column("last_attended_on", Date),
    Column("next_booked_at", DateTime),
    Column("model_version", String(64), nullable=False),
    Column("run_id", Integer, nullable=False),
    Column("reasons_json", Text, nullable=False),
)

# One row per published list; the newest is what readers see. Written in the
# same transaction as the scores, so a list is visible whole or not at all.
publications = Table(
    "publications",
    metadata,
    Column("as_of", Date, primary_key=True),
    Column("run_id", Integer, nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("published_at", DateTime, nullable=False),
    Column("n_scored", Integer, nullable=False),
)


def create_schema(connection: Connection) -> None:
    """Create the service's tables where they do not exist."""
    metadata.create_all(connection)


def utcnow() -> datetime:
    """Naive UTC time: both SQLite and PostgreSQL store it without surprises."""
    return datetime.now(UTC).replace(tzinfo=None)


# --- runs --------------------------------------------------------------------------


def start_run(connection: Connection, kind: str, as_of: date | None) -> int:
    """Record that a run began; returns its id."""
    result = connection.execute(
        insert(runs).values(kind=kind, as_of=as_of, started_at=utcnow(), status="running")
    )
    return int(result.inserted_primary_key[0])  # type: ignore[index]


def finish_run(
    connection: Connection,
    run_id: int,
    status: str,
    *,
    rows_read: int | None = None,
    rows_written: int | None = None,
    model_version: str | None = None,
    error: str | None = None,
) -> None:
    """Record how a run ended."""
    connection.execute(
        update(runs)
        .where(runs.c.run_id == run_id)
        .values(
            finished_at=utcnow(),
            status=status,
            rows_read=rows_read,
            rows_written=rows_written,
            model_version=model_version,
            error=error,
        )
    )


def list_runs(connection: Connection, limit: int = 20) -> list[dict[str, Any]]:
    """The most recent runs, newest first."""
    rows = connection.execute(select(runs).order_by(runs.c.run_id.desc()).limit(limit))
    return [{str(k): v for k, v in r._mapping.items()} for r in rows]


# --- clinic copy -------------------------------------------------------------------


def replace_clinic_copy(connection: Connection, data: ClinicData) -> int:
    """Replace the service's copy of the clinic tables with ``data``; returns rows written."""
    written = 0
    for name, frame in data.frames().items():
        table = copies[name]
        connection.execute(delete(table))
        records = _records(frame[[c.name for c in table.columns]])
        for start in range(0, len(records), 5000):
            connection.execute(insert(table), records[start : start + 5000])
        written += len(records)
    return written


def read_clinic_copy(connection: Connection) -> ClinicData:
    """The service's copy of the clinic data."""
    return read_clinic(connection, prefix=COPY_PREFIX)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts with plain Python values (None for missing) for any driver."""
    out = frame.astype(object).where(frame.notna(), None)
    return [{str(k): _plain(v) for k, v in rec.items()} for rec in out.to_dict("records")]


def _plain(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, np.generic):
        return value.item()
    return value


def normalise_dates(frame: pd.DataFrame, date_columns: Sequence[str]) -> pd.DataFrame:
    """Turn timestamp columns that hold calendar dates into ``date`` objects."""
    out = frame.copy()
    for col in date_columns:
        out[col] = out[col].map(lambda v: None if pd.isna(v) else pd.Timestamp(v).date())
    return out


def copy_as_contract(data: ClinicData) -> ClinicData:
    """Date columns back to calendar dates, as the contract types them, for writing."""
    frames = dict(data.frames())
    frames["episodes"] = normalise_dates(frames["episodes"], contract.DATE_COLUMNS["episodes"])
    return ClinicData(**{
        "clients": frames["clients"],
        "episodes": frames["episodes"],
        "appointments": frames["appointments"],
        "measures": frames["alliance_measures"],
        "items": frames["alliance_items"],
    })


# --- features ----------------------------------------------------------------------


def write_features(
    connection: Connection, as_of: date, frame: pd.DataFrame, feature_names: Sequence[str],
    run_id: int,
) -> int:
    """Store one as-of date's features, replacing any earlier ones for that date."""
    connection.execute(delete(features).where(features.c.as_of == as_of))
    records = []
    for episode_id, row in frame.iterrows():
        values = {n: _json_value(row[n]) for n in feature_names}
        records.append({
            "as_of": as_of,
            "episode_id": str(episode_id),
            "client_id": row["client_id"],
            "clinic_id": row["clinic_id"],
            "case_manager_id": None if pd.isna(row["case_manager_id"]) else row["case_manager_id"],
            "run_id": run_id,
            "values_json": json.dumps(values, sort_keys=True),
        })
    for start in range(0, len(records), 5000):
        connection.execute(insert(features), records[start : start + 5000])
    return len(records)


def read_features(
    connection: Connection, as_of: date, feature_names: Sequence[str]
) -> pd.DataFrame:
    """One as-of date's stored features, indexed by episode id (empty if none)."""
    rows = connection.execute(
        select(features).where(features.c.as_of == as_of).order_by(features.c.episode_id)
    ).fetchall()
    meta = ["episode_id", "client_id", "clinic_id", "case_manager_id"]
    if not rows:
        return pd.DataFrame(columns=[*meta, *feature_names])
    values = pd.DataFrame([json.loads(r.values_json) for r in rows])
    frame = pd.DataFrame([[getattr(r, m) for m in meta] for r in rows], columns=meta)
    frame = pd.concat([frame, values[list(feature_names)]], axis=1)
    return frame.set_index("episode_id", drop=False).rename_axis(None)


def _json_value(v: Any) -> Any:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, np.generic):
        return v.item()
    return v


# --- scores and publication ---------------------------------------------------------


def publish_scores(
    connection: Connection,
    as_of: date,
    rows: Sequence[Mapping[str, Any]],
    run_id: int,
    model_version: str,
) -> None:
    """Replace the list for ``as_of`` and mark it published, in the caller's transaction."""
    connection.execute(delete(scores).where(scores.c.as_of == as_of))
    connection.execute(delete(publications).where(publications.c.as_of == as_of))
    for start in range(0, len(rows), 5000):
        connection.execute(insert(scores), list(rows[start : start + 5000]))
    connection.execute(
        insert(publications).values(
            as_of=as_of,
            run_id=run_id,
            model_version=model_version,
            published_at=utcnow(),
            n_scored=len(rows),
        )
    )


def latest_publication(connection: Connection, as_of: date | None = None) -> dict[str, Any] | None:
    """The newest published list (or the one for ``as_of``), or None."""
    query = select(publications)
    if as_of is not None:
        query = query.where(publications.c.as_of == as_of)
    row = connection.execute(query.order_by(publications.c.as_of.desc()).limit(1)).first()
    return dict(row._mapping) if row else None


def count_scores(connection: Connection, as_of: date) -> int:
    """How many rows a published list holds."""
    return int(connection.execute(
        select(func.count()).select_from(scores).where(scores.c.as_of == as_of)
    ).scalar_one())


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
    return [_score_row(r._mapping) for r in connection.execute(query)]


def read_client_scores(
    connection: Connection, client_id: str, until: date, limit: int = 12
) -> list[dict[str, Any]]:
    """A client's published scores up to ``until``, newest first (all episodes)."""
    published = select(publications.c.as_of)
    query = (
        select(scores)
        .where(scores.c.client_id == client_id)
        .where(scores.c.as_of <= until)
        .where(scores.c.as_of.in_(published))
        .order_by(scores.c.as_of.desc(), scores.c.risk.desc())
        .limit(limit)
    )
    return [_score_row(r._mapping) for r in connection.execute(query)]


def _score_row(row: Mapping[Any, Any]) -> dict[str, Any]:
    out = {str(k): v for k, v in row.items()}
    out.update(json.loads(out.pop("reasons_json")))
    return out
