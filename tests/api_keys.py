"""Helpers for API tests: keys made with the real key functions, clients that send them."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import date, datetime, time
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine

from retention.access.keys import create_key
from retention.clock import FixedClock
from retention.settings import Settings
from retention.store import schema


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
