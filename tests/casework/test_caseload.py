"""Caseloads (``retention.casework.caseload``): the change since the previous list."""

from __future__ import annotations

from retention.casework import caseload


def test_change_since_yesterday() -> None:
    row = {"risk": 0.62, "tier": "high"}
    assert caseload.change_since(row, None, False) == ("none", None)
    assert caseload.change_since(row, None, True) == ("new", None)
    assert caseload.change_since(row, (0.40, "medium"), True)[0] == "up"
    assert caseload.change_since(row, (0.60, "high"), True)[0] == "same"
    assert caseload.change_since(row, (0.80, "high"), True) == ("down", -18.0)
