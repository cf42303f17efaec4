"""Validation against the contract: what passes is typed as the contract types it, and
duplicate keys are found whatever the order of the rows."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest

from retention.etl.validation import Context, _duplicated, _shared_text, validate


def test_validation_types_what_passes_as_the_contract_does() -> None:
    raw = {
        "clients": pd.DataFrame([{"client_id": "C1", "clinic_id": "k", "birth_year": "1980.5"},
                                 {"client_id": "C2", "clinic_id": "k", "birth_year": "1990"}]),
        "episodes": pd.DataFrame([{"episode_id": "E1", "client_id": "C2", "program": "detox",
                                   "admitted_on": "2026-01-05", "updated_at": "2026-01-05 09:00",
                                   "discharged_on": "2026-01-02"},
                                  {"episode_id": "E2", "client_id": "C2", "program": "detox",
                                   "admitted_on": date(2026, 1, 5),
                                   "updated_at": datetime(2026, 1, 5, 9)}]),
    }
    out = validate(raw, Context())
    rules = dict(zip(out.rejects["row_key"], out.rejects["rule"], strict=True))
    assert rules == {"C1": "malformed_value", "E1": "discharge_before_admission"}
    episodes = out.valid["episodes"]
    assert list(episodes["episode_id"]) == ["E2"]
    assert episodes["admitted_on"].iloc[0].date() == date(2026, 1, 5)
    assert out.valid["clients"]["birth_year"].tolist() == [1990]


@pytest.mark.parametrize("ids", [
    ["A1", "A2", "A3", "A4"],  # in key order: no duplicate (the fast path)
    ["A1", "A2", "A2", "A3"],  # in order, one key twice
    ["A3", "A1", "A2", "A1"],  # out of order, one key twice
    ["A1", None, "A1", "A2"],  # a missing key between two equal ones
    ["A2", "A1"],
])
@pytest.mark.parametrize("dtype", [object, "str"])
def test_duplicate_keys_are_found_in_any_order(ids: list[str | None], dtype: Any) -> None:
    frame = pd.DataFrame({"appointment_id": pd.Series(ids, dtype=dtype)})
    want = [v is not None and ids.count(v) > 1 for v in ids]
    assert _duplicated(frame, ["appointment_id"]).tolist() == want


@pytest.mark.parametrize("dtype", [object, "str"])
def test_text_ids_in_or_near_key_order_are_checked_by_sorting(dtype: Any) -> None:
    # Sorting spares hashing millions of ids (0.5 s against 1.2-2.6 s for 5.5 million
    # slots). pandas 3 keeps text as Arrow's large_string, which it once failed to see.
    ids = [f"A{n:05d}" for n in range(1000)]
    in_order = _shared_text(pd.Series(ids, dtype=dtype))
    assert in_order is not None and not in_order.any()
    # Two rows out of place (written late), each a key seen elsewhere, and a missing key.
    moved = [*ids[:500], "A00010", *ids[500:700], "A00990", *ids[700:800], None, *ids[800:]]
    frame = pd.DataFrame({"appointment_id": pd.Series(moved, dtype=dtype)})
    shared = _shared_text(frame["appointment_id"])
    assert shared is not None
    assert [moved[i] for i in np.flatnonzero(shared)] == ["A00010", "A00010", "A00990",
                                                         "A00990"]
    assert _duplicated(frame, ["appointment_id"]).tolist() == shared.tolist()
    # Far from key order: left to hashing, with the same answer.
    assert _shared_text(pd.Series(ids[::-1], dtype=dtype)) is None
    assert _shared_text(pd.Series([1, 2, 3])) is None


@pytest.mark.parametrize("pairs", [
    [("M1", 1), ("M1", 2), ("M2", 1), ("M2", 2)],
    [("M1", 1), ("M1", 2), ("M1", 2), ("M2", 1)],
    [("M2", 1), ("M1", 2), ("M2", 1)],
])
def test_duplicate_composite_keys_are_found_in_any_order(pairs: list[tuple[str, int]]) -> None:
    frame = pd.DataFrame(pairs, columns=["measure_id", "item_number"]).astype(
        {"measure_id": "category"})
    want = [pairs.count(p) > 1 for p in pairs]
    assert _duplicated(frame, ["measure_id", "item_number"]).tolist() == want
