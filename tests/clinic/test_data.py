"""Clinic frames: measures come in the order their readers need, and the check that lets
a reader skip its sort never passes rows a sort would move."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from retention.clinic.data import MEASURE_ORDER, from_frames, in_order
from retention.clinic.synth import SynthConfig, generate
from retention.features.alliance import measures_before

ORDER = list(MEASURE_ORDER)


def frame(episodes: list[object], stamps: list[object], ids: list[object]) -> pd.DataFrame:
    return pd.DataFrame({"episode_id": pd.Series(episodes, dtype="str"),
                         "administered_at": pd.to_datetime(pd.Series(stamps)),
                         "measure_id": pd.Series(ids, dtype="str")})


@pytest.mark.parametrize(("rows", "expected"), [
    ((["E1", "E1", "E2"], ["2026-01-01", "2026-01-02", "2025-01-01"], ["M1", "M2", "M0"]),
     True),
    # Out of order on each key in turn, the others tied.
    ((["E2", "E1"], ["2026-01-01", "2026-01-01"], ["M1", "M1"]), False),
    ((["E1", "E1"], ["2026-01-02", "2026-01-01"], ["M1", "M2"]), False),
    ((["E1", "E1"], ["2026-01-01", "2026-01-01"], ["M2", "M1"]), False),
    # A later key out of order where an earlier one already decides: in order.
    ((["E1", "E2"], ["2026-01-02", "2026-01-01"], ["M9", "M1"]), True),
    # Ties on every key: a stable sort leaves them, so they are in order.
    ((["E1", "E1"], ["2026-01-01", "2026-01-01"], ["M1", "M1"]), True),
    # Missing values: sorted last by a sort, so never taken as in order.
    ((["E1", None], ["2026-01-01", "2026-01-01"], ["M1", "M2"]), False),
    ((["E1", "E1"], ["2026-01-01", None], ["M1", "M2"]), False),
    ((["E1", "E1"], ["2026-01-01", "2026-01-01"], ["M1", None]), False),
])
def test_in_order_says_whether_a_sort_would_move_anything(rows: tuple[list[object], ...],
                                                          expected: bool) -> None:
    given = frame(*rows)
    assert in_order(given, MEASURE_ORDER) is expected
    if expected:
        pd.testing.assert_frame_equal(given.sort_values(ORDER), given)


def test_in_order_never_passes_what_a_sort_would_move() -> None:
    """Random frames, with ties and missing values, against the sort itself; categorical
    and mixed columns it cannot compare are left to the sort."""
    rng = np.random.default_rng(7)
    for _ in range(300):
        n = int(rng.integers(2, 12))
        given = frame(
            list(rng.choice(np.array(["E1", "E2", "E3", None], dtype=object), n,
                            p=[0.33, 0.33, 0.32, 0.02])),
            list(rng.choice(np.array(["2026-01-01", "2026-01-02", None], dtype=object), n,
                            p=[0.49, 0.49, 0.02])),
            list(rng.choice(["M1", "M2", "M3"], n)))
        if rng.random() < 0.5:
            given = given.sort_values(ORDER)
        moved = not given.sort_values(ORDER).index.equals(given.index)
        assert not (in_order(given, MEASURE_ORDER) and moved)
    ordered = frame(["E1", "E2"], ["2026-01-01", "2026-01-01"], ["M1", "M2"])
    # A categorical sorts by its categories' order, not by its values'.
    backwards = pd.CategoricalDtype(["E2", "E1"])
    assert not in_order(ordered.astype({"episode_id": backwards}), MEASURE_ORDER)
    assert list(ordered.astype({"episode_id": backwards}).sort_values(ORDER).index) == [1, 0]
    tied = frame(["E1", "E1"], ["2026-01-01", "2026-01-01"], ["M1", "M2"])
    assert in_order(tied, MEASURE_ORDER)
    assert not in_order(tied.astype({"measure_id": object}).assign(measure_id=["M1", 2]),
                        MEASURE_ORDER)


def test_measures_come_in_order_and_are_read_the_same_in_any_order() -> None:
    data = from_frames(generate(SynthConfig(end=date(2026, 6, 1), n_clients=120, seed=3)))
    measures = data.measures
    assert in_order(measures, MEASURE_ORDER)
    pd.testing.assert_frame_equal(measures.sort_values(ORDER), measures)
    as_of = date(2026, 4, 1)
    episodes = pd.Index(data.episodes["episode_id"])
    shuffled = measures.sample(frac=1.0, random_state=11)
    assert not in_order(shuffled, MEASURE_ORDER)
    pd.testing.assert_frame_equal(measures_before(shuffled, episodes, as_of),
                                  measures_before(measures, episodes, as_of))
