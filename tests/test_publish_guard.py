"""The publish guard's counting and comparison (``retention.publish_guard``): which moves
stop a list, and what the refusal tells the operator. End to end:
tests/pipelines/test_scoring_guard.py."""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime
from typing import Any

import pytest

from retention.publish_guard import MAX_LISTED, Acceptance, Key, Move, compare, moves, tally
from retention.settings import ConfigError, Settings, load_settings, settings_from_mapping
from tests.conftest import REPO

LAST, TONIGHT = date(2026, 6, 1), date(2026, 6, 2)


def settings(**overrides: Any) -> Settings:
    return settings_from_mapping({"source_url": "sqlite://", "store_url": "sqlite://", **overrides})


def rows(clinic: str, program: str, n: int, high: int = 0) -> list[dict[str, Any]]:
    """``n`` rows to publish of one clinic and program, ``high`` of them in the high tier."""
    return [
        {"clinic_id": clinic, "program": program, "tier": "high" if i < high else "low"}
        for i in range(n)
    ]


def counted(*groups: tuple[str, str, int, int]) -> list[tuple[str, str, str, int]]:
    """A published list's counts as ``list_counts`` gives them: (clinic, program, n, high)."""
    out = []
    for clinic, program, n, high in groups:
        out += [(clinic, program, "high", high), (clinic, program, "low", n - high)]
    return out


def publication(model: str = "v1", n: int = 0) -> dict[str, Any]:
    return {"as_of": LAST, "model_version": model, "n_scored": n}


def test_tally_counts_open_and_high_per_clinic_and_per_program() -> None:
    counts = tally(
        [
            ("east", "detox", "high", 2),
            ("east", "detox", "low", 3),
            ("east", "outpatient", "medium", 4),
            ("south", "detox", "high", 1),
        ]
    )
    assert counts == {
        ("east", None, "open"): 9,
        ("east", None, "high"): 2,
        ("east", "detox", "open"): 5,
        ("east", "detox", "high"): 2,
        ("east", "outpatient", "open"): 4,
        ("south", None, "open"): 1,
        ("south", None, "high"): 1,
        ("south", "detox", "open"): 1,
        ("south", "detox", "high"): 1,
    }


@pytest.mark.parametrize(
    ("before", "after", "stops"),
    [
        (139, 84, True),  # issue 16: a program's episodes quarantined
        (9, 22, True),  # issue 16: a status code no longer mapped swells the high tier
        (16, 8, True),  # the high tier halved: at the minimum, far beyond the share
        (3, 5, False),  # a tiny program: +67 %, but only 2 episodes
        (20, 27, False),  # +35 % but 7 episodes: under the minimum
        (40, 50, False),  # 10 episodes, exactly the share: not beyond it
        (40, 51, True),
        (0, 8, True),  # a program that was not there
        (8, 0, True),  # a program gone
        (123, 128, False),  # the largest night of 90 on the 2,000-client synthetic clinic
    ],
)
def test_a_move_stops_the_list_beyond_both_the_share_and_the_minimum(
    before: int,
    after: int,
    stops: bool,
) -> None:
    key: Key = ("east", None, "open")
    found = moves(Counter({key: before}), Counter({key: after}), 0.25, 8)
    assert found == ([Move("east", None, "open", before, after)] if stops else [])


def test_compare_names_each_clinic_and_program_with_its_counts_and_how_to_accept() -> None:
    """Guards issue 16's first incident: outpatient quarantined in one clinic thins the
    clinic and empties the program; another clinic's small program moving 3 to 5 and its
    steady high tier are not named."""
    last = counted(
        ("clinic-south", "outpatient", 55, 10),
        ("clinic-south", "detox", 84, 6),
        ("clinic-east", "detox", 3, 0),
    )
    tonight = rows("clinic-south", "detox", 84, 6) + rows("clinic-east", "detox", 5)
    result = compare(settings(), TONIGHT, "v1", tonight, publication(n=142), last)
    assert result.exceeded and result.baseline == LAST
    assert [m.describe() for m in result.moves] == [
        "clinic-south: open episodes 139 -> 84 (-40%)",
        "clinic-south: high tier 16 -> 6 (-62%)",
        "clinic-south / outpatient: open episodes 55 -> 0 (-100%)",
        "clinic-south / outpatient: high tier 10 -> 0 (-100%)",
    ]
    message = result.refusal()
    assert message.splitlines()[1:5] == [f"  {m.describe()}" for m in result.moves]
    for words in (
        "list for 2026-06-02 was not published",
        "published for 2026-06-01",
        "publish_max_change_share (25%)",
        "publish_min_change (8)",
        "The list of 2026-06-01 stays served",
        'retention score --as-of 2026-06-02 --accept-change "reason"',
        "raise publish_max_change_share or publish_min_change in the config file",
    ):
        assert words in message
    assert "clinic-east" not in message and "model changed" not in message
    detail = result.detail()
    assert detail["refused"] is True and detail["baseline"] == "2026-06-01"
    assert (detail["scored"], detail["baseline_scored"]) == (89, 142)
    assert [Move.from_dict(m) for m in detail["moves"]] == result.moves
    assert "accepted" not in detail


def test_the_limits_come_from_the_settings() -> None:
    last = counted(("east", "detox", 40, 0))
    tonight = rows("east", "detox", 29)  # 11 fewer: -27.5 %
    assert compare(settings(), TONIGHT, "v1", tonight, publication(), last).exceeded
    looser = settings(publish_max_change_share=0.3)
    assert not compare(looser, TONIGHT, "v1", tonight, publication(), last).exceeded
    fewer = settings(publish_min_change=12)
    assert not compare(fewer, TONIGHT, "v1", tonight, publication(), last).exceeded
    refusal = compare(
        settings(publish_max_change_share=0.1, publish_min_change=3),
        TONIGHT,
        "v1",
        rows("east", "detox", 36),
        publication(),
        last,
    ).refusal()
    assert "publish_max_change_share (10%)" in refusal and "publish_min_change (3)" in refusal


def test_the_first_list_has_nothing_to_compare_with() -> None:
    result = compare(settings(), TONIGHT, "v1", rows("east", "detox", 300, 300), None)
    assert not result.exceeded and result.baseline is None
    assert result.detail()["baseline"] is None and result.detail()["refused"] is False


def test_an_acceptance_is_kept_with_who_and_when() -> None:
    result = compare(
        settings(),
        TONIGHT,
        "v1",
        rows("east", "detox", 9),
        publication(),
        counted(("east", "detox", 30, 0)),
    )
    detail = result.detail(
        Acceptance("EHR upgrade re-coded statuses; checked", "ops"), at=datetime(2026, 6, 2, 8, 15)
    )
    assert detail["refused"] is False
    assert detail["accepted"] == {
        "reason": "EHR upgrade re-coded statuses; checked",
        "by": "ops",
        "at": "2026-06-02T08:15:00",
    }
    assert detail["moves"] == [
        {"clinic_id": "east", "program": None, "measure": "open", "before": 30, "after": 9},
        {"clinic_id": "east", "program": "detox", "measure": "open", "before": 30, "after": 9},
    ]


def test_a_refusal_says_when_the_model_changed_and_lists_a_bounded_number_of_moves() -> None:
    clinics = [f"clinic-{i:02d}" for i in range(MAX_LISTED)]
    last = counted(*[(c, "detox", 20, 0) for c in clinics])
    tonight = [r for c in clinics for r in rows(c, "detox", 40, 10)]
    result = compare(settings(), TONIGHT, "v2", tonight, publication("v1"), last)
    assert len(result.moves) == 4 * MAX_LISTED
    message = result.refusal()
    assert f"and {3 * MAX_LISTED} more (all in the run's detail)" in message
    assert "The model changed since (v1 -> v2)" in message
    assert "clinic-00: high tier 0 -> 10 (from none)" in message
    assert len(message) < 2000  # what a run's error keeps


def test_the_guard_settings_are_read_from_the_file_and_checked() -> None:
    shipped = load_settings(REPO / "config" / "retention.toml", environ={})
    assert (shipped.publish_max_change_share, shipped.publish_min_change) == (0.25, 8)
    for bad in ({"publish_max_change_share": 0}, {"publish_min_change": 0}):
        with pytest.raises(ConfigError, match="publish_"):
            settings(**bad)
