"""Clinic source databases for the ETL tests: synthetic clinics, changed the way an EHR is.

``Source`` wraps a clinic database (SQLite file or PostgreSQL) with a writable
engine for the test and helpers that insert, update and delete contract rows as
other systems would, stamping ``updated_at``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import (
    Column,
    Engine,
    MetaData,
    Table,
    Text,
    create_engine,
    delete,
    func,
    insert,
    select,
    update,
)

from retention.clinic import contract
from retention.clinic.synth import SynthConfig, generate, write
from retention.store import tables

AS_OF = date(2026, 6, 1)
# Everything but the run bookkeeping: what a store holds that a run decides.
COMPARED = {
    **{t.name: None for t in tables.copies.values()},
    "features": ["as_of", "episode_id", "client_id", "clinic_id", "case_manager_id",
                 "values_json"],
    "quarantine": ["table_name", "row_key", "rule", "detail", "rows_json"],
}


@dataclass
class Source:
    """A clinic database the test can change."""

    url: str
    engine: Engine
    text_only: bool = False

    @classmethod
    def synthetic(cls, url: str, n_clients: int = 300, seed: int = 11,
                  end: date = AS_OF) -> Source:
        engine = create_engine(url)
        with engine.begin() as conn:
            write(conn, generate(SynthConfig(end=end, n_clients=n_clients, seed=seed)))
        return cls(url, engine)

    @classmethod
    def loose(cls, url: str, n_clients: int = 150, seed: int = 11, end: date = AS_OF) -> Source:
        """A clinic whose tables hold text, with no keys or constraints: an EHR export that
        will happily keep a duplicate, an empty status or '2026-02-30'."""
        return cls.loose_frames(url, generate(SynthConfig(end=end, n_clients=n_clients,
                                                          seed=seed)))

    @classmethod
    def loose_frames(cls, url: str, frames: Mapping[str, pd.DataFrame]) -> Source:
        """A text-only clinic (as ``loose``) holding ``frames`` as they are: duplicate keys,
        orphans and NULL keys load, each value as its text (``broken_network``, say)."""
        engine = create_engine(url)
        with engine.begin() as conn:
            LOOSE.create_all(conn)
            for name, frame in frames.items():
                rows = [{str(k): _as_text(v) for k, v in r.items()}
                        for r in frame.to_dict("records")]
                if rows:
                    conn.execute(insert(LOOSE.tables[name]), rows)
        return cls(url, engine, text_only=True)

    def table(self, name: str) -> Table:
        return LOOSE.tables[name] if self.text_only else contract.TABLES[name]

    def insert(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        convert = _as_text if self.text_only else (lambda v: v)
        with self.engine.begin() as conn:
            conn.execute(insert(self.table(table)),
                         [{k: convert(v) for k, v in r.items()} for r in rows])

    def update(self, table: str, key: Mapping[str, Any], **values: Any) -> None:
        t = self.table(table)
        if self.text_only:
            values = {k: _as_text(v) for k, v in values.items()}
        with self.engine.begin() as conn:
            conn.execute(update(t).where(*(t.c[k] == v for k, v in key.items())).values(**values))

    def delete(self, table: str, key: Mapping[str, Any]) -> None:
        t = self.table(table)
        with self.engine.begin() as conn:
            conn.execute(delete(t).where(*(t.c[k] == v for k, v in key.items())))

    def rows(self, table: str, where: Mapping[str, Any] | None = None,
             limit: int | None = None) -> list[dict[str, Any]]:
        t = self.table(table)
        query = select(t).where(*(t.c[k] == v for k, v in (where or {}).items()))
        query = query.order_by(*(t.c[c.name] for c in contract.TABLES[table].primary_key.columns))
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def count(self, table: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(
                select(func.count()).select_from(self.table(table))).scalar_one())

    def open_episode_ids(self, as_of: date = AS_OF) -> list[str]:
        e = self.table("episodes")
        with self.engine.connect() as conn:
            return list(conn.execute(
                select(e.c.episode_id).where(e.c.admitted_on < as_of, e.c.discharged_on.is_(None))
                .order_by(e.c.episode_id)).scalars())

    def dispose(self) -> None:
        self.engine.dispose()


LOOSE = MetaData()
for _t in contract.TABLES.values():
    Table(_t.name, LOOSE, *(Column(c.name, Text) for c in _t.columns))


def _as_text(value: Any) -> str | None:
    """A value as a text column of an EHR export holds it."""
    if value is None or (isinstance(value, float) and value != value) or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp | datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value == int(value):
        return str(int(value)) if abs(value) < 1e15 else str(value)
    return str(value)


def appointment(appointment_id: str, episode: Mapping[str, Any], when: datetime,
                status: str = "attended", stamp: datetime | None = None,
                **extra: Any) -> dict[str, Any]:
    """A contract appointment row of ``episode``, last written at ``stamp``."""
    stamp = stamp or when + timedelta(hours=2)
    row = {
        "appointment_id": appointment_id, "episode_id": episode["episode_id"],
        "client_id": episode["client_id"], "scheduled_at": when,
        "booked_at": when - timedelta(days=7), "status": status,
        "service_type": "individual", "telehealth": False, "clinician_id": "clin-x",
        "updated_at": stamp,
    }
    row.update(extra)
    return row


def stored(engine: Engine, as_of: date | None = None) -> dict[str, list[tuple[Any, ...]]]:
    """The store's decided content, table by table, without run ids and times
    (features of ``as_of`` only, if given)."""
    out = {}
    with engine.connect() as conn:
        for name, columns in COMPARED.items():
            table = tables.metadata.tables[name]
            cols = [table.c[c] for c in columns] if columns else list(table.columns)
            keys = list(table.primary_key.columns)
            query = select(*cols).order_by(*keys)
            if name == "features" and as_of is not None:
                query = query.where(table.c.as_of == as_of)
            rows = conn.execute(query).fetchall()
            out[name] = [tuple(_plain(v) for v in r) for r in rows]
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, str) and value.startswith("{"):
        try:  # features: compare values, not float text
            return json.dumps(json.loads(value), sort_keys=True)
        except ValueError:
            return value
    return value
