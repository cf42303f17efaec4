"""Validation against the contract: what passes is typed as the contract types it, and
duplicate keys are found whatever the order of the rows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from retention.clinic.registry import Registry, default_registry, load_registry
from retention.etl.quarantine import count, judge, limits_broken
from retention.etl.validation import (
    KEYS,
    LOOKED_UP,
    LOOKING_UP,
    ORDER,
    Context,
    _duplicated,
    _shared_text,
    reference,
    validate,
    validate_full,
)
from tests.support.broken import BROKEN_RULES, TIGHT_LIMITS, broken_network
from tests.support.factories import OWN_FORM


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


# --- instruments: open codes, and the registry's rules -------------------------------

CLIENT = pd.DataFrame([{"client_id": "C1", "clinic_id": "k"}])
EPISODE = pd.DataFrame([{"episode_id": "E1", "client_id": "C1", "program": "outpatient",
                         "admitted_on": "2026-01-05", "updated_at": "2026-01-05 09:00"}])


def measured(rows: Sequence[tuple[str, str, float | None, Sequence[float]]],
             registry: Registry | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Validate measures (id, instrument, total, item responses numbered from 1) of one
    episode; the rule each measure was held under, and its detail."""
    measures = pd.DataFrame([{
        "measure_id": mid, "episode_id": "E1", "client_id": "C1", "instrument": code,
        "rater": "client", "administered_at": "2026-02-02 10:00", "score_total": total,
        "updated_at": "2026-02-02 10:00"} for mid, code, total, _ in rows])
    items = pd.DataFrame([{"measure_id": mid, "item_number": n, "response": r}
                          for mid, _, _, responses in rows
                          for n, r in enumerate(responses, start=1)],
                         columns=["measure_id", "item_number", "response"])
    context = Context() if registry is None else Context(registry=registry)
    out = validate({"clients": CLIENT, "episodes": EPISODE, "alliance_measures": measures,
                    "alliance_items": items}, context)
    held = out.rejects[out.rejects["table_name"] == "alliance_measures"]
    return (dict(zip(held["row_key"], held["rule"], strict=True)),
            dict(zip(held["row_key"], held["detail"], strict=True)))


def test_any_well_formed_instrument_code_is_kept_registered_or_not() -> None:
    """A clinic's own form nobody registered is stored and shown, never held for being
    unknown (and its items are not checked: nothing says what they should be)."""
    rules, _ = measured([("M1", "PHQ-9", 27.0, [3.0] * 9), ("M2", "k10.v2", None, [99.0]),
                         ("M3", "ORS", 20.0, [5.0, 5.0, 5.0, 5.0]),
                         ("M4", "x" * 16, None, [])])
    assert rules == {}


@pytest.mark.parametrize("code", ["PHQ 9", "x" * 17, "ORS\x00", "ÖRS", "O'RS"])
def test_an_instrument_code_of_another_form_is_held(code: str) -> None:
    rules, details = measured([("M1", code, 20.0, [])])
    assert rules == {"M1": "malformed_code"}
    assert "not a code of 1-16 letters, digits" in details["M1"]


@pytest.mark.parametrize(("total", "responses", "rule", "said"), [
    (41.0, [10, 10, 10, 10], "total_out_of_range", "score_total 41.0 is outside 0-40 (ORS)"),
    (20.0, [5, 5, 5, 5, 0], "unknown_item", "item 5: item_number 5.0 is not an item of ORS"),
    (20.0, [5, 5, 11, -1], "item_out_of_range", "item 3: response 11.0 is outside 0-10 (ORS)"),
    (30.0, [5, 5, 5, 5], "total_disagrees_with_items",
     "score_total 30.0 but items sum to 20.0 (ORS)"),
])
def test_a_registered_instrument_is_checked_against_its_registered_ranges_and_key(
        total: float, responses: list[float], rule: str, said: str) -> None:
    rules, details = measured([("M1", "ORS", total, responses),
                               ("M2", "ORS", 22.5, [5.5, 6.0, 4.0, 7.0])])
    assert rules == {"M1": rule}
    assert details["M1"] == said


def test_the_rules_come_from_the_registry_handed_in(tmp_path: Path) -> None:
    """The context's registry decides: with a clinic's registry that has no ORS, an ORS
    is a form nobody registered, kept unchecked; its own form is checked by its key."""
    path = tmp_path / "instruments.toml"
    path.write_text(OWN_FORM)
    own = load_registry(path)
    rows = [("M1", "ORS", 99.0, [50.0]),
            # Item 2 is reversed: 5, 1, 4 score 5, 5, 4, a mean of 4.67.
            ("M2", "CLINIC-X", 4.67, [5.0, 1.0, 4.0]),
            # The mean of the answers as given (3.33) forgets to turn item 2.
            ("M3", "CLINIC-X", 3.33, [5.0, 1.0, 4.0]),
            ("M4", "CLINIC-X", 4.0, [5.0, 6.0, 4.0])]
    rules, details = measured(rows, own)
    assert rules == {"M3": "total_disagrees_with_items", "M4": "item_out_of_range"}
    assert details["M3"] == ("score_total 3.33 but items average, reversed items turned, "
                             "4.67 (CLINIC-X)")
    shipped, _ = measured(rows[:1])
    assert shipped == {"M1": "total_out_of_range"}


def test_an_instrument_without_a_registered_key_keeps_its_given_total() -> None:
    """The TAS's key is not registered: its total is never compared with a sum of the
    items (which would be wrong by its reversed items); its ranges still hold."""
    rules, details = measured([("M1", "TAS", 40.0, [4.0] * 12),
                               ("M2", "TAS", 50.0, [4.0] * 12),
                               ("M3", "TAS", 30.0, [0.0] + [3.0] * 11)])
    assert rules == {"M2": "total_out_of_range", "M3": "item_out_of_range"}
    assert details["M3"] == "item 1: response 0.0 is outside 1-4 (TAS)"


def test_the_srs_and_wai_sr_keep_their_own_rules() -> None:
    rules, _ = measured([("M1", "SRS", 41.0, [10.0] * 4), ("M2", "GSRS", 20.0, [5, 5, 5, 11]),
                         ("M3", "WAI-SR", 61.0, [5.0] * 12)])
    assert rules == {"M1": "srs_total_out_of_range", "M2": "srs_item_out_of_range",
                     "M3": "wai_total_out_of_range"}


def _of_another_client(categorical: bool) -> dict[str, pd.DataFrame]:
    """Two clients; episode E1 is C1's, E9 is in the store only; rows of each table that
    name C1's episode as C1's (kept) and as C2's (held)."""
    clients = pd.DataFrame({"client_id": ["C1", "C2"], "clinic_id": ["k", "k"]})
    episodes = pd.DataFrame([{"episode_id": "E1", "client_id": "C1", "program": "detox",
                              "admitted_on": "2026-01-05", "updated_at": "2026-01-05 09:00"}])
    when = {"updated_at": "2026-02-02 10:00"}
    raw = {
        "clients": clients, "episodes": episodes,
        "appointments": pd.DataFrame([
            {"appointment_id": f"A-{episode}-{client}", "episode_id": episode,
             "client_id": client, "scheduled_at": "2026-02-02 10:00", "status": "attended",
             "service_type": "individual", "telehealth": "false", **when}
            for episode in ("E1", "E9") for client in ("C1", "C2")]),
        "alliance_measures": pd.DataFrame([
            {"measure_id": f"M-{client}", "episode_id": "E1", "client_id": client,
             "instrument": "ORS", "rater": "client", "administered_at": "2026-02-02 10:00",
             "score_total": None, **when} for client in ("C1", "C2")]),
        "session_observations": pd.DataFrame([
            {"observation_id": f"O-{client}", "episode_id": "E1", "client_id": client,
             "clinician_id": "T1", "observed_at": "2026-02-02 10:00",
             "recorded_at": "2026-02-02 11:00", "rupture": "false", **when}
            for client in ("C1", "C2")]),
    }
    if categorical:  # as PostgreSQL's reader hands repeated ids over
        for table in ("appointments", "alliance_measures", "session_observations"):
            raw[table] = raw[table].astype({"episode_id": "category", "client_id": "category"})
    return raw


@pytest.mark.parametrize("categorical", [False, True])
def test_a_row_whose_episode_is_another_clients_is_held(categorical: bool) -> None:
    """Counted for the episode it names, such a row would be a reason on the list of a
    client whose page (read by client and episode) does not show it."""
    context = Context(episode_ids=pd.Index(["E9"], dtype=object),
                      admitted_on=pd.Series([pd.Timestamp("2026-01-01")], index=["E9"]),
                      episode_clients=pd.Series(["C2"], index=["E9"], dtype=object))
    out = validate(_of_another_client(categorical), context)
    held = {k: (r, d) for k, r, d in zip(out.rejects["row_key"], out.rejects["rule"],
                                         out.rejects["detail"], strict=True)}
    assert held == {
        "A-E1-C2": ("episode_of_another_client", "episode_id E1 is not client_id C2's episode"),
        "A-E9-C1": ("episode_of_another_client", "episode_id E9 is not client_id C1's episode"),
        "M-C2": ("episode_of_another_client", "episode_id E1 is not client_id C2's episode"),
        "O-C2": ("episode_of_another_client", "episode_id E1 is not client_id C2's episode"),
    }
    assert sorted(out.valid["appointments"]["appointment_id"]) == ["A-E1-C1", "A-E9-C2"]


def test_an_episode_read_again_is_judged_by_its_client_as_read() -> None:
    """The store says E1 was C2's; the source now says C1's: the row read decides."""
    context = Context(episode_ids=pd.Index(["E1"], dtype=object),
                      admitted_on=pd.Series([pd.Timestamp("2026-01-05")], index=["E1"]),
                      episode_clients=pd.Series(["C2"], index=["E1"], dtype=object))
    out = validate(_of_another_client(False), context)
    assert set(out.rejects["row_key"]) == {"A-E1-C2", "A-E9-C1", "A-E9-C2", "M-C2", "O-C2"}
    assert set(out.rejects.loc[out.rejects["row_key"] == "A-E9-C2", "rule"]) == {"orphan"}


def _by_key(table: str, frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(KEYS[table], kind="stable").reset_index(drop=True)


def test_a_full_reload_checked_in_phases_and_parts_holds_what_one_check_holds() -> None:
    """A network's full reload checks the tables the others look up first, then the rest
    in parts by key against them (docs/network.md): every row must pass or be held, and
    for the same rule, as when every table is checked at once; the limits judged from
    the parts' tallies must be the whole's."""
    frames, registry = broken_network(date(2026, 6, 1)), default_registry()
    whole = validate(frames, Context(registry=registry))
    assert {t: set(r) for t, r in whole.counts().items()} == BROKEN_RULES

    phased = validate_full(frames, registry)
    pd.testing.assert_frame_equal(phased.rejects, whole.rejects)
    for table in ORDER:
        pd.testing.assert_frame_equal(phased.valid[table], whole.valid[table])
        pd.testing.assert_series_equal(phased.ok[table], whole.ok[table])
    assert phased.rules.keys() == whole.rules.keys()
    for table, rules in whole.rules.items():
        pd.testing.assert_series_equal(phased.rules[table], rules)
    assert list(phased.unmapped) == list(whole.unmapped)

    # The looking-up tables in three parts by key range: a measure's items with it.
    first = validate({t: frames[t] for t in LOOKED_UP}, Context(registry=registry))
    against = reference(first, registry)
    ranges = {t: pd.qcut(frames[t][KEYS[t][0]].rank(method="dense"), 3, labels=False)
              for t in ("appointments", "alliance_measures", "session_observations")}
    of_measure = pd.Series(ranges["alliance_measures"].to_numpy(),
                           index=frames["alliance_measures"]["measure_id"])
    of_measure = of_measure[~of_measure.index.duplicated()]
    ranges["alliance_items"] = frames["alliance_items"]["measure_id"].map(of_measure)
    parts = [validate({t: frames[t][ranges[t] == n] for t in LOOKING_UP}, against)
             for n in range(3)]
    assert all(len(p.checked["appointments"]) for p in parts)
    for table in LOOKING_UP:
        pd.testing.assert_frame_equal(
            _by_key(table, pd.concat([p.valid[table] for p in parts])),
            _by_key(table, whole.valid[table]))
    held = pd.concat([p.rejects for p in parts] + [first.rejects])
    columns = ["table_name", "row_key", "rule", "detail"]
    pd.testing.assert_frame_equal(
        held[columns].sort_values(columns[:2]).reset_index(drop=True),
        whole.rejects[columns].sort_values(columns[:2]).reset_index(drop=True))

    etl = TIGHT_LIMITS
    read = {t: len(frames[t]) for t in ORDER}
    tally = count(first, {t: read[t] if t in LOOKED_UP else 0 for t in ORDER})
    for part in parts:
        tally += count(part, {t: len(part.checked[t]) for t in ORDER},
                       clients=first.checked["clients"])
    expected = limits_broken(whole, read, etl)
    assert {b.kind for b in expected} == {"code", "table", "clinic", "all"}
    assert [b.as_dict() for b in judge(tally, etl)] == [b.as_dict() for b in expected]
