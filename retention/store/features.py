"""Stored features: one row per open episode per as-of date, values as JSON.

Functions take a connection first and never commit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date
from typing import Any

import orjson
import pandas as pd
from sqlalchemy import Connection, select

from retention.db import bulk
from retention.store.tables import features


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
    # orjson, not json: json's encoding was a large share of this function's time.
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
    """Parse many JSON documents as one array: much faster than json.loads on each.

    orjson refuses the NaN and Infinity that json.dumps may have written; json reads them.
    """
    joined = "[" + ",".join(documents) + "]"
    try:
        return list(orjson.loads(joined))
    except orjson.JSONDecodeError:
        return list(json.loads(joined))
