"""Helpers for API tests: keys made with the real key functions, clients that send them, a
copy of a store to change, and a list published again."""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Sequence
from datetime import date, datetime, time
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, create_engine, select

from retention.access.keys import create_key
from retention.clock import FixedClock
from retention.settings import Settings
from retention.store import schema, tables
from retention.store.lists import latest_publication, publish_scores


def make_key(store: Engine, role: str = "admin", clinics: Sequence[str] = (),
             **kwargs: object) -> str:
    """A fresh key in ``store`` (creating the access tables if needed); returns the token."""
    with store.begin() as conn:
        schema.upgrade(conn)
        _, token = create_key(conn, role, clinics, **kwargs)  # type: ignore[arg-type]
    return token


def keyed_client(app: Flask, token: str) -> FlaskClient:
    """A test client that sends ``token`` as its bearer key on every request."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client


def copied_store(settings: Settings, directory: Path) -> Settings:
    """Settings over a copy of a SQLite store, for tests that change or break it."""
    path = directory / "store.db"
    with sqlite3.connect(settings.store_url.removeprefix("sqlite:///")) as src, \
            sqlite3.connect(path) as dst:
        src.backup(dst)
    return settings.with_overrides(store_url=f"sqlite:///{path}")


def clock_on(day: date, hour: int = 9) -> FixedClock:
    """A clock stopped at ``hour`` o'clock (UTC) on ``day``: what tests hand the app."""
    return FixedClock(datetime.combine(day, time(hour)))


def republish(engine: Engine, as_of: date, reverse: bool = True) -> None:
    """Publish the list of ``as_of`` again under a new run, in reverse rank order."""
    with engine.begin() as conn:
        pub = latest_publication(conn)
        assert pub is not None
        rows = [dict(r._mapping) for r in conn.execute(
            select(tables.scores).where(tables.scores.c.as_of == pub["as_of"])
            .order_by(tables.scores.c.rank))]
        if reverse:
            rows = [{**r, "rank": len(rows) - r["rank"] + 1} for r in rows]
        rows = [{**r, "as_of": as_of, "run_id": pub["run_id"] + 1000} for r in rows]
        publish_scores(conn, as_of, rows, pub["run_id"] + 1000, pub["model_version"])


def free_port() -> int:
    """A TCP port nothing listens on now, for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def copy_list(source: Engine, url: str) -> None:
    """The scored store's published lists (scores, publications, drift) in a new database."""
    target = create_engine(url)
    with target.begin() as conn:
        schema.upgrade(conn)
        with source.connect() as src:
            for table in (tables.scores, tables.publications, tables.drift):
                rows = [dict(r._mapping) for r in src.execute(select(table))]
                if rows:
                    conn.execute(table.insert(), rows)
    target.dispose()
