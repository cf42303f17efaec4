"""Ruptures and their repair (``retention.casework.repair``): what counts as a rupture, the
steps recorded up to the next rating, whether it recovered, and nothing known only later."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime

import pandas as pd
import pytest

from retention.casework.repair import SRS_DROP, RuptureCourse, repair_course
from retention.reasons.catalogue import load_catalogue
from retention.settings import SHIPPED_INSTRUMENTS_FILE

# The words of the shipped reason catalogue, as the page passes the clinic's own.
WORDS = load_catalogue(SHIPPED_INSTRUMENTS_FILE.parent / "reasons.toml").observed
SIGN_WORDS = {code: sign.words for code, sign in WORDS.signs.items()}
REPAIR_WORDS = dict(WORDS.repair_steps)

AS_OF = date(2026, 6, 1)
EPISODE = "E1"


def at(day: str, hour: int = 10, minute: int = 0) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, minute=minute)


def ratings(*rows: tuple[str, float], instrument: str = "SRS",
            rater: str = "client") -> pd.DataFrame:
    """Measures of the episode: (ISO day, total), given at 10:50, the end of a session."""
    return pd.DataFrame([{
        "measure_id": f"{instrument}-{n}", "episode_id": EPISODE, "client_id": "C1",
        "appointment_id": None, "instrument": instrument, "rater": rater,
        "administered_at": at(day, 10, 50), "score_total": float(total), "goal": None,
        "task": None, "bond": None, "updated_at": at(day, 10, 50)}
        for n, (day, total) in enumerate(rows, start=1)])


def note(day: str, *, rupture: bool = False, signs: str | None = None,
         steps: str | None = None, hour: int = 10, recorded_at: datetime | None = None,
         ident: str | None = None) -> dict[str, object]:
    return {"observation_id": ident or f"O-{day}-{hour}", "episode_id": EPISODE,
            "client_id": "C1", "appointment_id": None, "observed_at": at(day, hour),
            "recorded_at": recorded_at, "clinician_id": "th-1", "signs": signs,
            "rupture": rupture, "repair_steps": steps, "updated_at": at(day, 18)}


def notes(*rows: dict[str, object]) -> pd.DataFrame:
    columns = ["observation_id", "episode_id", "client_id", "appointment_id", "observed_at",
               "recorded_at", "clinician_id", "signs", "rupture", "repair_steps", "updated_at"]
    return pd.DataFrame(list(rows), columns=columns)


def by_day(courses: list[RuptureCourse]) -> dict[date, RuptureCourse]:
    return {c.on: c for c in courses}


def test_a_rupture_is_a_fall_under_36_or_by_five_points_and_nothing_less() -> None:
    srs = ratings(("2026-04-06", 38), ("2026-04-13", 36), ("2026-04-20", 35.5),  # 36 -> 35.5
                  ("2026-04-27", 40), ("2026-05-04", 35),  # 40 -> 35: both rules
                  ("2026-05-11", 39), ("2026-05-18", 34),  # 39 -> 34: both
                  ("2026-05-25", 29.1))  # 34 -> 29.1: 4.9 points, already under: none
    found = by_day(repair_course(srs, notes(), AS_OF))
    assert sorted(found) == [date(2026, 4, 20), date(2026, 5, 4), date(2026, 5, 18)]
    assert found[date(2026, 4, 20)].how == ("fell_below",)
    assert found[date(2026, 5, 4)].how == ("fell_below", "fell_by")
    # a fall of exactly SRS_DROP under the line counts; 36 -> 36 (no fall) does not
    below = ratings(("2026-04-06", 33), ("2026-04-13", 33 - SRS_DROP), ("2026-04-20", 36),
                    ("2026-04-27", 36))
    only = repair_course(below, notes(), AS_OF)
    assert [(c.on, c.how) for c in only] == [(date(2026, 4, 13), ("fell_by",))]
    assert repair_course(below, notes(), AS_OF, drop=6.0) == []  # the rule is a parameter
    # a fall is compared as recorded, to a tenth: 35.3 - 30.3 is 4.9999999999999964 in floats
    tenth = repair_course(ratings(("2026-04-06", 35.3), ("2026-04-13", 30.3)), notes(), AS_OF)
    assert [c.how for c in tenth] == [("fell_by",)]
    assert tenth[0].shown_by(SIGN_WORDS) == ("The session rating (SRS) fell from 35.3 to 30.3 "
                                   "(5 points, under 36)")


def test_most_recent_first_with_the_next_rating_and_whether_it_recovered() -> None:
    srs = ratings(("2026-04-06", 38), ("2026-04-13", 33),  # rupture, then 36: recovered
                  ("2026-04-20", 36), ("2026-04-27", 30),  # rupture, then 30: not
                  ("2026-05-04", 30), ("2026-05-11", 24),  # 30 -> 24, then 30: back to 30
                  ("2026-05-18", 30), ("2026-05-25", 24))  # rupture, no rating since
    courses = repair_course(srs, notes(), AS_OF)
    assert [c.on for c in courses] == [date(2026, 5, 25), date(2026, 5, 11),
                                       date(2026, 4, 27), date(2026, 4, 13)]
    last, back, stuck, first = courses
    assert (first.rating_before, first.rating_that_day) == (38.0, 33.0)
    assert (first.next_rating, first.next_on, first.recovered) == (36.0, date(2026, 4, 20), True)
    assert (stuck.next_rating, stuck.recovered) == (30.0, False)
    assert (back.rating_before, back.next_rating, back.recovered) == (30.0, 30.0, True)
    assert (last.next_rating, last.next_on, last.recovered) == (None, None, None)
    assert first.next_words() == ("Next session rating 36 on 20 Apr 2026: at or above 36 "
                                  "(recovered).")
    assert back.next_words() == ("Next session rating 30 on 18 May 2026: back to 30, where it "
                                 "was before, though under 36 (recovered).")
    assert stuck.next_words() == ("Next session rating 30 on 04 May 2026: under 36 and below "
                                  "the 36 before (not recovered).")
    assert last.next_words() == "No session rating since."
    higher = replace(back, next_rating=31.5)
    assert higher.next_words() == ("Next session rating 31.5 on 18 May 2026: above the 30 "
                                   "before, though under 36 (recovered).")
    assert first.shown_by(SIGN_WORDS) == ("The session rating (SRS) fell from 38 to 33 "
                                "(5 points, under 36)")


def test_a_noted_rupture_with_its_signs_and_the_steps_up_to_the_next_rating() -> None:
    srs = ratings(("2026-05-04", 37), ("2026-05-11", 37), ("2026-05-18", 38))
    observed = notes(
        note("2026-05-06", rupture=True, signs="withdrawal frustration bogus"),
        note("2026-05-08", steps="acknowledged"),
        # the next rating's own session: the SRS is given at its end, so this counts
        note("2026-05-11", steps="revisited_goals_tasks clarified"),
        note("2026-05-11", steps="took_responsibility", hour=12),  # after the rating
        note("2026-05-05", steps="monitored"))  # before the rupture
    [course] = repair_course(srs, observed, AS_OF)
    assert course.on == date(2026, 5, 6) and course.how == ("noted",)
    assert course.signs == ("frustration", "withdrawal")  # the contract's order; unknown dropped
    assert course.repair_steps == ("acknowledged", "clarified", "revisited_goals_tasks")
    assert course.step_words(REPAIR_WORDS) == ["acknowledged", "clarified",
                                               "revisited goals and tasks"]
    # the clinic's own words (its reason catalogue) when given
    assert course.step_words({"clarified": "cleared up a misunderstanding"})[1] == (
        "cleared up a misunderstanding")
    assert "(signs: frustration, pulling back)" in course.shown_by({"withdrawal": "pulling back"})
    assert (course.rating_before, course.rating_that_day) == (37.0, None)
    assert (course.next_rating, course.recovered) == (37.0, True)
    assert course.shown_by(SIGN_WORDS) == ("Noted by the therapist in the session note "
                                 "(signs: frustration, withdrawal)")


def test_a_noted_rupture_and_a_drop_on_one_day_are_one_rupture() -> None:
    srs = ratings(("2026-05-04", 38), ("2026-05-11", 31), ("2026-05-18", 33))
    observed = notes(note("2026-05-11", rupture=True, signs="anger", steps="acknowledged"),
                     note("2026-05-11", rupture=True, hour=15, ident="later-note"))
    [course] = repair_course(srs, observed, AS_OF)
    assert course.how == ("noted", "fell_below", "fell_by")
    assert course.observation_ids == ("O-2026-05-11-10", "later-note")
    assert course.measure_ids == ("SRS-2",)
    assert course.shown_by(SIGN_WORDS) == (
        "Noted by the therapist in the session note (signs: anger); "
        "the session rating (SRS) fell from 38 to 31 (7 points, under 36)")
    assert (course.next_rating, course.recovered) == (33.0, False)
    assert course.step_words(REPAIR_WORDS) == ["acknowledged"]


def test_no_steps_when_none_were_recorded() -> None:
    srs = ratings(("2026-05-04", 38), ("2026-05-11", 30))
    [course] = repair_course(srs, notes(note("2026-05-11", steps=None)), AS_OF)
    assert course.repair_steps == () and course.step_words(REPAIR_WORDS) == []


def test_only_what_was_known_at_the_as_of_date() -> None:
    srs = ratings(("2026-05-18", 38), ("2026-05-25", 37),
                  ("2026-06-01", 20))  # given on the as-of day: not known yet
    observed = notes(
        # noted before, but written on the as-of day: not known
        note("2026-05-28", rupture=True, recorded_at=at("2026-06-01", 8)),
        note("2026-06-01", rupture=True, hour=8),  # observed on the as-of day
        note("2026-05-20", rupture=True, recorded_at=at("2026-05-31", 23, 59),
             steps="acknowledged"),  # written late, but before the as-of day
        note("2026-05-22", steps="clarified", recorded_at=at("2026-06-02", 9)))
    [course] = repair_course(srs, observed, AS_OF)
    assert course.on == date(2026, 5, 20)
    assert course.repair_steps == ("acknowledged",)  # the later note was written after
    assert (course.next_rating, course.recovered) == (37.0, True)
    # the day after, all of it is known
    later = repair_course(srs, observed, date(2026, 6, 3))
    assert [c.on for c in later] == [date(2026, 6, 1), date(2026, 5, 28), date(2026, 5, 20)]
    assert later[-1].repair_steps == ("acknowledged", "clarified")


def test_group_ratings_and_therapist_ratings_are_not_session_ratings() -> None:
    srs = pd.concat([ratings(("2026-05-04", 38), ("2026-05-11", 20), instrument="GSRS"),
                     ratings(("2026-05-04", 38), ("2026-05-11", 20), rater="therapist")])
    assert repair_course(srs, notes(), AS_OF) == []


def test_one_episode_at_a_time() -> None:
    srs = ratings(("2026-05-04", 38))
    other = notes(note("2026-05-06", rupture=True)).assign(episode_id="E2")
    with pytest.raises(ValueError, match="one episode"):
        repair_course(srs, other, AS_OF)
