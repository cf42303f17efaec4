"""Features from the therapist's session notes (``retention.features.observations``) on
hand-built episodes whose counts can be read off: what was known at the as-of date, the
windows' edges, missing versus zero, and repairs on later notes. A plain per-episode
recount checks the vectorised one on many random episodes."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from retention.clinic import contract
from retention.clinic.data import ClinicData, empty_frame
from retention.features import spec
from retention.features.observations import (
    FAMILY,
    FEATURE_NAMES,
    FEATURES,
    observation_features,
)
from retention.features.treatment import open_episodes
from tests.support.factories import ClinicBuilder, at

AS_OF = date(2026, 5, 26)  # midnight starting 26 May: what is before it is known
MIDNIGHT = datetime(2026, 5, 26)


def note(b: ClinicBuilder, episode_id: str, observed_at: datetime, signs: str | None = None,
         rupture: bool = False, repair: str | None = None, recorded_at: datetime | None = None,
         appointment_id: str | None = None) -> str:
    """A therapist's note about a session (``session_observations``)."""
    client = next(e["client_id"] for e in b.rows["episodes"] if e["episode_id"] == episode_id)
    observation_id = f"O{len(b.rows['session_observations']) + 1:03d}"
    b.rows["session_observations"].append({
        "observation_id": observation_id, "episode_id": episode_id, "client_id": client,
        "appointment_id": appointment_id, "observed_at": observed_at,
        "recorded_at": recorded_at, "clinician_id": "th-1", "signs": signs,
        "rupture": rupture, "repair_steps": repair,
        "updated_at": recorded_at or observed_at,
    })
    return observation_id


def builder(*episodes: str) -> ClinicBuilder:
    b = ClinicBuilder()
    for n, episode_id in enumerate(episodes, start=1):
        b.client(f"C{n}")
        b.episode(episode_id, f"C{n}", "2026-01-05")
    return b


def features(data: ClinicData, as_of: date = AS_OF) -> pd.DataFrame:
    return observation_features(open_episodes(data.episodes, as_of), data.observations, as_of)


# The counts the tests below check by eye; the share has tests of its own.
COUNTS = ("signs_sessions_28d", "sign_groups_28d", "ruptures_90d", "ruptures_unrepaired_90d")


def values(frame: pd.DataFrame, episode_id: str) -> list[float]:
    return [float(v) for v in frame.loc[episode_id, list(COUNTS)].to_numpy(dtype=float)]


def test_spec_of_the_features() -> None:
    """Guards: five numeric features of the family, rising risk with the share of sessions
    with a sign and with unrepaired ruptures; free for the counts of signs (more sessions,
    more notes) and for ruptures (a repaired rupture goes with better outcomes)."""
    assert FEATURE_NAMES == ("signs_sessions_28d", "sign_share_90d", "sign_groups_28d",
                             "ruptures_90d", "ruptures_unrepaired_90d")
    assert {f.family for f in FEATURES} == {FAMILY} == {"observed_strain"}
    assert {f.name: f.monotone for f in FEATURES} == {
        "signs_sessions_28d": 0, "sign_share_90d": 1, "sign_groups_28d": 0,
        "ruptures_90d": 0, "ruptures_unrepaired_90d": 1}
    assert all(f.kind == "numeric" and f.description for f in FEATURES)
    # The model's list holds them as they are here, in this order.
    assert tuple(f for f in spec.FEATURES if f.family == FAMILY) == FEATURES


def test_counts_on_a_hand_built_episode() -> None:
    b = builder("E1")
    note(b, "E1", at("2026-05-12"), "withdrawal frustration", rupture=True)
    # Two notes about one session: one session, two signs of one sign (resistance).
    note(b, "E1", at("2026-05-05"), "rejects_suggestions", appointment_id="A1")
    note(b, "E1", at("2026-05-05", 11), "tasks_not_done anger", appointment_id="A1")
    note(b, "E1", at("2026-05-19"))  # a session without a sign
    note(b, "E1", at("2026-04-01"), "lack_of_trust", rupture=True)  # 8 weeks back
    frame = features(b.build())
    assert list(frame.columns) == list(FEATURE_NAMES)
    assert list(frame.index) == ["E1"]
    # Sessions with a sign: 12 May and the session of 5 May; signs: negative reaction and
    # resistance (lack of trust on 1 Apr is before the 4 weeks). Ruptures: 12 May, 1 Apr.
    assert values(frame, "E1") == [2, 2, 2, 2]
    # Of the four sessions noted in 3 months (1 Apr, 5 May, 12 May, 19 May), three had one.
    assert frame.loc["E1", "sign_share_90d"] == 0.75


def test_the_share_counts_noted_sessions_of_the_last_three_months() -> None:
    """A client seen less has fewer notes: the share reads strain, not attendance."""
    b = builder("E1", "E2", "E3")
    note(b, "E1", at("2026-05-12"), "withdrawal")  # one noted session, with a sign
    for day in ("2026-04-07", "2026-04-14", "2026-04-21", "2026-05-12"):
        note(b, "E2", at(day), "anger" if day == "2026-05-12" else None)
    note(b, "E3", at("2026-01-20"), "anger")  # noted, but over 3 months back
    frame = features(b.build())
    assert frame.loc["E1", "sign_share_90d"] == 1.0
    assert frame.loc["E2", "sign_share_90d"] == 0.25
    assert np.isnan(frame.loc["E3", "sign_share_90d"])
    # The counts of the 4 weeks cannot tell the two apart.
    assert values(frame, "E1")[:2] == values(frame, "E2")[:2] == [1, 1]


def test_a_note_written_on_or_after_the_as_of_date_is_not_seen() -> None:
    """Guards leakage: a note about an earlier session counts only once it was written."""
    b = builder("E1", "E2", "E3", "E4")
    note(b, "E1", at("2026-05-20"), "anger", rupture=True,
         recorded_at=MIDNIGHT)  # written at the as-of midnight
    note(b, "E2", at("2026-05-20"), "anger", rupture=True,
         recorded_at=MIDNIGHT - timedelta(seconds=1))  # just before it
    note(b, "E3", at("2026-05-20"), "anger", rupture=True)  # no recorded_at: from the session
    note(b, "E4", at("2026-05-26", 9), "anger", rupture=True)  # a session on the as-of day
    frame = features(b.build())
    assert np.isnan(values(frame, "E1")).all()
    assert values(frame, "E2") == values(frame, "E3") == [1, 1, 1, 1]
    assert np.isnan(values(frame, "E4")).all()
    # A day later both notes are known.
    later = features(b.build(), date(2026, 5, 27))
    assert values(later, "E1") == values(later, "E4") == [1, 1, 1, 1]


def test_a_repair_written_after_the_as_of_date_does_not_repair() -> None:
    b = builder("E1")
    note(b, "E1", at("2026-05-12"), "withdrawal", rupture=True)
    note(b, "E1", at("2026-05-19"), repair="acknowledged", recorded_at=at("2026-05-26", 8))
    assert values(features(b.build()), "E1") == [1, 1, 1, 1]
    assert values(features(b.build(), date(2026, 5, 27)), "E1") == [1, 1, 1, 0]


def test_window_edges() -> None:
    """A session exactly 28 (90) days before the as-of midnight is in the window; a second
    earlier is not."""
    b = builder("E1", "E2", "E3", "E4")
    assert MIDNIGHT - timedelta(days=28) == datetime(2026, 4, 28)
    assert MIDNIGHT - timedelta(days=90) == datetime(2026, 2, 25)
    note(b, "E1", datetime(2026, 4, 28), "withdrawal")
    note(b, "E2", datetime(2026, 4, 28) - timedelta(seconds=1), "withdrawal")
    note(b, "E3", datetime(2026, 2, 25), rupture=True)
    note(b, "E4", datetime(2026, 2, 25) - timedelta(seconds=1), rupture=True)
    frame = features(b.build())
    assert values(frame, "E1") == [1, 1, 0, 0]
    assert values(frame, "E2") == [0, 0, 0, 0]
    assert values(frame, "E3") == [0, 0, 1, 1]
    assert values(frame, "E4") == [0, 0, 0, 0]


def test_missing_without_any_note_and_zero_with_old_or_clear_notes() -> None:
    """Guards: no note at all is NaN (the clinic may not record them); notes with nothing
    in the windows are zero."""
    b = builder("E1", "E2", "E3")
    note(b, "E2", at("2026-01-20"), "anger", rupture=True)  # long before the windows
    note(b, "E3", at("2026-05-20"))  # a recent note with no sign
    frame = features(b.build())
    assert np.isnan(values(frame, "E1")).all()
    assert values(frame, "E2") == [0, 0, 0, 0]
    assert values(frame, "E3") == [0, 0, 0, 0]


def test_repairs_on_the_same_or_a_later_note_count_an_earlier_one_does_not() -> None:
    b = builder("E1", "E2", "E3", "E4")
    note(b, "E1", at("2026-05-12"), "anger", rupture=True, repair="acknowledged clarified")
    note(b, "E2", at("2026-05-12"), rupture=True)
    note(b, "E2", at("2026-05-19"), repair="revisited_goals_tasks")
    note(b, "E3", at("2026-05-05"), repair="took_responsibility")
    note(b, "E3", at("2026-05-12"), rupture=True)
    # A later repair repairs every earlier rupture; one after it is again unrepaired.
    note(b, "E4", at("2026-04-01"), rupture=True)
    note(b, "E4", at("2026-04-08"), repair="monitored")
    note(b, "E4", at("2026-05-12"), rupture=True)
    frame = features(b.build())
    assert values(frame, "E1")[2:] == [1, 0]
    assert values(frame, "E2")[2:] == [1, 0]
    assert values(frame, "E3")[2:] == [1, 1]
    assert values(frame, "E4")[2:] == [2, 1]


def test_unknown_codes_are_not_signs_nor_repairs() -> None:
    b = builder("E1")
    note(b, "E1", at("2026-05-12"), "boredom  withdrawal_x", rupture=True)
    note(b, "E1", at("2026-05-19"), "sleepy", repair="apologised")
    assert values(features(b.build()), "E1") == [0, 0, 1, 1]


def test_an_empty_notes_table_gives_missing_values() -> None:
    """A clinic that does not send the optional table: every value missing, none zero."""
    data = builder("E1").build()
    for observations in (data.observations, empty_frame("session_observations")):
        frame = features(replace(data, observations=observations))
        assert frame.shape == (1, len(FEATURE_NAMES)) and frame.isna().all().all()


# --- the vectorised counts against a plain recount ------------------------------------------


def recount(notes: list[dict[str, Any]], as_of: date) -> list[float]:
    """The four features of one episode's notes, one note at a time."""
    cutoff = datetime.combine(as_of, datetime.min.time())
    known = [n for n in notes if n["observed_at"] < cutoff
             and (n["recorded_at"] is None or n["recorded_at"] < cutoff)]
    if not known:
        return [np.nan] * 4

    def within(n: dict[str, Any], days: int) -> bool:
        return bool(cutoff - n["observed_at"] <= timedelta(days=days))

    def session(n: dict[str, Any]) -> str:
        return "a:" + n["appointment_id"] if n["appointment_id"] else "o:" + n["observation_id"]

    def codes(text: str | None, allowed: Any) -> set[str]:
        return set((text or "").split()) & set(allowed)

    signed = [n for n in known if within(n, 28) and codes(n["signs"], contract.SIGNS)]
    groups = {contract.SIGNS[c] for n in signed for c in codes(n["signs"], contract.SIGNS)}
    ruptures = [n for n in known if within(n, 90) and n["rupture"]]
    unrepaired = [r for r in ruptures if not any(
        codes(n["repair_steps"], contract.REPAIR_STEPS) and n["observed_at"] >= r["observed_at"]
        for n in known)]
    return [float(len({session(n) for n in signed})), float(len(groups)),
            float(len({session(n) for n in ruptures})),
            float(len({session(n) for n in unrepaired}))]


def test_vectorised_counts_match_a_plain_recount() -> None:
    """Guards the vectorised code on many random episodes: windows, sessions, known notes
    and repairs the same as counted one by one."""
    rng = random.Random(20260526)
    episodes = [f"E{i:02d}" for i in range(60)]
    b = builder(*episodes)
    sign_codes = [*contract.SIGNS, "boredom"]
    step_codes = [*contract.REPAIR_STEPS, "apologised"]
    for episode_id in episodes:
        for _ in range(rng.randrange(0, 7)):
            observed = MIDNIGHT - timedelta(hours=rng.randrange(-48, 24 * 120))
            recorded = (None if rng.random() < 0.5
                        else observed + timedelta(hours=rng.randrange(0, 24 * 5)))
            signs = " ".join(rng.sample(sign_codes, rng.randrange(0, 3))) or None
            repair = " ".join(rng.sample(step_codes, rng.randrange(0, 3))) \
                if rng.random() < 0.3 else None
            note(b, episode_id, observed, signs, rupture=rng.random() < 0.3, repair=repair,
                 recorded_at=recorded,
                 appointment_id=f"A{rng.randrange(0, 4)}-{episode_id}" if rng.random() < 0.6
                 else None)
    frame = features(b.build())
    by_episode: dict[str, list[dict[str, Any]]] = {e: [] for e in episodes}
    for n in b.rows["session_observations"]:
        by_episode[n["episode_id"]].append(n)
    checked = {"missing": 0, "zero": 0, "some": 0}
    for episode_id in episodes:
        expected = recount(by_episode[episode_id], AS_OF)
        got = values(frame, episode_id)
        np.testing.assert_array_equal(got, expected, err_msg=episode_id)
        kind = "missing" if np.isnan(expected[0]) else "some" if sum(expected) else "zero"
        checked[kind] += 1
    assert min(checked.values()) > 0, checked  # every case was met
