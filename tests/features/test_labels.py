"""The disengagement label: no attendance and no good discharge within the horizon."""

from __future__ import annotations

from datetime import date

import pytest

from retention.features.labels import disengagement_labels, label_observable
from tests.support.factories import ClinicBuilder, at

AS_OF = date(2026, 3, 1)


@pytest.fixture
def labels() -> dict[str, int]:
    b = ClinicBuilder()
    for cid in ("C1", "C2", "C3", "C4", "C5"):
        b.client(cid)
    b.episode("came", "C1", "2026-01-01")
    b.appointment("came", at("2026-03-30"))  # last day inside the 30-day window
    b.episode("missed", "C2", "2026-01-01")
    b.appointment("missed", at("2026-03-05"), "no_show")
    b.appointment("missed", at("2026-03-31"))  # the day after the window: too late
    b.episode("completed", "C3", "2026-01-01", discharged_on="2026-03-10",
              discharge_reason="completed")
    b.episode("dropped", "C4", "2026-01-01", discharged_on="2026-03-10",
              discharge_reason="dropped_out")
    b.episode("already_gone", "C5", "2026-01-01", discharged_on="2026-02-20",
              discharge_reason="completed")
    return disengagement_labels(b.build(), AS_OF, 30).to_dict()


def test_attending_in_the_window_is_not_disengagement(labels: dict[str, int]) -> None:
    assert labels["came"] == 0


def test_only_misses_in_the_window_is_disengagement(labels: dict[str, int]) -> None:
    assert labels["missed"] == 1


def test_completed_discharge_is_not_but_dropout_is(labels: dict[str, int]) -> None:
    assert labels["completed"] == 0
    assert labels["dropped"] == 1


def test_episodes_closed_before_the_as_of_date_have_no_label(labels: dict[str, int]) -> None:
    assert "already_gone" not in labels


def test_a_label_is_observable_only_when_its_window_has_passed() -> None:
    assert label_observable(date(2026, 3, 1), 30, date(2026, 3, 31))
    assert not label_observable(date(2026, 3, 1), 30, date(2026, 3, 30))
