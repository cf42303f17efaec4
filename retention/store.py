"""The service's own database: a copy of the clinic data, features, scores and runs.

Functions take a connection first and never commit: the caller owns the
transaction, so a run's writes land together or not at all.

The tables are defined here for SQLAlchemy; they are created and changed only by
the Alembic migrations in ``migrations/`` (``retention migrate``, or
``create_schema`` which runs the same upgrade).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

import orjson
import pandas as pd
from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Date,
    DateTime,
    Float,
    Index,
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

from retention import bulk, contract
from retention.clinic_data import ClinicData, from_frames

COPY_PREFIX = "clinic_"

metadata = MetaData()

# The service's copy of the clinic tables, named clinic_<contract name>: the rows of
# the clinic's source that passed validation, as of the last ETL run.
copies = {
    name: table.to_metadata(metadata, name=COPY_PREFIX + name)
    for name, table in contract.TABLES.items()
}
# Reads for one as-of date go by episode: the scoped read of the nightly run.
Index("ix_clinic_appointments_episode", copies["appointments"].c.episode_id,
      copies["appointments"].c.scheduled_at)
Index("ix_clinic_alliance_measures_latest", *(copies["alliance_measures"].c[c] for c in (
    "episode_id", "instrument", "rater", "administered_at")))
Index("ix_clinic_episodes_client", copies["episodes"].c.client_id)

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
    Column("rows_changed", Integer),
    Column("rows_quarantined", Integer),
    Column("model_version", String(64)),
    Column("error", Text),
    # JSON: what the run did in more detail (full or incremental, counts per table).
    Column("detail", Text),
)

features = Table(
    "features",
    metadata,
    Column("as_of", Date, primary_key=True),
    Column("episode_id", String(64), primary_key=True),
    Column("client_id", String(64), nullable=False),
    Column("clinic_id", String(64), nullable=False),
    Column("case_manager_id", String(64)),
    # The run that last changed this row; a re-run that computes the same values keeps it.
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
    # What the list was computed from (model, data version, settings): a re-run with
    # the same inputs leaves the published list as it is.
    Column("inputs_digest", String(64)),
)

# How far each source table has been read: rows with updated_at at or after
# (high_water - overlap) are read again by the next incremental run.
watermarks = Table(
    "watermarks",
    metadata,
    Column("table_name", String(64), primary_key=True),
    Column("high_water", DateTime),
    Column("run_id", Integer, nullable=False),
)

# Source rows that broke the contract, kept with the rule they broke until they are
# fixed at the source. ``rows_json`` holds the raw row(s) under that key (several for
# a duplicate key), so every run can check them again.
quarantine = Table(
    "quarantine",
    metadata,
    Column("table_name", String(64), primary_key=True),
    Column("row_key", String(200), primary_key=True),
    Column("rule", String(64), nullable=False),
    Column("detail", Text, nullable=False),
    Column("run_id", Integer, nullable=False),
    Column("quarantined_at", DateTime, nullable=False),
    Column("rows_json", Text, nullable=False),
    Index("ix_quarantine_rule", "table_name", "rule"),
)

# Tables whose content a run changes; ``runs`` only grows and is left out of checksums.
DATA_TABLES = (*(t.name for t in copies.values()), "features", "scores", "publications",
               "watermarks", "quarantine")


def create_schema(connection: Connection) -> None:
    """Bring the store's schema to the latest migration (the same code as `retention migrate`)."""
    from retention.schema import upgrade

    upgrade(connection)


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
    rows_changed: int | None = None,
    rows_quarantined: int | None = None,
    model_version: str | None = None,
    error: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Record how a run ended."""
    connection.execute(
        update(runs)
        .where(runs.c.run_id == run_id)
        .values(
            finished_at=utcnow(),
            status=status,
            rows_read=rows_read,
            rows_changed=rows_changed,
            rows_quarantined=rows_quarantined,
            model_version=model_version,
            error=error,
            detail=json.dumps(detail, sort_keys=True, default=str) if detail else None,
        )
    )


def list_runs(connection: Connection, limit: int = 20) -> list[dict[str, Any]]:
    """The most recent runs, newest first."""
    rows = connection.execute(select(runs).order_by(runs.c.run_id.desc()).limit(limit))
    return [{str(k): v for k, v in r._mapping.items()} for r in rows]


COPY_VERSION = "copy_version"


def copy_version(connection: Connection) -> int:
    """The id of the last ETL run that changed the clinic copy (0 if none has)."""
    value = connection.execute(
        select(watermarks.c.run_id).where(watermarks.c.table_name == COPY_VERSION)
    ).scalar()
    return int(value or 0)


def bump_copy_version(connection: Connection, run_id: int) -> None:
    """Record that ``run_id`` changed the clinic copy (in the run's own transaction)."""
    done = connection.execute(
        update(watermarks).where(watermarks.c.table_name == COPY_VERSION).values(run_id=run_id)
    )
    if not done.rowcount:
        connection.execute(insert(watermarks).values(table_name=COPY_VERSION, run_id=run_id))


# --- clinic copy -------------------------------------------------------------------


def read_clinic_copy(connection: Connection) -> ClinicData:
    """The service's whole copy of the clinic data (training reads this)."""
    frames = {
        name: bulk.read_query(
            connection, f"SELECT * FROM {table.name}", [c.name for c in table.columns]
        )
        for name, table in copies.items()
    }
    return from_frames(frames)


def read_scoped_copy(connection: Connection, as_of: date, lookback_days: int = 91) -> ClinicData:
    """Exactly the rows that features and reasons for ``as_of`` look at, and no more.

    For the episodes open at ``as_of``: their clients; their appointments from the
    earlier of ``lookback_days`` before ``as_of`` and the last slot attended before it
    (every slot when none was), future ones included; the last three client-rated
    SRS and GSRS with a total, and the last WAI-SR by each rater, administered before
    ``as_of``, with the items of those SRS and GSRS. ``build_features`` and the reason
    histories give the same answers on this as on the whole copy (see
    tests/test_store.py), at a fraction of the reading.
    """
    from retention.scoped import scoped_frames

    return from_frames(scoped_frames(connection, as_of, lookback_days))


# --- features ----------------------------------------------------------------------


def write_features(
    connection: Connection, as_of: date, frame: pd.DataFrame, feature_names: Sequence[str],
    run_id: int,
) -> int:
    """Store one as-of date's features; returns how many rows changed.

    Rows whose values are unchanged are left as they are (run id included), and rows
    of episodes no longer open are removed, so recomputing the same features changes
    nothing.
    """
    meta = frame[["client_id", "clinic_id", "case_manager_id"]].astype(object)
    meta = meta.where(meta.notna(), None)
    values = frame[list(feature_names)].astype(object)
    # Plain Python values (numbers, None for missing) in one pass, not one call per value.
    rows = values.where(values.notna(), None).to_numpy(dtype=object).tolist()
    names = [str(n) for n in feature_names]
    # orjson, not json: a third of this function's time went to encoding 21,000 rows.
    # (Its text is compact, so the first run after the change rewrote every row once.)
    options = orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY
    records = []
    for episode_id, m, v in zip(frame.index, meta.itertuples(index=False, name=None),
                                rows, strict=True):
        values_json = orjson.dumps(dict(zip(names, v, strict=True)), option=options).decode()
        records.append({
            "as_of": as_of,
            "episode_id": str(episode_id),
            "client_id": m[0],
            "clinic_id": m[1],
            "case_manager_id": m[2],
            "run_id": run_id,
            "values_json": values_json,
        })
    new = pd.DataFrame(records, columns=[c.name for c in features.columns])
    return bulk.sync_rows(
        connection, features, new, scope={"as_of": as_of},
        compare=["client_id", "clinic_id", "case_manager_id", "values_json"],
    )


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
    values = pd.DataFrame(_json_array([r.values_json for r in rows]))
    frame = pd.DataFrame([[getattr(r, m) for m in meta] for r in rows], columns=meta)
    frame = pd.concat([frame, values[list(feature_names)]], axis=1)
    return frame.set_index("episode_id", drop=False).rename_axis(None)


def _json_array(documents: list[str]) -> list[Any]:
    """Parse many JSON documents as one array: a third of the time of json.loads on each.

    orjson refuses the NaN and Infinity that json.dumps may have written; json reads them.
    """
    joined = "[" + ",".join(documents) + "]"
    try:
        return list(orjson.loads(joined))
    except orjson.JSONDecodeError:
        return list(json.loads(joined))


# --- scores and publication ---------------------------------------------------------


def publish_scores(
    connection: Connection,
    as_of: date,
    rows: Sequence[Mapping[str, Any]],
    run_id: int,
    model_version: str,
    inputs_digest: str | None = None,
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
            published_at=utcnow(),
            n_scored=len(rows),
            inputs_digest=inputs_digest,
        )
    )


def latest_publication(connection: Connection, as_of: date | None = None) -> dict[str, Any] | None:
    """The newest published list (or the one for ``as_of``), or None."""
    query = select(publications)
    if as_of is not None:
        query = query.where(publications.c.as_of == as_of)
    row = connection.execute(query.order_by(publications.c.as_of.desc()).limit(1)).first()
    return dict(row._mapping) if row else None


def count_scores(connection: Connection, as_of: date, tier: str | None = None) -> int:
    """How many rows a published list holds (in one tier, if given)."""
    query = select(func.count()).select_from(scores).where(scores.c.as_of == as_of)
    if tier is not None:
        query = query.where(scores.c.tier == tier)
    return int(connection.execute(query).scalar_one())


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


def score_row(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A published score row with its reasons JSON unpacked into the row."""
    out = {str(k): v for k, v in row.items()}
    out.update(json.loads(out.pop("reasons_json")))
    return out


# --- checks -------------------------------------------------------------------------


def table_checksums(
    connection: Connection, tables: Sequence[str] = DATA_TABLES
) -> dict[str, tuple[int, str]]:
    """Row count and a SHA-256 of every row (in key order) of each data table.

    Two stores with equal checksums hold the same rows; tests use this to show that
    a re-run changes nothing and that incremental runs equal a full reload.
    """
    out = {}
    for name in tables:
        table = metadata.tables[name]
        keys = list(table.primary_key.columns) or list(table.columns)
        digest = hashlib.sha256()
        count = 0
        for row in connection.execute(select(table).order_by(*keys)):
            digest.update(repr(tuple(_canonical(v) for v in row)).encode())
            count += 1
        out[name] = (count, digest.hexdigest())
    return out


def _canonical(value: Any) -> Any:
    """Values as the same Python objects whatever the database returned."""
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return value
