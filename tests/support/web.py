"""Helpers for the pages' tests: signing in through the form, and reading pages back."""

from __future__ import annotations

import re
from datetime import datetime

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine

from retention.access.audit import read_audit


def csrf(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, "the page has no CSRF field"
    return found.group(1)


def signed_in(app: Flask, token: str) -> FlaskClient:
    client = app.test_client()
    form = client.get("/web/sign-in").get_data(as_text=True)
    answer = client.post("/web/sign-in", data={"csrf_token": csrf(form), "key": token})
    assert answer.status_code == 303, answer.get_data(as_text=True)
    return client


def audit_rows(engine: Engine, action: str) -> list[dict]:
    with engine.connect() as conn:
        rows = read_audit(conn, datetime.min, datetime.max)
    return [r for r in rows if r["action"] == action]


def clients_on(page: str) -> list[str]:
    return re.findall(r'<tr id="c-([^"]+)"', page)
