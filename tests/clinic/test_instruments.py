"""Instrument scoring against the published keys."""

from __future__ import annotations

import pytest

from retention.clinic.instruments import score_ors, score_srs, score_wai_sr


def test_srs_total_is_the_sum_of_four_items() -> None:
    assert score_srs({1: 9.5, 2: 8.0, 3: 7.2, 4: 9.0}).score_total == pytest.approx(33.7)


@pytest.mark.parametrize("items", [{1: 9, 2: 9, 3: 9}, {1: 9, 2: 9, 3: 9, 4: 11}])
def test_srs_refuses_missing_or_out_of_range_items(items: dict[int, float]) -> None:
    with pytest.raises(ValueError):
        score_srs(items)


def test_wai_sr_subscales_follow_the_published_key() -> None:
    # Goal items 4, 6, 8, 11 = 5; task items 1, 2, 10, 12 = 3; bond items 3, 5, 7, 9 = 1.
    items = {i: 5.0 for i in (4, 6, 8, 11)} | {i: 3.0 for i in (1, 2, 10, 12)} | {
        i: 1.0 for i in (3, 5, 7, 9)}
    scored = score_wai_sr(items)
    assert (scored.goal, scored.task, scored.bond) == (5.0, 3.0, 1.0)
    assert scored.score_total == 36.0


def test_wai_sr_items_are_1_to_5() -> None:
    with pytest.raises(ValueError, match="outside 1-5"):
        score_wai_sr({i: 0.0 if i == 1 else 3.0 for i in range(1, 13)})


def test_ors_total_is_the_sum_of_four_lines() -> None:
    # Miller et al. (2003): individually, interpersonally, socially, overall, 0-10 each.
    assert score_ors({1: 2.5, 2: 7.0, 3: 4.1, 4: 3.4}).score_total == pytest.approx(17.0)


@pytest.mark.parametrize("items", [{1: 5, 2: 5, 3: 5}, {1: 5, 2: 5, 3: 5, 4: 10.5},
                                   {1: 5, 2: 5, 3: 5, 4: -1}])
def test_ors_refuses_missing_or_out_of_range_items(items: dict[int, float]) -> None:
    with pytest.raises(ValueError, match="ORS"):
        score_ors(items)
