"""Whole-store checks: row counts and a hash of every data table, for equality tests."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, select

from retention.store.tables import DATA_TABLES, metadata


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
