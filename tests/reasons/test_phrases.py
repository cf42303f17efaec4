"""Reasons in words (``retention.reasons.phrases``): true to the client's rows, pointing the way
they are listed, blind to demographics and readable by a case manager.

The rule: every reason states a fact in the direction it is listed. A reason under "Why"
states a concern and one under "Going well" a reassuring fact, by the clinic's lines in
``config/reasons.toml`` ``[thresholds.*]``; stage of treatment and how care is delivered
are context only; a measure never taken is a prompt, never a reason; a family whose facts
do not point the way the model moved the risk is left out.

The first part checks the list published by the session's scored synthetic clinic
(``tests/conftest.py``; the fixtures are in ``tests/reasons/conftest.py``). Every sentence
and prompt is recomputed from the source clinic rows with plain pandas, and so is the way
its fact points, by the lines read straight from ``config/reasons.toml``
(``tests/support/recompute.py``): nothing asks ``retention`` for the expected numbers, nor
on which side of a line a fact falls. The second part checks the wording, and the
recomputations themselves, on small hand-built clinics where the sentence can be read off,
including the contradictions a reviewer reported.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from retention.clinic.data import ClinicData
from retention.clinic.registry import load_registry
from retention.features import FEATURE_NAMES, build_features, spec
from retention.reasons.catalogue import Thresholds, load_catalogue
from retention.reasons.explain import ALL_PHRASERS as PHRASERS
from retention.reasons.history import History, histories
from retention.reasons.phrases import MAX_SENTENCE, Missing, Phrase
from tests.support.factories import ClinicBuilder, at
from tests.support.reasons import (
    AS_OF,
    HEADING,
    Published,
    made_up_registry,
    new_families_clinic,
    rich_clinic,
    weekly_ors,
)
from tests.support.recompute import (
    CONCERN,
    CONTEXT,
    CONTEXT_FAMILIES,
    DEMOGRAPHIC_WORDS,
    INSTRUMENT_PLURALS,
    INSTRUMENT_WORDS,
    JARGON,
    LONG_DECIMAL,
    MISSING,
    OWN_SUGGESTIONS,
    REASONS_TOML,
    REASSURING,
    RECOMPUTE,
    SHIPPED_REGISTRY,
    SNAKE,
    WANTED,
    facts_of,
    phrased_mismatches,
    published_codes,
    published_mismatches,
    read_registry,
)


def test_every_published_variant_has_a_recomputation(published: Published) -> None:
    """Guards: a new wording variant, reason or prompt, cannot reach the list without a truth
    and direction check here."""
    codes = published_codes(published)
    assert {r["direction"] for _, _, r in published.entries()} >= {CONCERN, REASSURING}, \
        "the synthetic clinic publishes concerns and reassuring facts"
    assert sorted(codes - set(RECOMPUTE)) == []


@pytest.mark.slow
def test_sentences_are_true_to_the_source_rows_and_point_the_way_listed(
    scored: Any, published: Published, source: ClinicData,
) -> None:
    """Guards: every count, score, date and day number in every reason, reassuring fact,
    context and prompt, and the rows cited as evidence, match the client's own source rows;
    each fact is on the side of the clinic's line its heading says (a concern under "Why",
    a reassuring fact under "Going well"); and no family left out had a fact pointing the
    way the model moved the risk."""
    assert Path(scored.settings.reasons_file).resolve() == REASONS_TOML
    problems = published_mismatches(published, source, scored.as_of,
                                    instruments=scored.settings.instruments_file)
    assert problems == [], "\n".join(problems[:20])


def test_published_directions_match_their_headings(published: Published) -> None:
    """Guards the shape of the rule on the whole list: what is under "Why" says it is a
    concern, under "Going well" reassuring, and stage and setting are only context."""
    for row, kind, r in published.entries():
        assert r["direction"] == HEADING[kind], (row["episode_id"], kind, r["code"])
        assert (r["family"] in CONTEXT_FAMILIES) == (kind == "context"), (row["episode_id"], r)
    for row, p in published.prompts():
        assert p["family"] not in CONTEXT_FAMILIES, (row["episode_id"], p)


# --- 2. no demographics ---------------------------------------------------------------------


def test_no_reason_mentions_demographics(published: Published, source: ClinicData) -> None:
    """Guards: no title, sentence, suggestion or prompt names a demographic group or
    attribute."""
    values = {
        str(v).lower() for col in ("sex", "race_ethnicity")
        for v in source.clients[col].dropna().unique()
    } - {"other", "unknown"}
    words = DEMOGRAPHIC_WORDS | values | {v.replace("_", " ") for v in values}
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(words))) + r")\b", re.I)
    for _, _, r in published.entries():
        for key in ("title", "text", "suggestion"):
            assert not pattern.search(r[key]), (r["code"], key, r[key])
    for _, p in published.prompts():
        assert not pattern.search(p["text"]), (p["code"], p["text"])


# --- 3. readable ----------------------------------------------------------------------------


def unreadable(text: str, feature_names: list[str]) -> list[str]:
    """Why a sentence would confuse a case manager (empty if it would not); its length is
    checked apart, by ``too_long``."""
    problems = [] if text else ["empty"]
    # Single-word names ('program') are plain English; compound names are code.
    problems += [f"feature name {n}" for n in feature_names if "_" in n and n in text]
    problems += [f"code word {m}" for m in SNAKE.findall(text)]
    problems += [f"missing value {m}" for m in MISSING.findall(text)]
    problems += [f"jargon {m}" for m in JARGON.findall(text)]
    problems += [f"long decimal {m}" for m in LONG_DECIMAL.findall(text)]
    # Every instrument is named in words wherever its abbreviation is used.
    for abbr, words in INSTRUMENT_WORDS.items():
        used = len(re.findall(rf"(?<![\w-]){re.escape(abbr)}(?![\w-])", text))
        named = text.lower().count(words.lower())
        if abbr in INSTRUMENT_PLURALS:
            named += text.lower().count(INSTRUMENT_PLURALS[abbr].lower())
        if used != named:
            problems.append(f"{abbr} not named as {words!r}")
    problems += [f"word glued to a bracket {m!r}" for m in re.findall(r"\)\w+", text)]
    return problems


def too_long(text: str) -> bool:
    return len(text) > MAX_SENTENCE


def test_sentences_are_readable(scored: Any, published: Published) -> None:
    """Guards: plain sentences and prompts with no code names, missing-value markers, model
    jargon or raw floats, naming each instrument in words; a concern carries its family's
    title and suggested next step (or, for the therapist's notes, the repair prompts of
    the signs noted, checked against the notes by the recomputation), a reassuring fact
    the family's reassuring title and no suggestion, context its heading and suggestion
    (all from the catalogue)."""
    names = list(scored.model.feature_names)
    problems = []
    for row, _, r in published.entries():
        for why in unreadable(r["text"], names):
            problems.append(f"{row['episode_id']} {r['code']}: {why}: {r['text']!r}")
        entry = scored.catalogue.families[r["family"]]
        if r["direction"] == REASSURING:
            assert (r["title"], r["suggestion"]) == (entry.reassuring_title, ""), r["code"]
        elif r["family"] in OWN_SUGGESTIONS:
            assert r["title"] == entry.title and r["suggestion"], r["code"]
        else:
            assert (r["title"], r["suggestion"]) == (entry.title, entry.suggestion), r["code"]
            assert r["suggestion"], r["code"]
    for row, p in published.prompts():
        problems += [f"{row['episode_id']} {p['code']}: {why}: {p['text']!r}"
                     for why in unreadable(p["text"], names)]
    assert problems == [], "\n".join(problems[:20])


def test_published_sentences_fit_in_120_characters(published: Published) -> None:
    """Guards: every published sentence and prompt fits the list's width."""
    texts = [r["text"] for _, _, r in published.entries()]
    texts += [p["text"] for _, p in published.prompts()]
    assert [t for t in texts if too_long(t)] == []


# --- wording on hand-built clinics ----------------------------------------------------------

THRESHOLDS = load_catalogue(REASONS_TOML).thresholds  # the phrasers' input: the same lines


def history(data: ClinicData, episode_id: str, as_of: date = AS_OF) -> History:
    features = build_features(data, as_of)
    return histories(data, list(features.index), as_of)[episode_id]


def phrase(b: ClinicBuilder, episode_id: str, family: str, lead: str,
           wanted: str = CONCERN) -> Phrase | Missing | None:
    return PHRASERS[family](history(b.build(), episode_id), lead, wanted, THRESHOLDS)


def sentence(b: ClinicBuilder, episode_id: str, family: str, lead: str,
             wanted: str = CONCERN) -> Phrase:
    """A phraser's answer that must be a sentence."""
    p = phrase(b, episode_id, family, lead, wanted)
    assert isinstance(p, Phrase), p
    return p


@dataclasses.dataclass(frozen=True)
class Lines:
    """What the phrasers read (``thresholds``) and the recomputations (``registry``, the
    ``[instruments.*]`` tables) from one instrument registry."""

    thresholds: Thresholds
    registry: Mapping[str, Any]


SHIPPED = Lines(THRESHOLDS, SHIPPED_REGISTRY)


@pytest.fixture(scope="module")
def made_up(tmp_path_factory: pytest.TempPathFactory) -> Lines:
    """The shipped registry with ``MADE_UP_REGISTRY``: an ORS course and two alliance forms of
    the clinic's own, each with a cutoff."""
    path = made_up_registry(tmp_path_factory.mktemp("registry") / "instruments.toml")
    return Lines(load_catalogue(REASONS_TOML, load_registry(path)).thresholds,
                 read_registry(path))


def every_lead(data: ClinicData, episode_id: str, seen: set[str] | None = None,
               lines: Lines = SHIPPED, h: History | None = None) -> list[str]:
    """Mismatches with the recomputation for one episode, every feature as lead both ways
    (``h``: the episode's history, when already read)."""
    h = h or history(data, episode_id)
    facts = facts_of(data, episode_id, AS_OF, lines.registry)
    problems = []
    for f in spec.FEATURES:
        for wanted in WANTED:
            code, found = phrased_mismatches(
                PHRASERS[f.family](h, f.name, wanted, lines.thresholds), f.family, facts,
                f.name, wanted)
            if code is not None and seen is not None:
                seen.add(code)
            problems += [f"{episode_id} {f.name} {wanted}: {m}" for m in found]
    return problems


@pytest.mark.slow
def test_recomputations_agree_with_the_phrasers_on_every_variant(made_up: Lines) -> None:
    """Guards the truth checks themselves: on hand-built clients, for every feature as lead in
    both directions, the recomputation matches the sentence, its evidence and the way it
    points; a family left out has no fact pointing the wanted way; and every recomputation
    is exercised (none is dead code that would pass unchecked). The clients of the ORS,
    the therapist's notes and the other alliance forms are worded with a registry that has
    an ORS course and forms with a cutoff, and the ORS clients also with the shipped one
    (no course: only the fall and the clinical cutoff are spoken of)."""
    seen: set[str] = set()
    problems = []
    rich, new = rich_clinic().build(), new_families_clinic().build()
    for data, lines, episodes in ((rich, SHIPPED, None), (new, made_up, None),
                                  (new, SHIPPED, ("R",))):
        hs = histories(data, list(build_features(data, AS_OF).index), AS_OF)
        for eid in hs:
            if episodes is None or eid.startswith(episodes):
                problems += every_lead(data, eid, seen, lines, hs[eid])
    assert problems == [], "\n".join(problems[:20])
    assert sorted(set(RECOMPUTE) - seen) == []


def test_a_clinic_with_no_appointments_measures_or_items_is_worded() -> None:
    """Guards the empty edge: with no appointment, measure or item row in the whole clinic,
    every lead is left out, prompted for or worded truly, citing no rows."""
    b = ClinicBuilder()
    b.client("C1")
    b.episode("E1", "C1", "2026-03-02")
    assert every_lead(b.build(), "E1") == []


def test_ratings_without_any_item_responses_are_worded() -> None:
    """Guards: a clinic that sends SRS totals but no item responses at all (the table is
    optional) leaves the item families out rather than failing or saying 'nan'; the totals
    are still worded."""
    b = ClinicBuilder()
    b.client("C1")
    b.episode("E1", "C1", "2026-03-02")
    b.appointment("E1", at("2026-03-10"))
    b.srs("E1", at("2026-03-10", 11), [9, 9, 9, 9])
    b.srs("E1", at("2026-03-17", 11), [8, 8, 8, 8])
    b.rows["alliance_items"] = []
    assert every_lead(b.build(), "E1") == []
    for wanted in WANTED:
        assert phrase(b, "E1", "weak_bond", "srs_relationship_latest", wanted) is None
    change = sentence(b, "E1", "alliance_rupture", "srs_change")
    assert change.text == "Session rating (SRS) fell from 36 to 32 on 17 Mar"


def test_missed_sessions_name_each_kind_with_dates() -> None:
    """Guards the example sentence: 2 no-shows on 3 and 10 Mar, a late cancellation and a
    client cancellation, all cited."""
    p = sentence(rich_clinic(), "E1", "inconsistent_engagement", "missed_28d")
    assert (p.variant, p.direction) == ("MISSED_SESSIONS", CONCERN)
    assert p.text == (
        "Missed 3 of 5 sessions in the last 4 weeks: "
        "2 no-shows on 3 Mar and 10 Mar, 1 late cancellation on 13 Mar; cancelled 1"
    )
    assert len(p.appointment_ids) == 4


def test_many_misses_list_three_dates_then_a_count() -> None:
    """Guards: past three dates the sentence says 'and N more'; too long, counts only."""
    b = ClinicBuilder()
    b.client("C1")
    b.episode("E1", "C1", "2026-01-05")
    for day in range(2, 18, 3):  # 2, 5, 8, 11, 14, 17 Mar
        b.appointment("E1", at(f"2026-03-{day:02d}"), "no_show")
    p = sentence(b, "E1", "inconsistent_engagement", "missed_28d")
    assert p.text == (
        "Missed 6 of 6 sessions in the last 4 weeks: 6 no-shows on 2 Mar, 5 Mar, 8 Mar and 3 more"
    )
    for day in range(3, 19, 3):
        b.appointment("E1", at(f"2026-03-{day:02d}"), "late_cancel")
    p = sentence(b, "E1", "inconsistent_engagement", "missed_28d")
    assert p.text == (
        "Missed 12 of 12 sessions in the last 4 weeks: 6 no-shows, 6 late cancellations"
    )


def test_attendance_sentences_each_way() -> None:
    """Guards the attendance sentences: all kept and nearly all kept are reassuring, client
    cancellations a concern, and no sessions at all nothing to judge."""
    b = rich_clinic()
    full = sentence(b, "E3", "inconsistent_engagement", "attended_28d", REASSURING)
    assert (full.text, full.direction) == (
        "Attended all 3 sessions scheduled in the last 4 weeks", REASSURING)
    most = sentence(b, "E6", "inconsistent_engagement", "attended_28d", REASSURING)
    assert (most.variant, most.text) == (
        "ATTENDANCE", "Attended 10 of 11 sessions scheduled in the last 4 weeks")
    cancelled = sentence(b, "E4", "inconsistent_engagement", "client_cancelled_28d")
    assert cancelled.text == "Cancelled 2 of 3 sessions in the last 4 weeks, on 10 Mar and 17 Mar"
    for wanted in WANTED:
        assert phrase(b, "E2", "inconsistent_engagement", "miss_rate_90d", wanted) is None


def test_disengagement_sentences() -> None:
    """Guards runs of misses, nothing booked and a far booking, counted from admission when
    nothing was attended (admission dates are midnights, so the day count is exact)."""
    b = ClinicBuilder()
    b.client("C1")
    b.episode("E1", "C1", "2026-03-02")
    b.appointment("E1", at("2026-03-03"), "no_show")
    b.appointment("E1", at("2026-03-10"), "late_cancel")
    streak = sentence(b, "E1", "disengagement", "consecutive_misses")
    assert streak.text == (
        "Missed the last 2 sessions in a row; no session attended since admission 18 days ago, "
        "on 2 Mar"
    )
    nothing = sentence(b, "E1", "disengagement", "booked_next_14d")
    assert nothing.text == (
        "Nothing booked ahead; no session attended since admission 18 days ago, on 2 Mar"
    )
    b.appointment("E1", at("2026-04-08"), "scheduled", booked_at=at("2026-03-18"))
    far = sentence(b, "E1", "disengagement", "days_to_next_booked")
    assert (far.variant, far.text) == (
        "NEXT_BOOKING_FAR", "No session booked in the next 14 days; next booked on 8 Apr"
    )


def test_last_attended_counts_calendar_days() -> None:
    """Guards: 'N days ago, on D' agrees with the calendar from D to the as-of date."""
    b = ClinicBuilder()
    b.client("C1")
    b.episode("E1", "C1", "2026-03-02")
    b.appointment("E1", at("2026-03-17"))
    b.appointment("E1", at("2026-03-24"), "scheduled", booked_at=at("2026-03-17"))
    p = sentence(b, "E1", "disengagement", "days_since_attended", REASSURING)
    assert p.text == "Last attended 3 days ago, on 17 Mar; next session booked for 24 Mar"


def test_alliance_rupture_sentences() -> None:
    """Guards the fall, the repeated low ratings, the latest low group rating, a rise that is
    going well, and the prompt when no rating was taken."""
    b = rich_clinic()
    drop = sentence(b, "E1", "alliance_rupture", "srs_change")
    assert drop.text == "Session rating (SRS) fell from 36.5 to 28.5 on 24 Feb"
    below = sentence(b, "E6", "alliance_rupture", "srs_below_cutoff_last3")
    assert below.variant == "SRS_BELOW_CUTOFF_REPEATED"
    group = sentence(b, "E1", "alliance_rupture", "gsrs_latest")
    assert group.text == "Latest group session rating (GSRS) was 32 on 13 Mar, below 36"
    rose = sentence(b, "E6", "alliance_rupture", "gsrs_change", REASSURING)
    assert (rose.text, rose.direction) == (
        "Group session rating (GSRS) rose from 36 to 38 on 11 Mar, at or above 36", REASSURING)
    none = phrase(b, "E2", "alliance_rupture", "srs_latest")
    assert isinstance(none, Missing)
    assert none.text == (
        "No session rating (SRS) recorded yet: consider asking for one at the next session")


@pytest.mark.slow
def test_bond_goal_and_gap_sentences() -> None:
    """Guards SRS item, WAI-SR subscale and rater-gap sentences, each with its line."""
    b = rich_clinic()
    item = sentence(b, "E1", "goal_task_disagreement", "srs_approach_latest")
    assert item.text == (
        "Rated the approach 6.5 of 10 on the session rating (SRS) of 24 Feb, below 9")
    bond = sentence(b, "E1", "weak_bond", "wai_client_bond")
    assert (bond.variant, bond.direction, bond.text) == (
        "WAI_CLIENT_BOND", CONCERN,
        "Client-rated bond, working alliance questionnaire (WAI-SR): 2.5 of 5 on 17 Feb, below 3")
    task = sentence(b, "E10", "goal_task_disagreement", "wai_therapist_task", REASSURING)
    assert (task.variant, task.direction, task.text) == (
        "WAI_THERAPIST_TASK", REASSURING,
        "Therapist-rated agreement on tasks, working alliance questionnaire (WAI-SR): 4.0 of 5 "
        "on 9 Mar, at or above 4")
    # The therapist's bond of 3.5 is between the lines: the client's own 4.0 is named.
    bond_good = sentence(b, "E10", "weak_bond", "wai_therapist_bond", REASSURING)
    assert (bond_good.variant, bond_good.text) == (
        "WAI_CLIENT_BOND",
        "Client-rated bond, working alliance questionnaire (WAI-SR): 4.0 of 5 on 9 Mar, at or "
        "above 4")
    gap = sentence(b, "E6", "rater_gap", "wai_rater_gap")
    assert (gap.variant, gap.direction, gap.text) == (
        "WAI_CLIENT_BELOW", CONCERN,
        "Client rates the alliance 2.1 of 5 on the working alliance questionnaire (WAI-SR), the "
        "therapist 3.2 (9 Mar)")
    alike = sentence(b, "E10", "rater_gap", "wai_rater_gap", REASSURING)
    assert (alike.variant, alike.direction, alike.text) == (
        "WAI_ALIKE", REASSURING,
        "Client rates the alliance 4.1 of 5 on the working alliance questionnaire (WAI-SR), the "
        "therapist 3.8 (9 Mar)")
    # E7's client is 0.7 above the therapist (4.5 against 3.8): not alike, and no concern.
    for wanted in WANTED:
        assert phrase(b, "E7", "rater_gap", "wai_rater_gap", wanted) is None, wanted
    # E3's latest SRS has no item scores: its bond is the WAI-SR's, not a 'nan' item.
    for wanted in WANTED:
        p = phrase(b, "E3", "weak_bond", "srs_relationship_latest", wanted)
        assert p is None or p.variant == "WAI_CLIENT_BOND", p


def test_rater_gap_never_says_nan() -> None:
    """Guards: a WAI-SR without subscale scores is not worded as 'nan': the total still gives
    the mean item score (the 12-item sum over 12)."""
    b = rich_clinic()
    for row in b.rows["alliance_measures"]:
        if row["episode_id"] == "E6" and row["rater"] == "client":
            row.update(goal=None, task=None, bond=None)
    p = sentence(b, "E6", "rater_gap", "wai_rater_gap")
    assert unreadable(p.text, list(FEATURE_NAMES)) == [], p.text
    assert p.text == ("Client rates the alliance 2.1 of 5 on the working alliance questionnaire "
                      "(WAI-SR), the therapist 3.2 (9 Mar)")


def test_stage_and_setting_sentences() -> None:
    """Guards stage of treatment, planned end, telehealth, group and program sentences."""
    b = rich_clinic()
    stage = sentence(b, "E2", "early_treatment", "days_in_treatment")
    assert (stage.variant, stage.text) == (
        "ALLIANCE_STAGE", "Engagement stage of the alliance: 0 sessions attended in the last "
        "3 months, admitted 5 days ago on 15 Mar")
    planned = sentence(b, "E1", "early_treatment", "days_to_planned_end")
    assert planned.text == "Planned discharge in 46 days, on 5 May"
    today = sentence(b, "E8", "early_treatment", "days_to_planned_end", REASSURING)
    assert (today.variant, today.direction, today.text) == (
        "PLANNED_END", CONTEXT, "Planned discharge today, on 20 Mar")
    past = sentence(b, "E3", "early_treatment", "days_to_planned_end", REASSURING)
    assert past.text == "Past the planned discharge date of 1 Mar by 19 days"
    tele = sentence(b, "E1", "setting", "telehealth_share_90d")
    assert tele.text == "1 of 2 sessions attended in the last 3 months were by telehealth"
    group = sentence(b, "E1", "setting", "group_share_90d")
    assert group.text == "1 of 6 sessions in the last 3 months were group sessions"
    program = sentence(b, "E1", "setting", "program")
    assert program.text == "In the intensive outpatient program"


def test_one_day_is_singular() -> None:
    """Guards: a count of one day reads '1 day'."""
    p = sentence(rich_clinic(), "E4", "early_treatment", "days_to_planned_end")
    assert p.text == "Planned discharge in 1 day, on 21 Mar"


def test_a_run_of_one_miss_reads_singular() -> None:
    """Guards "Missed the last 1 sessions in a row" when a clinic counts one miss as a run."""
    lines = dataclasses.replace(THRESHOLDS, contact=dataclasses.replace(
        THRESHOLDS.contact, concern_consecutive_misses_at_least=1))
    b = clinic_with({"03-10": "attended", "03-17": "no_show"}, booked="03-24")
    said = PHRASERS["disengagement"](history(b.build(), "E1"), "consecutive_misses", CONCERN,
                                     lines)
    assert isinstance(said, Phrase) and said.text == "Missed the last session"


# --- the contradictions a reviewer reported, on one-client clinics --------------------------


def one_client(admitted_on: str = "2026-01-05", **episode: Any) -> ClinicBuilder:
    """A clinic with one client, C1, in one episode, E1."""
    b = ClinicBuilder()
    b.client("C1")
    b.episode("E1", "C1", admitted_on, **episode)
    return b


def leads(family: str) -> list[str]:
    return [f.name for f in spec.FEATURES if f.family == family]


def never(b: ClinicBuilder, family: str, wanted: str, episode_id: str = "E1") -> list[str]:
    """For every lead of ``family``: the sentences its phraser gives in the ``wanted``
    direction for ``episode_id`` (each also checked against the rows and lines)."""
    data = b.build()
    h, facts = history(data, episode_id), facts_of(data, episode_id, AS_OF)
    said = []
    for lead in leads(family):
        result = PHRASERS[family](h, lead, wanted, THRESHOLDS)
        _, problems = phrased_mismatches(result, family, facts, lead, wanted)
        assert problems == [], problems
        if isinstance(result, Phrase):
            said.append(result.text)
    return said


def test_a_therapist_bond_of_5_is_never_a_concern() -> None:
    """Guards the reported "Weak bond or trust: therapist-rated bond 5.0 of 5": with only the
    therapist's 5.0 the family is left out as a concern and reassuring the other way; with
    a client's own weak bond too, the concern named is the client's, not the 5.0."""
    b = one_client()
    b.wai("E1", at("2026-03-09", 12), "therapist", [5] * 12)
    assert never(b, "weak_bond", CONCERN) == []
    good = sentence(b, "E1", "weak_bond", "wai_therapist_bond", REASSURING)
    assert (good.variant, good.direction) == ("WAI_THERAPIST_BOND", REASSURING)
    assert "5.0 of 5" in good.text and "at or above 4" in good.text
    b.wai("E1", at("2026-03-09", 11), "client", [2] * 12)
    for lead in leads("weak_bond"):
        p = sentence(b, "E1", "weak_bond", lead)
        assert (p.variant, p.direction) == ("WAI_CLIENT_BOND", CONCERN), lead
        assert "Client-rated bond" in p.text and "2.0 of 5" in p.text
    # Nor does the therapist's 5.0 reassure while the client's own bond is weak.
    assert never(b, "weak_bond", REASSURING) == []


@pytest.mark.slow
def test_a_client_concern_is_never_outweighed_by_another_good_rating() -> None:
    """Guards: bond, goals and tasks are never going well while a client rating of them (an
    SRS item or the client's WAI-SR subscale, the lead or not) is a concern, however well
    the therapist or another item rates them; without the client's concern the good
    ratings are named, the client's first."""
    b = one_client()
    b.wai("E1", at("2026-03-09", 11), "client", [5] * 12)
    b.wai("E1", at("2026-03-09", 12), "therapist", [5] * 12)
    for family in ("weak_bond", "goal_task_disagreement"):
        assert never(b, family, REASSURING), family
    good = sentence(b, "E1", "weak_bond", "srs_relationship_latest", REASSURING)
    assert (good.variant, good.direction) == ("WAI_CLIENT_BOND", REASSURING)
    # The client's latest SRS rates the relationship 8 and the approach 6.5 of 10.
    b.srs("E1", at("2026-03-17", 11), [8, 10, 6.5, 10])
    for family in ("weak_bond", "goal_task_disagreement"):
        assert never(b, family, REASSURING) == [], family
        for lead in leads(family):
            assert phrase(b, "E1", family, lead, REASSURING) is None, (family, lead)
    bond = sentence(b, "E1", "weak_bond", "wai_therapist_bond")
    assert (bond.variant, bond.text) == (
        "SRS_RELATIONSHIP",
        "Rated the relationship 8 of 10 on the session rating (SRS) of 17 Mar, below 9")
    # A client without any rating yet is asked for one, whatever the therapist's rating.
    unrated = one_client()
    unrated.wai("E1", at("2026-03-09", 12), "therapist", [2] * 12)
    p = phrase(unrated, "E1", "weak_bond", "wai_client_bond", REASSURING)
    assert isinstance(p, Missing) and p.variant == "WAI_NONE", p


@pytest.mark.slow
def test_a_client_rating_between_the_lines_holds_back_every_good_rating() -> None:
    """Guards: bond, goals and tasks are going well only when every rating the client gave of
    them is reassuring (or was never given, or has no score). A client WAI-SR of 3.0 of 5,
    neither weak nor strong, is no concern, yet it holds back the therapist's 5.0 and the
    client's own SRS items of 10, whatever the lead; at 4.0 it lets them through."""
    b = one_client()
    b.srs("E1", at("2026-03-17", 11), [10, 10, 10, 10])
    b.wai("E1", at("2026-03-09", 11), "client", [3] * 12)
    b.wai("E1", at("2026-03-09", 12), "therapist", [5] * 12)
    for family in ("weak_bond", "goal_task_disagreement"):
        assert never(b, family, CONCERN) == [], family
        assert never(b, family, REASSURING) == [], family
        for lead in leads(family):
            assert phrase(b, "E1", family, lead, REASSURING) is None, (family, lead)
        # The same in the hand-built clinic: E8's client 3.0 against the therapist's 4.0.
        assert never(rich_clinic(), family, REASSURING, "E8") == [], family
    strong = one_client()
    strong.srs("E1", at("2026-03-17", 11), [10, 10, 10, 10])
    strong.wai("E1", at("2026-03-09", 11), "client", [4] * 12)
    strong.wai("E1", at("2026-03-09", 12), "therapist", [5] * 12)
    bond = sentence(strong, "E1", "weak_bond", "wai_therapist_bond", REASSURING)
    assert (bond.variant, bond.text) == (
        "WAI_THERAPIST_BOND",
        "Therapist-rated bond, working alliance questionnaire (WAI-SR): 5.0 of 5 on 9 Mar, at or "
        "above 4")
    item = sentence(strong, "E1", "goal_task_disagreement", "srs_approach_latest", REASSURING)
    assert (item.variant, item.text) == (
        "SRS_APPROACH",
        "Rated the approach 10 of 10 on the session rating (SRS) of 17 Mar, at or above 9")
    # A client WAI-SR sent without subscale scores, or an SRS without items, is weighed by
    # its total: a mean of 3.0 or a total of 32 holds the family back, a mean of 4.5 and a
    # total of 40 do not.
    for client_items, srs_items, held in (([3] * 12, [8] * 4, True),
                                          ([4, 5] * 6, [10] * 4, False)):
        unscored = one_client()
        unscored.wai("E1", at("2026-03-09", 11), "client", client_items)
        unscored.wai("E1", at("2026-03-09", 12), "therapist", [5] * 12)
        bare = unscored.srs("E1", at("2026-03-17", 11), srs_items)
        unscored.rows["alliance_items"] = [i for i in unscored.rows["alliance_items"]
                                           if i["measure_id"] != bare]
        for row in unscored.rows["alliance_measures"]:
            if row["rater"] == "client" and row["instrument"] == "WAI-SR":
                row.update(goal=None, task=None, bond=None)
        for family in ("weak_bond", "goal_task_disagreement"):
            said = never(unscored, family, REASSURING)
            if held:
                assert said == [], (family, said)
            else:
                assert said and all(t.startswith("Therapist-rated ") for t in said), (
                    family, said)
    # A later questionnaire recorded without the bond does not hide an earlier low one.
    hidden = one_client()
    hidden.wai("E1", at("2026-03-02", 11), "client", [2] * 12)
    hidden.wai("E1", at("2026-03-09", 11), "client", [5] * 12)
    hidden.wai("E1", at("2026-03-09", 12), "therapist", [5] * 12)
    for row in hidden.rows["alliance_measures"]:
        if row["rater"] == "client" and str(row["administered_at"]).startswith("2026-03-09"):
            row.update(goal=None, task=None, bond=None, score_total=None)
    assert never(hidden, "weak_bond", REASSURING) == []


def test_an_srs_of_38_4_is_never_a_low_rating() -> None:
    """Guards the reported "Session ratings show a strain: latest SRS 38.4": 38.4 on its own or
    after a lower rating is no concern (it is going well); after a fall of the clinic's
    1 point it is named as the fall, never as a low rating."""
    b = one_client()
    b.srs("E1", at("2026-03-17", 11), [10, 10, 9.4, 9])
    assert never(b, "alliance_rupture", CONCERN) == []
    good = sentence(b, "E1", "alliance_rupture", "srs_latest", REASSURING)
    assert good.text == "Latest session rating (SRS) was 38.4 on 17 Mar, at or above 36"
    b.srs("E1", at("2026-03-10", 11), [9.5, 9.5, 9.5, 9.5])  # 38: a rise to 38.4
    assert never(b, "alliance_rupture", CONCERN) == []
    after_40 = one_client()
    after_40.srs("E1", at("2026-03-10", 11), [10, 10, 10, 10])
    after_40.srs("E1", at("2026-03-17", 11), [10, 10, 9.4, 9])
    said = never(after_40, "alliance_rupture", CONCERN)
    assert said and set(said) == {"Session rating (SRS) fell from 40 to 38.4 on 17 Mar"}
    assert never(after_40, "alliance_rupture", REASSURING) == []


@pytest.mark.slow
def test_an_srs_of_40_never_gets_the_rupture_title() -> None:
    """Guards: a latest SRS of 40 alone, after 38 or after another 40 is never a strain."""
    for before in ([], [9.5] * 4, [10] * 4):
        b = one_client()
        if before:
            b.srs("E1", at("2026-03-10", 11), before)
        b.srs("E1", at("2026-03-17", 11), [10, 10, 10, 10])
        assert never(b, "alliance_rupture", CONCERN) == [], before
        assert never(b, "weak_bond", CONCERN) == [], before
        assert never(b, "goal_task_disagreement", CONCERN) == [], before
        assert never(b, "alliance_rupture", REASSURING), before


def test_an_srs_of_40_after_two_low_ones_is_no_strain() -> None:
    """Guards: after two low ratings, a latest SRS of 40 (the best there is, 10 points up) is
    not listed under "Session ratings show a strain" but as a rise going well; while the
    latest is low too, the repeated low ratings are the strain named."""
    b = one_client()
    b.srs("E1", at("2026-03-03", 11), [7.5] * 4)
    b.srs("E1", at("2026-03-10", 11), [7.5] * 4)
    b.srs("E1", at("2026-03-17", 11), [10] * 4)
    assert never(b, "alliance_rupture", CONCERN) == []
    assert phrase(b, "E1", "alliance_rupture", "srs_below_cutoff_last3") is None
    good = sentence(b, "E1", "alliance_rupture", "srs_below_cutoff_last3", REASSURING)
    assert (good.variant, good.text) == (
        "SRS_GOOD", "Session rating (SRS) rose from 30 to 40 on 17 Mar, at or above 36")
    still = one_client()
    still.srs("E1", at("2026-03-03", 11), [7.5] * 4)
    still.srs("E1", at("2026-03-10", 11), [10] * 4)
    still.srs("E1", at("2026-03-17", 11), [8.5] * 4)
    p = sentence(still, "E1", "alliance_rupture", "srs_below_cutoff_last3")
    assert (p.variant, p.direction, p.text) == (
        "SRS_BELOW_CUTOFF_REPEATED", CONCERN, "2 of the last 3 session ratings (SRS) were below 36")
    assert never(still, "alliance_rupture", REASSURING) == []


@pytest.mark.slow
def test_a_client_above_the_therapist_is_never_a_concern() -> None:
    """Guards the reported "client 4.5, therapist 3.8 of 5" under "Why": no alliance family
    calls it a concern; nor is the rater gap reassuring the other way, as the two do not
    see the alliance alike (0.7 apart, the concern line is 0.5). A client a little above
    the therapist (4.1 against 3.8) sees it alike, and that is reassuring."""
    b = one_client()
    b.wai("E1", at("2026-03-09", 11), "client", [5, 4] * 6)
    b.wai("E1", at("2026-03-09", 12), "therapist", [4] * 10 + [3, 3])
    for family in ("rater_gap", "weak_bond", "goal_task_disagreement"):
        assert never(b, family, CONCERN) == [], family
    assert never(b, "rater_gap", REASSURING) == []
    for wanted in WANTED:
        assert phrase(b, "E1", "rater_gap", "wai_rater_gap", wanted) is None, wanted
    close = one_client()
    close.wai("E1", at("2026-03-09", 11), "client", [4] * 11 + [5])
    close.wai("E1", at("2026-03-09", 12), "therapist", [4] * 10 + [3, 3])
    assert never(close, "rater_gap", CONCERN) == []
    alike = sentence(close, "E1", "rater_gap", "wai_rater_gap", REASSURING)
    assert (alike.variant, alike.direction, alike.text) == (
        "WAI_ALIKE", REASSURING,
        "Client rates the alliance 4.1 of 5 on the working alliance questionnaire (WAI-SR), the "
        "therapist 3.8 (9 Mar)")


def test_a_client_below_the_therapist_is_never_reassuring() -> None:
    """Guards the reported "client 2.1, therapist 3.2 of 5" under "Going well": no alliance
    family calls it reassuring, and the rater gap is a concern the other way."""
    b = one_client()
    b.wai("E1", at("2026-03-09", 11), "client", [2] * 11 + [3])
    b.wai("E1", at("2026-03-09", 12), "therapist", [3] * 10 + [4, 4])
    for family in ("rater_gap", "weak_bond", "goal_task_disagreement"):
        assert never(b, family, REASSURING) == [], family
    below = sentence(b, "E1", "rater_gap", "wai_rater_gap")
    assert (below.variant, below.direction) == ("WAI_CLIENT_BELOW", CONCERN)
    assert below.text.startswith("Client rates the alliance 2.1 of 5 on the working alliance "
                                 "questionnaire (WAI-SR), the therapist 3.2 (")


def test_attending_3_days_ago_is_no_concern_on_its_own() -> None:
    """Guards the reported "Drifting out of contact: last attended 3 days ago": with a session
    booked soon there is no contact concern at all; with nothing booked the concern named
    is that, not the recent session."""
    b = one_client()
    b.appointment("E1", at("2026-03-17"))
    b.appointment("E1", at("2026-03-24"), "scheduled", booked_at=at("2026-03-17"))
    assert never(b, "disengagement", CONCERN) == []
    assert never(b, "disengagement", REASSURING)
    unbooked = one_client()
    unbooked.appointment("E1", at("2026-03-17"))
    said = never(unbooked, "disengagement", CONCERN)
    assert said and set(said) == {"Nothing booked ahead"}
    # The recent session is not named, so it is not cited either.
    nothing = sentence(unbooked, "E1", "disengagement", "booked_next_14d")
    assert (nothing.variant, nothing.appointment_ids, nothing.measure_ids) == (
        "NOTHING_BOOKED", [], [])


def test_nothing_booked_cites_the_last_session_when_it_names_it() -> None:
    """Guards the evidence of "Nothing booked ahead": the last attended session is cited
    exactly when the sentence names it, that is when the gap since it is a concern too."""
    b = one_client()
    b.appointment("E1", at("2026-02-24"))
    last = b.appointment("E1", at("2026-02-28"))
    for lead in ("booked_next_14d", "days_to_next_booked"):
        p = sentence(b, "E1", "disengagement", lead)
        assert (p.variant, p.text, p.appointment_ids) == (
            "NOTHING_BOOKED", "Nothing booked ahead; last attended 20 days ago, on 28 Feb", [last])
    assert never(b, "disengagement", CONCERN)


@pytest.mark.slow
def test_no_contact_for_4_weeks_is_never_reassuring() -> None:
    """Guards the reported "In regular contact: last attended 28 days ago" and "Keeps their
    sessions: no sessions were scheduled in the last 4 weeks": neither is going well, and
    the 28 days are a concern the other way."""
    b = one_client()
    b.appointment("E1", at("2026-02-13"))
    b.appointment("E1", at("2026-02-20"))  # 28 days before 20 Mar
    b.appointment("E1", at("2026-03-23"), "scheduled", booked_at=at("2026-02-20"))
    assert never(b, "disengagement", REASSURING) == []
    gap = sentence(b, "E1", "disengagement", "days_since_attended")
    assert gap.text == "Last attended 28 days ago, on 20 Feb"
    quiet = one_client()
    for day in ("2026-02-06", "2026-02-13", "2026-02-19"):  # over 4 weeks ago
        quiet.appointment("E1", at(day))
    for lead in leads("inconsistent_engagement"):
        if lead != "miss_rate_90d":  # the 3-month rate is about 3 months
            for wanted in WANTED:
                assert phrase(quiet, "E1", "inconsistent_engagement", lead, wanted) is None
    assert never(quiet, "disengagement", REASSURING) == []


@pytest.mark.slow
def test_a_measure_never_taken_is_a_prompt_never_a_reason() -> None:
    """Guards: with no SRS, GSRS or WAI-SR, the rating families prompt for the measure
    whichever way the model moved the risk; they are never worded as a fact."""
    b = one_client()
    b.appointment("E1", at("2026-03-17"))
    prompts = {
        ("alliance_rupture", "srs_latest"): "SRS_NONE",
        ("alliance_rupture", "gsrs_change"): "GSRS_NONE",
        ("weak_bond", "srs_relationship_latest"): "SRS_NONE",
        ("weak_bond", "wai_client_bond"): "WAI_NONE",
        ("goal_task_disagreement", "wai_therapist_task"): "WAI_NONE",
        ("rater_gap", "wai_rater_gap"): "WAI_PAIR_NONE",
    }
    for (family, lead), variant in prompts.items():
        for wanted in WANTED:
            p = phrase(b, "E1", family, lead, wanted)
            assert isinstance(p, Missing) and p.variant == variant, (family, lead, wanted, p)
            assert p.text.startswith("No ") and "consider" in p.text
    assert never(b, "rater_gap", CONCERN) == []


@pytest.mark.slow
def test_planned_discharge_and_program_are_context_only() -> None:
    """Guards: stage of treatment (planned discharge included) and how care is delivered
    (program included) are context whichever way the model moved the risk."""
    b = rich_clinic()
    data = b.build()
    for eid in data.episodes["episode_id"]:
        h = history(data, str(eid))
        for family in CONTEXT_FAMILIES:
            for lead in leads(family):
                for wanted in WANTED:
                    p = PHRASERS[family](h, lead, wanted, THRESHOLDS)
                    assert isinstance(p, Phrase) and p.direction == CONTEXT, (eid, lead, p)


# --- each line of [thresholds.*] drawn where the catalogue draws it, on both sides ----------


def clinic_with(sessions: dict[str, str] | None = None, booked: str | None = None,
                srs: tuple[list[float], ...] = (), wai: dict[str, list[int]] | None = None,
                ) -> ClinicBuilder:
    """One client (E1): sessions by day ('03-17': 'no_show'), a session booked on ``booked``,
    SRS item lists a week apart ending on 17 Mar, and WAI-SR items by rater on 9 Mar."""
    b = one_client()
    for day, status in (sessions or {}).items():
        b.appointment("E1", at(f"2026-{day}"), status)
    if booked:
        b.appointment("E1", at(f"2026-{booked}"), "scheduled", booked_at=at("2026-03-01"))
    for weeks_before, items in enumerate(reversed(srs)):
        rated = pd.Timestamp("2026-03-17") - pd.Timedelta(weeks=weeks_before)
        b.srs("E1", at(rated.date().isoformat(), 11), items)
    for hour, (rater, responses) in enumerate((wai or {}).items(), start=11):
        b.wai("E1", at("2026-03-09", hour), rater, responses)
    return b


KEPT = {"02-24": "attended", "03-03": "attended", "03-12": "attended", "03-17": "attended"}
EIGHT_KEPT = {f"03-{d:02d}": "attended" for d in range(1, 17, 2)}  # 1, 3, ..., 15 Mar
LINE_CASES = [
    # [thresholds.attendance]: concern above 0.2 not kept, reassuring at 2+ sessions, <= 0.1
    pytest.param(clinic_with(KEPT | {"03-10": "no_show"}), "inconsistent_engagement",
                 "missed_28d", CONCERN, None, id="1 of 5 missed is no concern"),
    pytest.param(clinic_with(dict(list(KEPT.items())[1:]) | {"03-10": "no_show"}),
                 "inconsistent_engagement", "missed_28d", CONCERN, "MISSED_SESSIONS",
                 id="1 of 4 missed is a concern"),
    pytest.param(clinic_with(EIGHT_KEPT | {"03-16": "attended", "03-10": "no_show"}),
                 "inconsistent_engagement", "attended_28d", REASSURING, "ATTENDANCE",
                 id="1 of 10 missed is reassuring"),
    pytest.param(clinic_with(EIGHT_KEPT | {"03-10": "no_show"}), "inconsistent_engagement",
                 "attended_28d", REASSURING, None, id="1 of 9 missed is neither"),
    pytest.param(clinic_with({"03-10": "attended", "03-17": "attended"}),
                 "inconsistent_engagement", "attended_28d", REASSURING, "ATTENDED_ALL",
                 id="2 of 2 kept is reassuring"),
    pytest.param(clinic_with({"03-17": "attended"}), "inconsistent_engagement",
                 "attended_28d", REASSURING, None, id="1 of 1 kept is too few to reassure"),
    # [thresholds.contact]
    pytest.param(clinic_with({"03-06": "attended"}, booked="03-23"), "disengagement",
                 "days_since_attended", CONCERN, None, id="attended 14 days ago is no gap"),
    pytest.param(clinic_with({"03-05": "attended"}, booked="03-23"), "disengagement",
                 "days_since_attended", CONCERN, "NO_RECENT_ATTENDANCE",
                 id="attended 15 days ago is a gap"),
    pytest.param(clinic_with({"03-13": "attended"}, booked="03-23"), "disengagement",
                 "days_since_attended", REASSURING, "ENGAGED",
                 id="attended 7 days ago and booked is in contact"),
    pytest.param(clinic_with({"03-12": "attended"}, booked="03-23"), "disengagement",
                 "days_since_attended", REASSURING, None, id="attended 8 days ago is not"),
    pytest.param(clinic_with({"03-16": "attended", "03-18": "no_show"}, booked="03-24"),
                 "disengagement", "days_since_attended", REASSURING, None,
                 id="a miss since the last session is not in contact"),
    pytest.param(clinic_with({"03-17": "attended"}, booked="04-02"), "disengagement",
                 "booked_next_14d", CONCERN, None, id="booked 13 days ahead is soon"),
    pytest.param(clinic_with({"03-17": "attended"}, booked="04-03"), "disengagement",
                 "booked_next_14d", CONCERN, "NEXT_BOOKING_FAR",
                 id="booked 14 days ahead is not soon"),
    pytest.param(clinic_with({"03-10": "attended", "03-17": "no_show"}, booked="03-24"),
                 "disengagement", "consecutive_misses", CONCERN, None,
                 id="one miss is no run"),
    pytest.param(clinic_with({"03-10": "attended", "03-13": "no_show", "03-17": "no_show"},
                             booked="03-24"),
                 "disengagement", "consecutive_misses", CONCERN, "CONSECUTIVE_MISSES",
                 id="two misses in a row are a run"),
    # [thresholds.session_rating]
    pytest.param(clinic_with(srs=([9, 9, 9, 9],)), "alliance_rupture", "srs_latest", CONCERN,
                 None, id="an SRS of 36 is not low"),
    pytest.param(clinic_with(srs=([9, 9, 9, 9],)), "alliance_rupture", "srs_latest",
                 REASSURING, "SRS_GOOD", id="an SRS of 36 is good"),
    pytest.param(clinic_with(srs=([9, 9, 9, 8.9],)), "alliance_rupture", "srs_latest", CONCERN,
                 "SRS_LOW", id="an SRS of 35.9 is low"),
    pytest.param(clinic_with(srs=([10, 9, 9, 9], [9, 9, 9, 9])), "alliance_rupture",
                 "srs_change", CONCERN, "SRS_FELL", id="37 to 36 is a fall"),
    pytest.param(clinic_with(srs=([10, 9, 9, 9], [9.5, 9, 9, 9])), "alliance_rupture",
                 "srs_change", CONCERN, None, id="37 to 36.5 is no fall"),
    pytest.param(clinic_with(srs=([9, 10, 10, 10],)), "weak_bond", "srs_relationship_latest",
                 CONCERN, None, id="a relationship item of 9 is no concern"),
    pytest.param(clinic_with(srs=([9, 10, 10, 10],)), "weak_bond", "srs_relationship_latest",
                 REASSURING, "SRS_RELATIONSHIP", id="a relationship item of 9 is good"),
    pytest.param(clinic_with(srs=([8.9, 10, 10, 10],)), "weak_bond", "srs_relationship_latest",
                 CONCERN, "SRS_RELATIONSHIP", id="a relationship item of 8.9 is a concern"),
    # [thresholds.working_alliance]: bond is items 3, 5, 7 and 9
    pytest.param(clinic_with(wai={"client": [3] * 12}), "weak_bond", "wai_client_bond",
                 CONCERN, None, id="a bond of 3.0 is no concern"),
    pytest.param(clinic_with(wai={"client": [3] * 12}), "weak_bond", "wai_client_bond",
                 REASSURING, None, id="a bond of 3.0 is not reassuring"),
    pytest.param(clinic_with(wai={"client": [3] * 8 + [2] + [3] * 3}), "weak_bond",
                 "wai_client_bond", CONCERN, "WAI_CLIENT_BOND", id="a bond of 2.75 is weak"),
    pytest.param(clinic_with(wai={"client": [4] * 12}), "weak_bond", "wai_client_bond",
                 REASSURING, "WAI_CLIENT_BOND", id="a bond of 4.0 is good"),
    pytest.param(clinic_with(wai={"client": [3] * 12, "therapist": [3] * 6 + [4] * 6}),
                 "rater_gap", "wai_rater_gap", CONCERN, "WAI_CLIENT_BELOW",
                 id="client 3.0 under therapist 3.5 is a concern"),
    pytest.param(clinic_with(wai={"client": [3] * 12, "therapist": [3] * 7 + [4] * 5}),
                 "rater_gap", "wai_rater_gap", CONCERN, None,
                 id="client 3.0 under therapist 3.4 is no concern"),
    # Alike: less than concern_client_below_therapist_by apart either way, the client's mean
    # at or above reassure_from.
    pytest.param(clinic_with(wai={"client": [4] * 10 + [5, 5], "therapist": [5] * 7 + [4] * 5}),
                 "rater_gap", "wai_rater_gap", REASSURING, "WAI_ALIKE",
                 id="client 4.2 under therapist 4.6 is alike"),
    pytest.param(clinic_with(wai={"client": [4] * 12, "therapist": [5] * 6 + [4] * 6}),
                 "rater_gap", "wai_rater_gap", REASSURING, None,
                 id="client 4.0 under therapist 4.5 is not alike"),
    pytest.param(clinic_with(wai={"client": [4] * 12, "therapist": [5] * 6 + [4] * 6}),
                 "rater_gap", "wai_rater_gap", CONCERN, "WAI_CLIENT_BELOW",
                 id="client 4.0 under therapist 4.5 is a concern"),
    # Compared as shown: 4.25 and 4.67 read "4.2" and "4.7", half a point apart.
    pytest.param(clinic_with(wai={"client": [4] * 9 + [5] * 3, "therapist": [5] * 8 + [4] * 4}),
                 "rater_gap", "wai_rater_gap", CONCERN, "WAI_CLIENT_BELOW",
                 id="client shown 4.2 under therapist shown 4.7 is a concern"),
    pytest.param(clinic_with(wai={"client": [4] * 9 + [5] * 3, "therapist": [5] * 8 + [4] * 4}),
                 "rater_gap", "wai_rater_gap", REASSURING, None,
                 id="client shown 4.2 under therapist shown 4.7 is not alike"),
    pytest.param(clinic_with(wai={"client": [4] * 12, "therapist": [4] * 12}),
                 "rater_gap", "wai_rater_gap", REASSURING, "WAI_ALIKE",
                 id="client and therapist at 4.0 are alike"),
    pytest.param(clinic_with(wai={"client": [5] * 5 + [4] * 7, "therapist": [4] * 12}),
                 "rater_gap", "wai_rater_gap", REASSURING, "WAI_ALIKE",
                 id="client 4.4 over therapist 4.0 is alike"),
    pytest.param(clinic_with(wai={"client": [5] * 6 + [4] * 6, "therapist": [4] * 12}),
                 "rater_gap", "wai_rater_gap", REASSURING, None,
                 id="client 4.5 over therapist 4.0 is not alike"),
    pytest.param(clinic_with(wai={"client": [5] * 6 + [4] * 6, "therapist": [4] * 12}),
                 "rater_gap", "wai_rater_gap", CONCERN, None,
                 id="client 4.5 over therapist 4.0 is no concern"),
    pytest.param(clinic_with(wai={"client": [4] * 11 + [3], "therapist": [4] * 11 + [3]}),
                 "rater_gap", "wai_rater_gap", REASSURING, None,
                 id="client and therapist alike at 3.9 is not reassuring"),
    # Bond, goals and tasks: a reassuring rating only while every client rating of the
    # family is reassuring (an SRS item at or above 9, a WAI-SR subscale at or above 4).
    pytest.param(clinic_with(wai={"client": [4] * 12, "therapist": [5] * 12}), "weak_bond",
                 "wai_therapist_bond", REASSURING, "WAI_THERAPIST_BOND",
                 id="a client bond of 4.0 lets the therapist's 5.0 reassure"),
    pytest.param(clinic_with(wai={"client": [4, 4, 3] + [4] * 9, "therapist": [5] * 12}),
                 "weak_bond", "wai_therapist_bond", REASSURING, None,
                 id="a client bond of 3.75 holds back the therapist's 5.0"),
    pytest.param(clinic_with(srs=([9, 10, 10, 10],), wai={"therapist": [5] * 12}), "weak_bond",
                 "wai_therapist_bond", REASSURING, "WAI_THERAPIST_BOND",
                 id="a relationship item of 9 lets the therapist's 5.0 reassure"),
    pytest.param(clinic_with(srs=([8.9, 10, 10, 10],), wai={"therapist": [5] * 12}),
                 "weak_bond", "wai_therapist_bond", REASSURING, None,
                 id="a relationship item of 8.9 holds back the therapist's 5.0"),
    pytest.param(clinic_with(wai={"client": [4] * 12, "therapist": [5] * 12}),
                 "goal_task_disagreement", "wai_therapist_goal", REASSURING, "WAI_THERAPIST_GOAL",
                 id="client goal and task of 4.0 let the therapist's 5.0 reassure"),
    pytest.param(clinic_with(wai={"client": [3] + [4] * 11, "therapist": [5] * 12}),
                 "goal_task_disagreement", "wai_therapist_goal", REASSURING, None,
                 id="a client task of 3.75 holds back the therapist's goal of 5.0"),
    # The course of the last three SRS: a fall of the clinic's 1 point over them, the mean
    # compared as shown, two low ratings in a row.
    pytest.param(clinic_with(srs=([9.5] * 4, [9.5, 9.5, 9.5, 9], [9, 9, 9.5, 9.5])),
                 "alliance_rupture", "srs_slope_last3", CONCERN, "SRS_FALLING",
                 id="38 to 37 over three ratings is a fall"),
    pytest.param(clinic_with(srs=([9.5] * 4, [9.5, 9.5, 9.5, 9], [9, 9, 9.5, 9.5])),
                 "alliance_rupture", "srs_latest", REASSURING, None,
                 id="38 to 37 over three ratings is not going well"),
    pytest.param(clinic_with(srs=([9.5] * 4, [9.5, 9.5, 9.5, 9], [9, 9, 9.5, 9.6])),
                 "alliance_rupture", "srs_slope_last3", CONCERN, None,
                 id="38 to 37.1 over three ratings is no fall"),
    pytest.param(clinic_with(srs=([9.5] * 4, [9.5, 9.5, 9.5, 9], [9, 9, 9.5, 9.6])),
                 "alliance_rupture", "srs_slope_last3", REASSURING, "SRS_GOOD",
                 id="38 to 37.1 over three ratings is good"),
    pytest.param(clinic_with(srs=([9] * 4, [9] * 4, [9, 9, 9, 8.9])), "alliance_rupture",
                 "srs_mean_last3", CONCERN, "SRS_LOW",
                 id="a mean shown as 36 is not below 36, the latest 35.9 is"),
    pytest.param(clinic_with(srs=([9] * 4, [9, 9, 9, 8.8], [9, 9, 9, 8.9])), "alliance_rupture",
                 "srs_mean_last3", CONCERN, "SRS_MEAN_LOW", id="a mean of 35.9 is below 36"),
    pytest.param(clinic_with(srs=([9] * 4, [9, 9, 9, 8.9], [9, 9, 9, 8.9])), "alliance_rupture",
                 "srs_low_run_last3", CONCERN, "SRS_LOW_RUN", id="two low in a row are a run"),
    pytest.param(clinic_with(srs=([9, 9, 9, 8.9], [9] * 4, [9, 9, 9, 8.9])), "alliance_rupture",
                 "srs_low_run_last3", CONCERN, "SRS_BELOW_CUTOFF_REPEATED",
                 id="two low apart are no run, but repeated"),
    # Short windows: the lead's own week or fortnight, else the 4 weeks around it.
    pytest.param(clinic_with({"03-02": "attended", "03-09": "attended", "03-16": "no_show",
                              "03-18": "attended"}),
                 "inconsistent_engagement", "missed_7d", CONCERN, "MISSED_SESSIONS",
                 id="1 of 2 missed in 7 days is a concern"),
    pytest.param(clinic_with({"03-02": "attended", "03-09": "attended", "03-12": "attended",
                              "03-16": "attended", "03-18": "attended"}),
                 "inconsistent_engagement", "missed_14d", CONCERN, None,
                 id="all kept in 2 and 4 weeks is no concern"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("b", "family", "lead", "wanted", "variant"), LINE_CASES)
def test_each_line_is_drawn_where_the_catalogue_draws_it(
    b: ClinicBuilder, family: str, lead: str, wanted: str, variant: str | None,
) -> None:
    """Guards the lines of config/reasons.toml on both sides: a fact just inside a line is
    named that way, one on or just past it is not (None: the family is left out). The answer
    is also checked against the recomputation from the rows."""
    data = b.build()
    result = PHRASERS[family](history(data, "E1"), lead, wanted, THRESHOLDS)
    _, problems = phrased_mismatches(result, family, facts_of(data, "E1", AS_OF), lead, wanted)
    assert problems == []
    assert (None if result is None else result.variant) == variant, result


# --- once known bugs, now fixed ------------------------------------------------------------


def test_a_client_who_never_attended_is_not_in_regular_contact() -> None:
    """Guards: admitted 3 days ago with a session booked but none attended, the client is not
    "In regular contact" ([thresholds.contact] reassures on a session attended recently),
    nor drifting out of contact yet."""
    b = one_client("2026-03-17")
    b.appointment("E1", at("2026-03-24"), "scheduled", booked_at=at("2026-03-17"))
    assert never(b, "disengagement", REASSURING) == []
    assert never(b, "disengagement", CONCERN) == []
    assert never(rich_clinic(), "disengagement", REASSURING, "E8") == []


def test_a_fall_of_exactly_one_point_is_never_reassuring() -> None:
    """Guards: an SRS falling from 37.8 to 36.8 fell by the clinic's 1 point, so it is not
    "Session ratings are good" but a fall (totals are sums of tenths, held as floats)."""
    b = one_client()
    b.srs("E1", at("2026-03-10", 11), [9.9, 8.2, 10.0, 9.7])
    b.srs("E1", at("2026-03-17", 11), [9.7, 9.9, 9.1, 8.1])
    assert never(b, "alliance_rupture", REASSURING) == []
    p = sentence(b, "E1", "alliance_rupture", "srs_change")
    assert (p.variant, p.direction, p.text) == (
        "SRS_FELL", CONCERN, "Session rating (SRS) fell from 37.8 to 36.8 on 17 Mar")


def test_a_client_half_a_point_below_the_therapist_is_a_concern() -> None:
    """Guards: a client at 3.58 and a therapist at 4.08 of 5 are 0.5 apart, the clinic's line
    (item means of whole responses, held as floats)."""
    b = one_client()
    b.wai("E1", at("2026-03-09", 11), "client", [4] * 7 + [3] * 5)  # 43 / 12
    b.wai("E1", at("2026-03-09", 12), "therapist", [4] * 11 + [5])  # 49 / 12
    p = sentence(b, "E1", "rater_gap", "wai_rater_gap")
    assert (p.variant, p.direction, p.text) == (
        "WAI_CLIENT_BELOW", CONCERN,
        "Client rates the alliance 3.6 of 5 on the working alliance questionnaire (WAI-SR), the "
        "therapist 4.1 (9 Mar)")
    assert never(b, "rater_gap", CONCERN) and never(b, "rater_gap", REASSURING) == []


def test_repeated_low_ratings_read_as_a_plural() -> None:
    """Guards the plural of the instrument in words: 'session ratings (SRS)'."""
    p = sentence(rich_clinic(), "E6", "alliance_rupture", "srs_below_cutoff_last3")
    assert p.text == "3 of the last 3 session ratings (SRS) were below 36"


def longest_wai_sr(day: str) -> ClinicBuilder:
    """A client rating the alliance on ``day`` (in March), a two-digit day for the longest
    date, with the therapist a little lower (5.0 against 4.6 of 5: they see it alike)."""
    b = one_client()
    b.wai("E1", at(f"2026-03-{day}", 11), "client", [5] * 12)
    b.wai("E1", at(f"2026-03-{day}", 12), "therapist", [5] * 7 + [4] * 5)
    return b


def test_wai_sr_sentences_fit_in_120_characters() -> None:
    """Guards: the WAI-SR subscale and rater-gap concern sentences, at their longest (the
    longest subscale words, a two-digit day), fit the list's width."""
    subscale = sentence(longest_wai_sr("19"), "E1", "goal_task_disagreement",
                        "wai_therapist_task", REASSURING)
    assert subscale.variant == "WAI_THERAPIST_TASK"
    low = one_client()
    low.wai("E1", at("2026-03-19", 11), "client", [2] * 12)
    low.wai("E1", at("2026-03-19", 12), "therapist", [4] * 12)
    gap = sentence(low, "E1", "rater_gap", "wai_rater_gap")
    goals = sentence(low, "E1", "goal_task_disagreement", "wai_therapist_goal")
    assert (gap.variant, goals.variant) == ("WAI_CLIENT_BELOW", "WAI_CLIENT_GOAL")
    texts = [subscale.text, gap.text, goals.text]
    assert [t for t in texts if too_long(t)] == []


@pytest.mark.parametrize("day", ["09", "19"])
def test_the_alike_rater_sentence_fits_in_120_characters_on_any_day(day: str) -> None:
    """Guards the once known bug of a 121-character "... as high as the therapist (4.0, 19
    Mar)": "Client rates the alliance ..., the therapist ... (D Mon)", reassuring, fits the
    list's width whatever the day of the month."""
    p = sentence(longest_wai_sr(day), "E1", "rater_gap", "wai_rater_gap", REASSURING)
    assert (p.variant, p.direction) == ("WAI_ALIKE", REASSURING)
    assert p.text == ("Client rates the alliance 5.0 of 5 on the working alliance questionnaire "
                      f"(WAI-SR), the therapist 4.6 ({int(day)} Mar)")
    assert not too_long(p.text), (len(p.text), p.text)


# --- the short windows, the course of the SRS, and context on care and measurement --------


def test_short_windows_name_their_own_window() -> None:
    """Guards: an attendance reason led by a 7 or 14-day count talks about those days; when
    they say nothing the way the model moved the risk, the 4 weeks around them (or nothing)."""
    b = one_client()
    for day, status in (("03-02", "attended"), ("03-05", "attended"), ("03-09", "attended"),
                        ("03-12", "attended"), ("03-16", "no_show"), ("03-18", "attended")):
        b.appointment("E1", at(f"2026-{day}"), status)
    week = sentence(b, "E1", "inconsistent_engagement", "missed_7d")
    assert (week.variant, week.direction, week.text) == (
        "MISSED_SESSIONS", CONCERN,
        "Missed 1 of 2 sessions in the last 7 days: 1 no-show on 16 Mar")
    fortnight = sentence(b, "E1", "inconsistent_engagement", "miss_rate_14d")
    assert fortnight.text == "Missed 1 of 4 sessions in the last 2 weeks: 1 no-show on 16 Mar"
    # 1 of 6 in 4 weeks is neither a concern nor reassuring: nothing to fall back on.
    for lead in ("attended_7d", "attended_14d"):
        assert phrase(b, "E1", "inconsistent_engagement", lead, REASSURING) is None, lead
    assert every_lead(b.build(), "E1") == []

    kept = one_client()
    for day in ("03-02", "03-09", "03-12", "03-16", "03-18"):
        kept.appointment("E1", at(f"2026-{day}"))
    good = sentence(kept, "E1", "inconsistent_engagement", "attended_7d", REASSURING)
    assert (good.variant, good.direction, good.text) == (
        "ATTENDED_ALL", REASSURING, "Attended all 2 sessions scheduled in the last 7 days")
    good = sentence(kept, "E1", "inconsistent_engagement", "attended_14d", REASSURING)
    assert good.text == "Attended all 4 sessions scheduled in the last 2 weeks"
    for lead in leads("inconsistent_engagement"):
        assert phrase(kept, "E1", "inconsistent_engagement", lead) is None, lead

    earlier = one_client()  # nothing in the last week, two no-shows before it
    for day, status in (("03-02", "no_show"), ("03-05", "no_show"), ("03-09", "attended")):
        earlier.appointment("E1", at(f"2026-{day}"), status)
    fallback = sentence(earlier, "E1", "inconsistent_engagement", "missed_7d")
    assert fallback.text == ("Missed 2 of 3 sessions in the last 4 weeks: 2 no-shows on 2 Mar "
                             "and 5 Mar")
    assert phrase(earlier, "E1", "inconsistent_engagement", "attended_7d", REASSURING) is None
    assert every_lead(earlier.build(), "E1") == []


def test_the_attendance_trend_is_worded_by_the_contact_facts() -> None:
    """Guards: the attendance trend leads the disengagement family to its facts: a run of
    misses as a concern, recent contact with a booking as reassuring, else nothing."""
    b = clinic_with({"03-02": "attended", "03-05": "attended", "03-13": "no_show",
                     "03-17": "no_show"})
    run = sentence(b, "E1", "disengagement", "attended_trend_14d")
    assert (run.variant, run.direction) == ("CONSECUTIVE_MISSES", CONCERN)
    assert phrase(b, "E1", "disengagement", "attended_trend_14d", REASSURING) is None
    engaged = clinic_with({"03-10": "attended", "03-17": "attended"}, booked="03-24")
    good = sentence(engaged, "E1", "disengagement", "attended_trend_14d", REASSURING)
    assert (good.variant, good.direction) == ("ENGAGED", REASSURING)
    assert phrase(engaged, "E1", "disengagement", "attended_trend_14d") is None


def test_the_course_of_the_last_three_ratings_is_stated() -> None:
    """Guards the sentences of the lowest, the mean, the run and the fall over the last
    three SRS: each states the ratings, below the clinic's line; none is going well."""
    b = clinic_with(srs=([9.5] * 4, [7.5] * 4, [8.5] * 4))  # 38, 30, 34 on 3, 10, 17 Mar
    said = {lead: sentence(b, "E1", "alliance_rupture", lead) for lead in
            ("srs_min_last3", "srs_mean_last3", "srs_low_run_last3", "srs_slope_last3")}
    assert {lead: (p.variant, p.direction, p.text) for lead, p in said.items()} == {
        "srs_min_last3": ("SRS_LOWEST", CONCERN, "Session rating (SRS) was 30 on 10 Mar, the "
                          "lowest of the last 3; latest 34 on 17 Mar, below 36"),
        "srs_mean_last3": ("SRS_MEAN_LOW", CONCERN, "Session rating (SRS) averaged 34 over the "
                           "last 3 ratings, below 36; latest 34 on 17 Mar"),
        "srs_low_run_last3": ("SRS_LOW_RUN", CONCERN, "Session rating (SRS) was below 36 the "
                              "last 2 times in a row, latest 34 on 17 Mar"),
        "srs_slope_last3": ("SRS_FALLING", CONCERN, "Session rating (SRS) fell over the last 3 "
                            "ratings: 38, 30 and 34 on 17 Mar"),
    }
    assert len(said["srs_min_last3"].measure_ids) == 2
    assert len(said["srs_mean_last3"].measure_ids) == 3
    assert never(b, "alliance_rupture", REASSURING) == []
    lowest_last = clinic_with(srs=([8.5] * 4, [8] * 4, [7.5] * 4))  # 34, 32, 30
    p = sentence(lowest_last, "E1", "alliance_rupture", "srs_min_last3")
    assert p.text == "Session rating (SRS) of 30 on 17 Mar was the lowest of the last 3, below 36"
    # Only the last three count: four low ratings are "the last 3 times in a row".
    four = clinic_with(srs=([7.5] * 4,) * 4)
    run = sentence(four, "E1", "alliance_rupture", "srs_low_run_last3")
    assert run.text.startswith("Session rating (SRS) was below 36 the last 3 times in a row")


def test_good_or_rising_ratings_are_never_a_strain_by_their_course() -> None:
    """Guards: ratings at or above the line, rising, give no concern whatever the lead, and
    each new lead finds them going well; a mean above the line never reads as below it."""
    b = clinic_with(srs=([9] * 4, [9.5] * 4, [9.75] * 4))  # 36, 38, 39
    assert never(b, "alliance_rupture", CONCERN) == []
    for lead in ("srs_min_last3", "srs_mean_last3", "srs_low_run_last3", "srs_slope_last3"):
        good = sentence(b, "E1", "alliance_rupture", lead, REASSURING)
        assert (good.variant, good.text) == (
            "SRS_GOOD", "Session rating (SRS) rose from 38 to 39 on 17 Mar, at or above 36"), lead
    # A latest low after two at 40: the fall is named for the mean's lead, not "averaged".
    dip = clinic_with(srs=([10] * 4, [10] * 4, [8.75] * 4))  # 40, 40, 35
    p = sentence(dip, "E1", "alliance_rupture", "srs_mean_last3")
    assert (p.variant, p.text) == ("SRS_FELL", "Session rating (SRS) fell from 40 to 35 on 17 Mar")


def test_clinic_cancellations_and_bookings_are_context() -> None:
    """Guards the setting's new context, the same whichever way the model moved the risk:
    the clinic's cancellations of the last 4 weeks and the median booking lead time."""
    b = one_client()
    b.appointment("E1", at("2026-03-03"), "cancelled_by_clinic")
    b.appointment("E1", at("2026-03-10"), "cancelled_by_clinic")
    b.appointment("E1", at("2026-03-05"), booked_at=at("2026-03-03", 23))  # 2 days
    b.appointment("E1", at("2026-03-12"), booked_at=at("2026-03-07"))  # 5 days
    b.appointment("E1", at("2026-03-16"), "no_show", booked_at=at("2026-03-02"))  # 14 days
    b.appointment("E1", at("2026-03-18"), booked_at=at("2026-03-17"))  # 1 day
    for wanted in WANTED:
        cancelled = sentence(b, "E1", "setting", "clinic_cancelled_28d", wanted)
        assert (cancelled.variant, cancelled.direction, cancelled.text) == (
            "CLINIC_CANCELLED", CONTEXT,
            "The clinic cancelled 2 sessions in the last 4 weeks, on 3 Mar and 10 Mar")
        booked = sentence(b, "E1", "setting", "booking_lead_days_90d", wanted)
        assert (booked.variant, booked.direction, booked.text) == (
            "BOOKING_LEAD", CONTEXT,
            "Sessions in the last 3 months were booked a median of 3.5 days ahead (4 sessions)")
        assert len(booked.appointment_ids) == 4
    assert every_lead(b.build(), "E1") == []
    one = one_client()
    one.appointment("E1", at("2026-03-18"), booked_at=at("2026-03-17"))
    assert sentence(one, "E1", "setting", "booking_lead_days_90d").text == (
        "Sessions in the last 3 months were booked a median of 1 day ahead (1 session)")
    assert sentence(one, "E1", "setting", "clinic_cancelled_28d").text == (
        "The clinic cancelled no session in the last 4 weeks")
    none = one_client()
    assert sentence(none, "E1", "setting", "booking_lead_days_90d").text == (
        "No booking dates for the sessions of the last 3 months")


def test_how_the_alliance_is_measured_is_context() -> None:
    """Guards the measurement family: when the latest SRS and WAI-SR were taken, and the
    sessions attended since the latest SRS, as context whichever way the model moved."""
    b = one_client()
    for day in ("03-02", "03-09", "03-12", "03-16"):
        b.appointment("E1", at(f"2026-{day}"))
    b.srs("E1", at("2026-03-09", 11), [9] * 4)
    b.wai("E1", at("2026-03-09", 12), "therapist", [4] * 12)
    for wanted in WANTED:
        srs = sentence(b, "E1", "measurement", "days_since_srs", wanted)
        assert (srs.variant, srs.direction, srs.text) == (
            "SRS_LAST", CONTEXT, "Last session rating (SRS) 11 days ago, on 9 Mar")
        wai = sentence(b, "E1", "measurement", "days_since_wai", wanted)
        assert wai.text == "Last working alliance questionnaire (WAI-SR) 11 days ago, on 9 Mar"
        since = sentence(b, "E1", "measurement", "attended_since_srs_90d", wanted)
        assert (since.variant, since.text) == (
            "ATTENDED_SINCE_SRS",
            "2 sessions attended since the last session rating (SRS), on 9 Mar")
        assert len(since.appointment_ids) == 2 and len(since.measure_ids) == 1
    assert every_lead(b.build(), "E1") == []
    b.srs("E1", at("2026-03-16", 11), [9] * 4)
    assert sentence(b, "E1", "measurement", "attended_since_srs_90d").text == (
        "No session attended since the last session rating (SRS), on 16 Mar")
    unrated = one_client("2025-10-01")
    unrated.srs("E1", at("2025-11-20", 11), [9] * 4)  # 4 months ago
    unrated.appointment("E1", at("2026-03-02"))
    unrated.appointment("E1", at("2026-03-09"))
    assert sentence(unrated, "E1", "measurement", "attended_since_srs_90d").text == (
        "2 sessions attended in the last 3 months, none on a day with a session rating (SRS)")
    assert every_lead(unrated.build(), "E1") == []
    bare = one_client()
    assert [sentence(bare, "E1", "measurement", lead).text for lead in leads("measurement")] == [
        "No session rating (SRS) recorded yet",
        "No working alliance questionnaire (WAI-SR) recorded yet",
        "No sessions attended in the last 3 months",
    ]


def test_the_new_sentences_fit_in_120_characters_at_their_longest() -> None:
    """Guards the width of the longest forms: decimals and two-digit days in the lowest and
    mean of the last three, the fall over them, and many cancellations and sessions."""
    b = one_client()
    for day, items in (("02-17", [9.9, 9.9, 9.8, 9.9]), ("02-24", [7.4, 7.4, 7.4, 7.3]),
                       ("03-17", [8.9, 8.9, 8.9, 8.8])):
        b.srs("E1", at(f"2026-{day}", 11), items)
    for n in range(1, 20):
        b.appointment("E1", at(f"2026-03-{n:02d}", 9), "cancelled_by_clinic")
        b.appointment("E1", at(f"2026-03-{n:02d}", 14), booked_at=at("2026-02-20", 23))
    texts = [sentence(b, "E1", "alliance_rupture", lead).text for lead in
             ("srs_min_last3", "srs_mean_last3", "srs_low_run_last3", "srs_slope_last3")]
    texts += [sentence(b, "E1", family, lead).text for family in ("setting", "measurement")
              for lead in leads(family)]
    assert [t for t in texts if too_long(t)] == [], texts
    assert every_lead(b.build(), "E1") == []


# --- the ORS, the therapist's notes and other alliance forms: each recomputation can fail ---

# (episode of ``new_families_clinic``, family, lead, wanted, the variant it calls for), with
# the registry of ``MADE_UP_REGISTRY`` (an ORS course, two alliance forms with a cutoff).
NEW_VARIANTS = [
    ("R1", "not_on_track", "ors_latest", CONCERN, "ORS_NOT_ON_TRACK"),
    ("R7", "not_on_track", "ors_not_on_track", CONCERN, "ORS_NOT_ON_TRACK"),  # the short form
    ("R5", "not_on_track", "ors_change", CONCERN, "ORS_DETERIORATED"),
    ("R2", "not_on_track", "ors_expected_gap", REASSURING, "ORS_ON_COURSE"),
    ("R3", "not_on_track", "ors_latest", REASSURING, "ORS_ABOVE_CUTOFF"),
    ("N1", "not_on_track", "ors_latest", CONCERN, "ORS_NONE"),
    ("N1", "observed_strain", "signs_sessions_28d", CONCERN, "OBSERVED_SIGNS"),
    ("N4", "observed_strain", "sign_groups_28d", CONCERN, "OBSERVED_SIGNS"),  # shortened
    ("N2", "observed_strain", "ruptures_unrepaired_90d", CONCERN, "OBSERVED_UNREPAIRED"),
    ("N2", "observed_strain", "ruptures_90d", CONCERN, "OBSERVED_RUPTURES"),
    ("N1", "observed_strain", "sign_share_90d", CONCERN, "OBSERVED_SHARE"),
    ("N3", "observed_strain", "sign_share_90d", CONCERN, "OBSERVED_SHARE"),
    ("N3", "observed_strain", "signs_sessions_28d", REASSURING, "OBSERVED_CLEAR"),
    ("R1", "observed_strain", "ruptures_90d", REASSURING, "OBSERVED_NONE"),
    ("F1", "alliance_rupture", "other_alliance_share", CONCERN, "OTHER_FORM_LOW"),
    ("F3", "alliance_rupture", "other_alliance_share", CONCERN, "OTHER_FORM_LOW"),
    ("F4", "alliance_rupture", "other_alliance_share", REASSURING, "OTHER_FORM_GOOD"),
]


def bumped(text: str) -> str:
    """``text`` with its first number one more (a prompt has none: a word dropped)."""
    if not re.search(r"\d", text):
        return text.replace(" yet", "", 1)
    return re.sub(r"\d+", lambda m: str(int(m.group()) + 1), text, count=1)


def falsified(p: Phrase | Missing, family: str) -> dict[str, Phrase | Missing | None]:
    """The phraser's answer made wrong in each way a truth check must catch."""
    family_variants = {c.split(".")[1] for c in RECOMPUTE if c.startswith(family + ".")}
    wrong: dict[str, Phrase | Missing | None] = {
        "a number": dataclasses.replace(p, text=bumped(p.text)),
        "left out": None,
    }
    if isinstance(p, Phrase):
        other = REASSURING if p.direction == CONCERN else CONCERN
        wrong["the way it points"] = dataclasses.replace(p, direction=other)
        cited = "observation_ids" if p.observation_ids else "measure_ids"
        wrong["its evidence"] = dataclasses.replace(p, **{cited: getattr(p, cited)[:-1]})
        if p.direction == CONCERN and p.suggestion:
            wrong["its suggestion"] = dataclasses.replace(p, suggestion=p.suggestion[:-1])
    for variant in sorted(family_variants - {p.variant}):
        wrong[f"variant {variant}"] = dataclasses.replace(p, variant=variant)
    return wrong


@pytest.mark.slow
def test_the_new_recomputations_catch_a_wrong_sentence(made_up: Lines) -> None:
    """Guards the truth checks of the ORS, the therapist's notes and other alliance forms:
    each variant's true answer passes, and the same answer with a number changed, its
    evidence short of a row, the way it points turned, its repair prompts cut, its variant
    swapped for another of its kind, or the family left out, is caught."""
    data = new_families_clinic().build()
    hs = histories(data, list(build_features(data, AS_OF).index), AS_OF)
    uncaught = []
    for episode, family, lead, wanted, variant in NEW_VARIANTS:
        facts = facts_of(data, episode, AS_OF, made_up.registry)
        p = PHRASERS[family](hs[episode], lead, wanted, made_up.thresholds)
        assert p is not None and p.variant == variant, (episode, family, lead, wanted, p)
        assert phrased_mismatches(p, family, facts, lead, wanted)[1] == [], (episode, p)
        wrong = falsified(p, family)
        assert "its evidence" in wrong or isinstance(p, Missing), p
        for how, bad in wrong.items():
            assert bad != p, (episode, how)
            if not phrased_mismatches(bad, family, facts, lead, wanted)[1]:
                uncaught.append(f"{episode} {variant}: {how}")
    assert uncaught == []


def new_lines_clinic(ors: list[float] | None = None,
                     notes: Sequence[tuple[datetime, str | None, bool, str | None]] = (),
                     form: tuple[str, float] | None = None) -> ClinicBuilder:
    """One client (E1): ORS totals up to 19 Mar, therapist's notes (when, signs, rupture,
    repair steps) and a rating on a form of ``MADE_UP_REGISTRY`` on 16 Mar."""
    b = one_client("2025-10-01")
    weekly_ors(b, "E1", ors or [])
    for when, signs, rupture, steps in notes:
        b.observation("E1", when, signs, rupture, steps)
    if form is not None:
        b.measure("E1", at("2026-03-16", 11), form[0], form[1])
    return b


CLEAR_NOTES = [(at("2026-03-09"), None, False, None), (at("2026-03-16"), None, False, None)]
NEW_LINE_CASES = [
    # [instruments.ORS.trajectory] (MADE_UP_REGISTRY): intake 15, 5th rating: the on-track
    # line 17.3 as shown, the course 21.8; 6th rating: the course 22.6.
    pytest.param(new_lines_clinic([15, 16, 16, 17, 17.2]), "not_on_track", "ors_latest",
                 CONCERN, "ORS_NOT_ON_TRACK", id="ORS 17.2 is under the line of 17.3"),
    pytest.param(new_lines_clinic([15, 16, 16, 17, 17.3]), "not_on_track", "ors_latest",
                 CONCERN, None, id="ORS 17.3 is on the line of 17.3"),
    pytest.param(new_lines_clinic([15, 17, 19, 20, 21, 22.6]), "not_on_track", "ors_latest",
                 REASSURING, "ORS_ON_COURSE", id="ORS 22.6 is at the course of 22.6"),
    pytest.param(new_lines_clinic([15, 17, 19, 20, 21, 22.5]), "not_on_track", "ors_latest",
                 REASSURING, None, id="ORS 22.5 is under the course of 22.6"),
    # [instruments.ORS]: the reliable change of 5 and the cutoff of 25.
    pytest.param(new_lines_clinic([38, 33]), "not_on_track", "ors_change", CONCERN,
                 "ORS_DETERIORATED", id="a fall of 5 is reliable"),
    pytest.param(new_lines_clinic([38, 33.1]), "not_on_track", "ors_change", CONCERN, None,
                 id="a fall of 4.9 is not"),
    pytest.param(new_lines_clinic([38, 33.1]), "not_on_track", "ors_change", REASSURING,
                 "ORS_ABOVE_CUTOFF", id="33.1 after 38, under the course, is above 25"),
    pytest.param(new_lines_clinic([24, 25, 25]), "not_on_track", "ors_latest", REASSURING,
                 None, id="ORS 25 is not above the cutoff"),
    pytest.param(new_lines_clinic([24, 25, 25.1]), "not_on_track", "ors_latest", REASSURING,
                 "ORS_ABOVE_CUTOFF", id="ORS 25.1 is above the cutoff"),
    # The notes: signs over the last 4 weeks, ruptures over the last 3 months (as of 20 Mar).
    pytest.param(new_lines_clinic(notes=[(at("2026-02-20", 0), "anger", False, None)]),
                 "observed_strain", "signs_sessions_28d", CONCERN, "OBSERVED_SIGNS",
                 id="a sign 28 days ago is recent"),
    pytest.param(new_lines_clinic(notes=[(at("2026-02-19", 23), "anger", False, None)]),
                 "observed_strain", "signs_sessions_28d", CONCERN, None,
                 id="a sign 28 days and an hour ago is not recent"),
    pytest.param(new_lines_clinic(notes=[(at("2025-12-20", 0), "anger", False, None)]),
                 "observed_strain", "sign_share_90d", CONCERN, "OBSERVED_SHARE",
                 id="a sign 90 days ago is in the 3 months"),
    pytest.param(new_lines_clinic(notes=[(at("2025-12-19", 23), "anger", False, None)]),
                 "observed_strain", "sign_share_90d", CONCERN, None,
                 id="a sign 90 days and an hour ago is not"),
    pytest.param(new_lines_clinic(notes=[(at("2025-12-20", 0), None, True, None)]),
                 "observed_strain", "ruptures_90d", CONCERN, "OBSERVED_RUPTURES",
                 id="a rupture 90 days ago counts"),
    pytest.param(new_lines_clinic(notes=[(at("2025-12-19", 23), None, True, None)]),
                 "observed_strain", "ruptures_90d", CONCERN, None,
                 id="a rupture 90 days and an hour ago does not"),
    pytest.param(new_lines_clinic(notes=[(at("2026-03-09"), None, False, "acknowledged"),
                                         (at("2026-03-10"), None, True, None)]),
                 "observed_strain", "ruptures_unrepaired_90d", CONCERN, "OBSERVED_UNREPAIRED",
                 id="a repair before the rupture does not repair it"),
    pytest.param(new_lines_clinic(notes=[(at("2026-03-10"), None, True, None),
                                         (at("2026-03-11"), None, False, "acknowledged")]),
                 "observed_strain", "ruptures_unrepaired_90d", CONCERN, "OBSERVED_RUPTURES",
                 id="a repair after the rupture repairs it"),
    pytest.param(new_lines_clinic(notes=[*CLEAR_NOTES, (at("2025-12-21"), None, True, None)]),
                 "observed_strain", "signs_sessions_28d", REASSURING, None,
                 id="clear notes after a rupture never repaired are not reassuring"),
    pytest.param(new_lines_clinic(notes=[*CLEAR_NOTES, (at("2025-12-19"), None, True, None)]),
                 "observed_strain", "signs_sessions_28d", REASSURING, "OBSERVED_CLEAR",
                 id="clear notes after a rupture over 3 months ago are reassuring"),
    pytest.param(new_lines_clinic(notes=[*CLEAR_NOTES,
                                         (at("2026-03-02"), None, True, "acknowledged")]),
                 "observed_strain", "signs_sessions_28d", REASSURING, None,
                 id="a rupture in the last 4 weeks, repaired, is not reassuring"),
    # Other alliance forms at their cutoff (MADE_UP_REGISTRY): check-in 14, better high;
    # strain 8, better low.
    pytest.param(new_lines_clinic(form=("CHECKIN", 14)), "alliance_rupture",
                 "other_alliance_share", REASSURING, "OTHER_FORM_GOOD",
                 id="a check-in at its cutoff is good"),
    pytest.param(new_lines_clinic(form=("CHECKIN", 13.9)), "alliance_rupture",
                 "other_alliance_share", CONCERN, "OTHER_FORM_LOW",
                 id="a check-in under its cutoff is low"),
    pytest.param(new_lines_clinic(form=("STRAIN", 8)), "alliance_rupture",
                 "other_alliance_share", CONCERN, None, id="strain at its cutoff is no concern"),
    pytest.param(new_lines_clinic(form=("STRAIN", 8.1)), "alliance_rupture",
                 "other_alliance_share", CONCERN, "OTHER_FORM_LOW",
                 id="strain over its cutoff is a concern"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("b", "family", "lead", "wanted", "variant"), NEW_LINE_CASES)
def test_the_new_lines_are_drawn_where_the_registry_and_catalogue_draw_them(
    made_up: Lines, b: ClinicBuilder, family: str, lead: str, wanted: str,
    variant: str | None,
) -> None:
    """Guards the lines of the ORS ([instruments.ORS] and its course), the windows of the
    therapist's notes and the cutoffs of other alliance forms on both sides: just inside a
    line the fact is named that way, on or past it not (None: the family is left out); the
    answer is also checked against the recomputation from the rows, so each recomputation
    is shown to draw the same line."""
    data = b.build()
    result = PHRASERS[family](history(data, "E1"), lead, wanted, made_up.thresholds)
    facts = facts_of(data, "E1", AS_OF, made_up.registry)
    assert phrased_mismatches(result, family, facts, lead, wanted)[1] == []
    assert (None if result is None else result.variant) == variant, result


def test_without_an_ors_course_or_a_form_cutoff_only_the_fall_and_the_cutoff_are_said() -> None:
    """Guards the shipped registry: with no course fitted, a rating under what a course
    would expect is never "not on track" nor "on course" (only the fall from the intake and
    the clinical cutoff are spoken of), and the TAS, without a cutoff, says nothing."""
    data = new_families_clinic().build()
    hs = histories(data, ["R1", "R2", "R5"], AS_OF)
    for episode, h in hs.items():
        said = {r.variant for f in leads("not_on_track") for w in WANTED
                if isinstance(r := PHRASERS["not_on_track"](h, f, w, THRESHOLDS), Phrase)}
        assert not said & {"ORS_NOT_ON_TRACK", "ORS_ON_COURSE"}, (episode, said)
    facts = facts_of(data, "R5", AS_OF)
    for f in leads("not_on_track"):
        p = PHRASERS["not_on_track"](hs["R5"], f, CONCERN, THRESHOLDS)
        assert isinstance(p, Phrase) and p.variant == "ORS_DETERIORATED", (f, p)
        assert phrased_mismatches(p, "not_on_track", facts, f, CONCERN)[1] == []
    tas = one_client()
    tas.measure("E1", at("2026-03-16", 11), "TAS", 13.0)
    for wanted in WANTED:
        assert phrase(tas, "E1", "alliance_rupture", "other_alliance_share", wanted) is None
        assert never(tas, "alliance_rupture", wanted) == []  # each lead checked, none said
