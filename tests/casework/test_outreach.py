"""Outreach (``retention.casework.outreach``): entries checked before they are recorded, and
contacted episodes known to monitoring."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine

from retention.casework import outreach
from retention.store.lists import read_list
from tests.conftest import Scored


def test_outreach_entries_are_checked() -> None:
    ok = outreach.parse_entry({"result": "not_reached", "channel": "text", "note": "  left  vm "})
    assert ok == (False, "text", None, "left vm")
    for bad in ({"result": "maybe", "channel": "phone"},
                {"result": "reached", "channel": "pigeon", "outcome": "booked"},
                {"result": "not_reached", "channel": "phone", "outcome": "booked"},
                {"result": "reached", "channel": "phone", "outcome": "booked", "note": "x" * 281}):
        with pytest.raises(outreach.OutreachError):
            outreach.parse_entry(bad)


def test_contacted_episodes_are_known_to_monitoring(scored: Scored,
                                                    private_store: tuple[str, Engine]) -> None:
    _, engine = private_store
    with engine.begin() as conn:
        row = read_list(conn, scored.as_of, limit=1)[0]
        outreach.record_outreach(conn, outreach.Outreach(
            client_id=row["client_id"], episode_id=row["episode_id"],
            clinic_id=row["clinic_id"], list_as_of=scored.as_of, risk=row["risk"],
            tier=row["tier"], key_id="k", reached=False, channel="phone"),
            at=datetime(2026, 6, 1, 9))
        now = datetime(2026, 6, 1, 9, 30)
        assert row["episode_id"] in outreach.contacted_episodes(
            conn, now - timedelta(hours=1), now + timedelta(hours=1))
        assert outreach.contacted_episodes(conn, now - timedelta(hours=2),
                                           now - timedelta(hours=1)) == set()
