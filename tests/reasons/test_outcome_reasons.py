"""The "not on track" reasons (``retention.reasons.outcome``): true to the client's ORS rows,
pointing the way they are listed, exact at the lines as the sentence shows them, and a
prompt when no ORS was ever taken.

The expected course is recomputed here from the published form, intake + (a + b x intake)
x ln(rating), with exact decimals: nothing asks ``retention`` for the expected numbers.
"""

from __future__ import annotations

import math
import re
from datetime import date
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from retention.clinic.data import ClinicData
from retention.clinic.trajectory import Trajectory
from retention.features.outcome import FEATURE_NAMES
from retention.reasons.catalogue import load_catalogue
from retention.reasons.history import histories
from retention.reasons.outcome import ORS_WORDS, ordinal, outcome_phraser
from retention.reasons.phrases import CONCERN, MAX_SENTENCE, REASSURING, Missing, Phrase
from tests.support.factories import ClinicBuilder, at
from tests.support.recompute import REASONS_TOML

AS_OF = date(2026, 3, 20)
A, B, SPREAD, BAND = 8.0, -0.25, 3.0, 1.5  # band: 4.5 below the expected course
T = Trajectory(rate_at_zero=A, rate_per_intake=B, spread=SPREAD, band=BAND, source="test")
PHRASE = outcome_phraser(T)
THRESHOLDS = load_catalogue(REASONS_TOML).thresholds
CUTOFF = Fraction(25)


def course(intake: float, n: int) -> tuple[Fraction, Fraction]:
    """The expected score and the on-track line at rating n, as one decimal shows them."""
    e = min(max(intake + (A + B * intake) * math.log(min(n, 20)), 0.0), 40.0)
    return Fraction(f"{e:.1f}"), Fraction(f"{e - BAND * SPREAD:.1f}")


def text(x: Fraction) -> str:
    return f"{float(x):.1f}".removesuffix(".0")


def clinic(ratings: dict[str, list[float]]) -> tuple[ClinicData, dict[str, list[str]]]:
    """Episodes with client ORS, oldest first, weekly (daily for long runs) up to the latest
    on 19 Mar 2026; the measure ids by episode."""
    b = ClinicBuilder()
    ids: dict[str, list[str]] = {}
    for episode, totals in ratings.items():
        b.client(f"C{episode}")
        b.episode(episode, f"C{episode}", "2025-10-01")
        step = 7 if len(totals) <= 6 else 1
        start = pd.Timestamp("2026-03-19") - pd.Timedelta(days=step * (len(totals) - 1))
        ids[episode] = [
            b.srs(episode, at((start + pd.Timedelta(days=step * i)).date().isoformat(), 11),
                  [total / 4] * 4, instrument="ORS")
            for i, total in enumerate(totals)]
    return b.build(), ids


def say(ratings: dict[str, list[float]], episode: str, wanted: str,
        lead: str = "ors_not_on_track") -> Phrase | Missing | None:
    data, _ = clinic(ratings)
    return PHRASE(histories(data, [episode], AS_OF)[episode], lead, wanted, THRESHOLDS)


def sentence(ratings: dict[str, list[float]], wanted: str,
             lead: str = "ors_not_on_track") -> Phrase:
    p = say(ratings, "E", wanted, lead)
    assert isinstance(p, Phrase), p
    assert p.direction == wanted
    assert len(p.text) <= MAX_SENTENCE, p.text
    return p


# --- the wording, by hand ---------------------------------------------------------------------


def test_not_on_track_names_the_line_the_course_and_the_intake() -> None:
    # Intake 15: at the 5th rating 21.8 expected, the line 17.3 (15 + 4.25 ln 5 - 4.5).
    assert course(15, 5) == (Fraction("21.8"), Fraction("17.3"))
    data, ids = clinic({"E": [15, 16, 16, 17, 16]})
    p = PHRASE(histories(data, ["E"], AS_OF)["E"], "ors_latest", CONCERN, THRESHOLDS)
    assert isinstance(p, Phrase)
    assert p.text == ("Outcome rating (ORS) 16 on 19 Mar (5th rating), below the on-track line "
                      "of 17.3; 21.8 expected from an intake of 15")
    assert (p.variant, p.direction, p.measure_ids) == ("ORS_NOT_ON_TRACK", CONCERN,
                                                      [ids["E"][0], ids["E"][-1]])
    assert say({"E": [15, 16, 16, 17, 16]}, "E", REASSURING) is None


def test_the_on_track_line_as_shown_is_exact() -> None:
    # 17.3 is the line as shown (17.34 in full): at it the sentence could not say "below".
    assert say({"E": [15, 16, 16, 17, 17.3]}, "E", CONCERN) is None
    assert say({"E": [15, 16, 16, 17, 17.3]}, "E", REASSURING) is None  # under 21.8 and 25
    assert "of 17.3;" in sentence({"E": [15, 16, 16, 17, 17.2]}, CONCERN).text


def test_on_course_is_reassuring_from_the_expected_score_as_shown() -> None:
    assert course(15, 6)[0] == Fraction("22.6")  # 15 + 4.25 ln 6 = 22.615
    p = sentence({"E": [15, 17, 19, 20, 21, 23]}, REASSURING)
    assert p.text == ("Outcome rating (ORS) 23 on 19 Mar (6th rating), at or above the 22.6 "
                      "expected from an intake of 15")
    assert p.variant == "ORS_ON_COURSE"
    assert sentence({"E": [15, 17, 19, 20, 21, 22.6]}, REASSURING).variant == "ORS_ON_COURSE"
    assert say({"E": [15, 17, 19, 20, 21, 22.5]}, "E", REASSURING) is None
    assert say({"E": [15, 17, 19, 20, 21, 23]}, "E", CONCERN) is None


def test_above_the_cutoff_is_reassuring_only_above_it() -> None:
    # Intake 24: 26.2 expected at the 3rd rating; 26 is under it but above the cutoff of 25.
    p = sentence({"E": [24, 25, 26]}, REASSURING)
    assert p.text == ("Outcome rating (ORS) 26 on 19 Mar (3rd rating), above the clinical "
                      "cutoff of 25, from an intake of 24")
    assert p.variant == "ORS_ABOVE_CUTOFF"
    assert say({"E": [24, 25, 25]}, "E", REASSURING) is None
    assert say({"E": [24, 25, 26]}, "E", CONCERN) is None


def test_a_reliable_fall_is_a_concern_even_on_track_and_never_reassuring() -> None:
    # Intake 38: 37 expected at the 2nd rating, the line 32.5; 33 is on track, above 25,
    # but 5 points below the intake.
    p = sentence({"E": [38, 33]}, CONCERN, lead="ors_latest")
    assert p.text == ("Outcome rating (ORS) 33 on 19 Mar, 5 points below the intake of 38 "
                      "(5 or more is a reliable fall)")
    assert p.variant == "ORS_DETERIORATED"
    assert say({"E": [38, 33]}, "E", REASSURING) is None
    assert say({"E": [38, 33.1]}, "E", CONCERN) is None
    # 19.9 to 14.9 is a fall of 5 as shown (4.999999999999998 in floats).
    assert sentence({"E": [19.9, 14.9]}, CONCERN, "ors_change").variant == "ORS_DETERIORATED"


def test_the_lead_feature_picks_which_of_two_concerns_is_said() -> None:
    both: dict[str, list[float]] = {"E": [23, 18]}  # 5 below the intake, and under the line of 20.1
    assert sentence(both, CONCERN, "ors_reliable_deterioration").variant == "ORS_DETERIORATED"
    assert sentence(both, CONCERN, "ors_change").variant == "ORS_DETERIORATED"
    for lead in ("ors_latest", "ors_expected_gap", "ors_not_on_track", "ors_intake"):
        assert sentence(both, CONCERN, lead).variant == "ORS_NOT_ON_TRACK", lead
    # A fall of 4.9 is not reliable: the deterioration lead gets the course instead.
    assert sentence({"E": [30, 25.1]}, CONCERN,
                    "ors_reliable_deterioration").variant == "ORS_NOT_ON_TRACK"


def test_the_intake_alone_says_nothing_and_no_ors_is_a_prompt() -> None:
    for wanted in (CONCERN, REASSURING):
        assert say({"E": [10]}, "E", wanted) is None
        assert say({"E": [35]}, "E", wanted) is None
    b = ClinicBuilder()
    b.client("C")
    b.episode("E", "C", "2025-10-01")
    b.srs("E", at("2026-03-02"), [9, 9, 9, 9])
    b.srs("E", at("2026-03-09"), [2, 2, 2, 2], instrument="ORS")
    b.rows["alliance_measures"][-1]["rater"] = "therapist"  # not the client's own rating
    b.srs("E", at("2026-03-20", 0), [2, 2, 2, 2], instrument="ORS")  # on the as-of date
    h = histories(b.build(), ["E"], AS_OF)["E"]
    for wanted in (CONCERN, REASSURING):
        p = PHRASE(h, "ors_latest", wanted, THRESHOLDS)
        assert isinstance(p, Missing)
        assert p.text == ("No outcome rating (ORS) recorded yet: consider asking for one at the "
                          "next session")


def test_a_long_course_fits_the_width() -> None:
    p = sentence({"E": [15.5] + [14.5] * 10 + [10.5]}, CONCERN)
    assert "(12th rating)" in p.text and p.text.endswith("from an intake of 15.5")
    # Past the 20th rating the course stays at the 20th: 15.5 + 4.125 ln 20 - 4.5 = 23.36.
    assert course(15.5, 112)[1] == Fraction("23.4")
    long = sentence({"E": [15.5] + [14.5] * 110 + [10.5]}, CONCERN)
    assert long.text == ("Outcome rating (ORS) 10.5 on 19 Mar (112th rating), below the "
                         "on-track line of 23.4 for an intake of 15.5")
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111, 112)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "101st",
        "111th", "112th"]


# --- every client, every lead, both ways ------------------------------------------------------

NUMBER = re.compile(r"\d+(?:\.\d)?")


def test_sentences_are_true_and_point_the_way_listed_for_many_clients() -> None:
    """Guards, on 300 random courses: a concern exactly when the latest is under the line or
    5 or more below the intake, as shown; reassuring exactly when neither holds and it is at
    or above the course or above 25; never both; every number in the sentence is the
    client's intake, latest, rating count, the course, the line or the fall, recomputed here;
    the rows cited are the intake and the latest."""
    rng = np.random.default_rng(20260320)
    ratings = {f"E{i}": [int(v) / 10 for v in rng.integers(0, 401, int(rng.integers(1, 9)))]
               for i in range(300)}
    data, ids = clinic(ratings)
    hs = histories(data, list(ratings), AS_OF)
    said = {CONCERN: 0, REASSURING: 0}
    for episode, totals in ratings.items():
        n = len(totals)
        intake, latest = Fraction(str(totals[0])), Fraction(str(totals[-1]))
        expected, line = course(totals[0], n)
        fell = intake - latest >= 5
        below = latest < line
        concern = n >= 2 and (below or fell)
        reassuring = n >= 2 and not concern and (latest >= expected or latest > CUTOFF)
        for wanted, holds in ((CONCERN, concern), (REASSURING, reassuring)):
            for lead in FEATURE_NAMES:
                p = PHRASE(hs[episode], lead, wanted, THRESHOLDS)
                if not holds:
                    assert p is None, (episode, totals, wanted, lead, p)
                    continue
                assert isinstance(p, Phrase) and p.direction == wanted, (episode, p)
                assert p.measure_ids == [ids[episode][0], ids[episode][-1]]
                assert len(p.text) <= MAX_SENTENCE, p.text
                assert p.text.startswith(f"Outcome rating (ORS) {text(latest)} on 19 Mar")
                assert p.text.lower().count(ORS_WORDS.lower()) == 1
                # The numbers once the date, the ordinal and the variant's fixed line are out.
                bare = p.text.replace(" on 19 Mar", "").replace(ordinal(n), str(n))
                for fixed in ("(5 or more is a reliable fall)", "clinical cutoff of 25"):
                    bare = bare.replace(fixed, "")
                allowed = {text(intake), text(latest), text(expected), text(line),
                           text(intake - latest), str(n)}
                assert set(NUMBER.findall(bare)) <= allowed, p.text
                assert f"intake of {text(intake)}" in p.text
                if p.variant == "ORS_NOT_ON_TRACK":
                    assert below and f"line of {text(line)}" in p.text
                elif p.variant == "ORS_DETERIORATED":
                    assert fell and f", {text(intake - latest)} points below" in p.text
                elif p.variant == "ORS_ON_COURSE":
                    assert latest >= expected and f"above the {text(expected)} " in p.text
                else:
                    assert p.variant == "ORS_ABOVE_CUTOFF" and CUTOFF < latest < expected
                said[wanted] += 1
    assert min(said.values()) > 50, said  # the random courses reach both ways


@pytest.mark.parametrize("wanted", [CONCERN, REASSURING])
def test_an_unknown_direction_or_lead_still_follows_the_facts(wanted: str) -> None:
    assert say({"E": [15, 16, 16, 17, 16]}, "E", "context") is None
    p = say({"E": [15, 16, 16, 17, 16]}, "E", wanted, lead="not_an_ors_feature")
    assert (p is not None) == (wanted == CONCERN)
