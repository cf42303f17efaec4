"""Reasons from the therapist's session notes (``retention.reasons.observed``), their rows
(``History.observations``) and words (``config/reasons.toml`` ``[signs.*]``,
``[repair_steps.*]``), on hand-built clinics whose sentences can be read off.

The rule of every reason holds here too: a sentence states a fact of the client's own
notes known at the as-of date, in the direction it is listed; a concern names a sign or a
rupture, a reassuring fact is listed only when the recent notes hold neither and no
rupture is left unrepaired; no note at all is a prompt, never a cause. Random episodes
check the phraser against the features' own counts.
"""

from __future__ import annotations

import random
import re
import shutil
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retention.clinic import contract
from retention.clinic.data import ClinicData
from retention.features.observations import FEATURE_NAMES, observation_features
from retention.features.treatment import open_episodes
from retention.reasons.catalogue import (
    Catalogue,
    CatalogueError,
    ObservedWords,
    Sign,
    load_catalogue,
)
from retention.reasons.history import History, histories
from retention.reasons.observed import phrase_observed_strain, repair_prompts
from retention.reasons.phrases import CONCERN, MAX_SENTENCE, REASSURING, Missing, Phrase
from tests.features.test_observations import MIDNIGHT, builder, note
from tests.support.factories import ClinicBuilder, at

AS_OF = date(2026, 5, 26)
REASONS_TOML = Path(__file__).resolve().parents[2] / "config" / "reasons.toml"
CATALOGUE = load_catalogue(REASONS_TOML)
THRESHOLDS = CATALOGUE.thresholds
# The leads whose facts fall back on one another; the share of noted sessions over 3 months
# is said only when it leads (test_the_share_of_noted_sessions_when_it_leads).
LEADS = tuple(f for f in FEATURE_NAMES if f != "sign_share_90d")


def history(b: ClinicBuilder | ClinicData, episode_id: str = "E1",
            as_of: date = AS_OF) -> History:
    data = b.build() if isinstance(b, ClinicBuilder) else b
    return histories(data, list(data.episodes["episode_id"]), as_of)[episode_id]


def said(b: ClinicBuilder | ClinicData, lead: str, wanted: str = CONCERN, episode_id: str = "E1",
         as_of: date = AS_OF) -> Phrase:
    """The phraser's answer, which must be a sentence pointing the way wanted."""
    p = phrase_observed_strain(history(b, episode_id, as_of), lead, wanted, THRESHOLDS)
    assert isinstance(p, Phrase), p
    assert p.direction == wanted and len(p.text) <= MAX_SENTENCE, p
    return p


# --- the rows: History.observations ---------------------------------------------------------


def test_history_holds_the_notes_known_at_as_of_oldest_first() -> None:
    b = builder("E1", "E2")
    late = note(b, "E1", at("2026-05-20"), "anger", recorded_at=MIDNIGHT)
    second = note(b, "E1", at("2026-05-12"), "withdrawal", rupture=True)
    first = note(b, "E1", at("2026-04-01"), repair="acknowledged", appointment_id="A1")
    note(b, "E2", at("2026-05-12"), "anger")
    h = history(b)
    o = h.observations
    assert list(o.columns) == ["observation_id", "appointment_id", "observed_at", "days_ago",
                               "signs", "rupture", "repair_steps"]
    assert o.ids("observation_id") == [first, second]  # not the note written on as_of
    assert late not in o.ids("observation_id")
    assert list(o["signs"][1:]) == ["withdrawal"] and pd.isna(o["signs"][0])
    assert list(o["rupture"]) == [False, True]
    assert o["days_ago"][1] == pytest.approx(13 + 14 / 24)  # 12 May 10:00 to 26 May
    assert o["appointment_id"][0] == "A1"
    assert history(builder("E1")).observations.empty


# --- concerns -------------------------------------------------------------------------------


def test_signs_noted_most_recent_first() -> None:
    b = builder("E1")
    older = note(b, "E1", at("2026-05-05"), "anger")
    latest = note(b, "E1", at("2026-05-12"), "withdrawal frustration")
    note(b, "E1", at("2026-04-20"), "lack_of_trust")  # before the last 4 weeks
    for lead in ("signs_sessions_28d", "sign_groups_28d"):
        p = said(b, lead)
        assert p.variant == "OBSERVED_SIGNS"
        assert p.text == "Therapist noted frustration and withdrawal on 12 May, anger on 5 May"
        assert p.observation_ids == [older, latest]


def test_an_unrepaired_rupture() -> None:
    b = builder("E1")
    o = note(b, "E1", at("2026-05-12"), "withdrawal frustration", rupture=True)
    note(b, "E1", at("2026-05-19"))  # a later session with nothing noted
    for lead in LEADS:  # every lead comes to the one fact there is
        p = said(b, lead)
        assert p.text == ("Therapist noted a rupture with frustration and withdrawal on 12 May; "
                          "no repair recorded")
        assert p.observation_ids == [o]


def test_a_repaired_rupture_says_which_steps_and_when() -> None:
    b = builder("E1")
    rupture = note(b, "E1", at("2026-05-12"), rupture=True)
    repair = note(b, "E1", at("2026-05-19"), repair="revisited_goals_tasks acknowledged")
    p = said(b, "ruptures_90d")
    assert p.variant == "OBSERVED_RUPTURES"
    assert p.text == ("Therapist noted a rupture on 12 May; acknowledged and revisited goals and "
                      "tasks on 19 May")
    assert p.observation_ids == [rupture, repair]
    # Repaired on the rupture's own note.
    b = builder("E1")
    note(b, "E1", at("2026-05-12"), "anger", rupture=True, repair="took_responsibility")
    assert said(b, "ruptures_90d").text == ("Therapist noted a rupture with anger on 12 May; took "
                                            "responsibility on 12 May")


def test_the_unrepaired_fact_leads_when_it_is_the_lead() -> None:
    """An earlier rupture repaired, a later one not: the lead picks the fact, and "since"
    keeps the two apart."""
    b = builder("E1")
    first = note(b, "E1", at("2026-04-01"), rupture=True)
    repair = note(b, "E1", at("2026-04-08"), repair="acknowledged")
    latest = note(b, "E1", at("2026-05-12"), "anger", rupture=True)
    p = said(b, "ruptures_unrepaired_90d")
    assert p.variant == "OBSERVED_UNREPAIRED"
    assert p.text == "Therapist noted a rupture with anger on 12 May; no repair recorded"
    assert p.observation_ids == [latest]
    p = said(b, "ruptures_90d")
    assert p.text == ("Therapist noted a rupture with anger on 12 May, a rupture on 1 Apr; no "
                      "repair recorded since 12 May")
    assert p.observation_ids == [first, latest]
    assert repair not in p.observation_ids  # no repair is cited for the latest
    assert said(b, "signs_sessions_28d").text == (
        "Therapist noted a rupture with anger on 12 May; no repair recorded")


def test_a_long_list_is_shortened_to_fit_and_stays_true() -> None:
    b = builder("E1")
    ids = [note(b, "E1", at(f"2026-05-{d:02d}"), " ".join(contract.SIGNS)) for d in (4, 11, 18)]
    ids.append(note(b, "E1", at("2026-05-25"), " ".join(contract.SIGNS), rupture=True))
    ids.append(note(b, "E1", at("2026-05-25", 15), repair=" ".join(contract.REPAIR_STEPS)))
    p = said(b, "signs_sessions_28d")
    # Every sign on every day does not fit: the sessions are counted, the latest named.
    assert p.text == ("Therapist noted signs of strain in 4 sessions in 4 weeks, most recently "
                      "a rupture on 25 May; repair recorded on 25 May")
    assert p.observation_ids == ids
    p = said(b, "ruptures_90d")
    assert p.text == "Therapist noted a rupture with signs of strain on 25 May; repair recorded " \
        "on 25 May"
    assert p.observation_ids == ids[3:]


def test_the_share_of_noted_sessions_when_it_leads() -> None:
    b = builder("E1", "E2")
    o1 = note(b, "E1", at("2026-04-20"), "anger withdrawal")  # before the 4 weeks
    o2 = note(b, "E1", at("2026-05-19"))
    o3 = note(b, "E1", at("2026-02-01"), "anger")  # before the 3 months: not counted
    note(b, "E2", at("2026-05-19"))  # clear
    p = said(b, "sign_share_90d")
    assert p.variant == "OBSERVED_SHARE" and p.direction == CONCERN
    assert p.text == ("Therapist noted signs of strain in 1 of 2 noted sessions of the last "
                      "3 months; latest: anger and withdrawal on 20 Apr")
    assert p.observation_ids == sorted([o1, o2]) and o3 not in p.observation_ids
    clear = history(b.build(), "E2")
    assert phrase_observed_strain(clear, "sign_share_90d", CONCERN, THRESHOLDS) is None


def test_no_concern_without_a_sign_or_rupture_in_the_windows() -> None:
    """Guards: a reassuring or empty record is never listed as a concern."""
    b = builder("E1", "E2", "E3")
    note(b, "E1", at("2026-05-19"))  # clear
    note(b, "E2", at("2026-04-20"), "anger withdrawal")  # signs before the 4 weeks
    note(b, "E3", at("2026-02-01"), rupture=True)  # a rupture before the 3 months
    data = b.build()
    for episode_id in ("E1", "E2", "E3"):
        h = history(data, episode_id)
        for lead in LEADS:
            assert phrase_observed_strain(h, lead, CONCERN, THRESHOLDS) is None, (episode_id,
                                                                                  lead)


# --- reassuring -----------------------------------------------------------------------------


def test_reassuring_only_when_the_recent_notes_are_clear() -> None:
    b = builder("E1")
    ids = [note(b, "E1", at(f"2026-05-{d:02d}")) for d in (10, 17, 24)]
    # A rupture of 1 Apr repaired a week later does not stand in the way.
    note(b, "E1", at("2026-04-01"), "anger", rupture=True)
    note(b, "E1", at("2026-04-08"), repair="acknowledged clarified")
    for lead in LEADS:
        p = said(b, lead, REASSURING)
        assert p.variant == "OBSERVED_CLEAR"
        assert p.text == ("No signs of strain in the therapist's notes of the last 4 weeks "
                          "(3 sessions)")
        assert p.observation_ids == ids


@pytest.mark.parametrize("spoiler", ["sign", "rupture_repaired", "old_unrepaired", "none_recent"])
def test_not_reassuring(spoiler: str) -> None:
    """Guards: a sign or a rupture in the last 4 weeks (even repaired), a rupture of the
    last 3 months left unrepaired, or no recent note at all: nothing reassuring to say."""
    b = builder("E1")
    if spoiler != "none_recent":
        note(b, "E1", at("2026-05-17"))
        note(b, "E1", at("2026-05-24"))
    if spoiler == "sign":
        note(b, "E1", at("2026-05-03"), "tasks_not_done")
    elif spoiler == "rupture_repaired":
        note(b, "E1", at("2026-05-10"), rupture=True, repair="acknowledged")
    elif spoiler == "old_unrepaired":
        note(b, "E1", at("2026-03-10"), rupture=True)
    else:
        note(b, "E1", at("2026-04-10"))
    h = history(b)
    for lead in LEADS:
        assert phrase_observed_strain(h, lead, REASSURING, THRESHOLDS) is None, lead


def test_two_notes_of_one_session_are_one_session() -> None:
    b = builder("E1")
    note(b, "E1", at("2026-05-12"), appointment_id="A1")
    note(b, "E1", at("2026-05-12", 14), appointment_id="A1")
    note(b, "E1", at("2026-05-19"))
    assert said(b, "signs_sessions_28d", REASSURING).text.endswith("(2 sessions)")


# --- missing --------------------------------------------------------------------------------


def test_no_notes_is_a_prompt_never_a_cause() -> None:
    b = builder("E1", "E2")
    note(b, "E2", at("2026-05-20"), "anger", rupture=True, recorded_at=at("2026-05-27"))
    data = b.build()
    for episode_id in ("E1", "E2"):  # E2's only note was written after the as-of date
        h = history(data, episode_id)
        for lead in LEADS:
            for wanted in (CONCERN, REASSURING):
                p = phrase_observed_strain(h, lead, wanted, THRESHOLDS)
                assert isinstance(p, Missing), (episode_id, lead, wanted)
                assert p.variant == "OBSERVED_NONE" and p.text.startswith("No therapist notes")


# --- words from the catalogue ---------------------------------------------------------------


def test_sign_and_step_words_come_from_the_catalogue() -> None:
    words = THRESHOLDS.observed
    edited = replace(THRESHOLDS, observed=ObservedWords(
        signs={**words.signs, "withdrawal": replace(words.signs["withdrawal"],
                                                    words="pulling back")},
        repair_steps={**words.repair_steps, "acknowledged": "named it"}))
    b = builder("E1")
    note(b, "E1", at("2026-05-12"), "withdrawal", rupture=True)
    note(b, "E1", at("2026-05-19"), repair="acknowledged")
    p = phrase_observed_strain(history(b), "ruptures_90d", CONCERN, edited)
    assert isinstance(p, Phrase)
    assert p.text == "Therapist noted a rupture with pulling back on 12 May; named it on 19 May"


def test_repair_prompts_follow_the_signs_of_the_last_4_weeks() -> None:
    b = builder("E1")
    note(b, "E1", at("2026-05-20"), "withdrawal rejects_suggestions")
    note(b, "E1", at("2026-05-12"), "anger lack_of_trust withdrawal boredom")
    note(b, "E1", at("2026-04-10"), "communication_breakdown")  # before the 4 weeks
    signs = CATALOGUE.observed.signs
    assert repair_prompts(history(b), CATALOGUE) == [
        signs[s].prompt for s in ("lack_of_trust", "rejects_suggestions", "anger", "withdrawal")]
    # One prompt for two signs is shown once.
    shared = replace(CATALOGUE, thresholds=replace(THRESHOLDS, observed=replace(
        CATALOGUE.observed, signs={**signs, "anger": replace(signs["anger"],
                                                             prompt=signs["withdrawal"].prompt)})))
    assert repair_prompts(history(b), shared) == [
        signs[s].prompt for s in ("lack_of_trust", "rejects_suggestions", "withdrawal")]
    assert repair_prompts(history(builder("E1")), CATALOGUE) == []


def test_a_concern_carries_the_prompts_of_its_signs_as_its_suggestion() -> None:
    """The page shows the prompts tied to the signs noted in place of the family's general
    suggestion; a rupture without signs keeps the family's (empty here); a reassuring fact
    suggests nothing."""
    b = builder("E1", "E2", "E3")
    note(b, "E1", at("2026-05-12"), "withdrawal anger", rupture=True)
    note(b, "E2", at("2026-05-12"), rupture=True)
    note(b, "E3", at("2026-05-12"))
    data = b.build()
    signs = CATALOGUE.observed.signs
    for lead in LEADS:
        p = said(data, lead)
        assert p.suggestion == f"{signs['anger'].prompt} {signs['withdrawal'].prompt}"
        assert said(data, lead, episode_id="E2").suggestion == ""
        assert said(data, lead, REASSURING, episode_id="E3").suggestion == ""


def test_every_sign_has_words_and_a_prompt_worded_for_judgement() -> None:
    """Guards the shipped catalogue: each sign of the contract, in its order, with words and
    a prompt for the clinician's judgement ("Consider ..."), and words for each repair step."""
    observed = CATALOGUE.observed
    assert list(observed.signs) == list(contract.SIGNS)
    assert list(observed.repair_steps) == list(contract.REPAIR_STEPS)
    for code, sign in observed.signs.items():
        assert isinstance(sign, Sign) and sign.group == contract.SIGNS[code]
        assert sign.words and "_" not in sign.words
        assert sign.prompt.startswith("Consider ") and sign.prompt.endswith(".")
        assert not re.search(r"\b(must|should|always|never)\b", sign.prompt, re.I), code
    assert len({s.prompt for s in observed.signs.values()}) == len(observed.signs)
    assert all(w and "_" not in w for w in observed.repair_steps.values())
    entry = CATALOGUE.families["observed_strain"]
    assert entry.title == "Therapist noted signs of strain"
    assert entry.suggestion.startswith("Consider ") and entry.reassuring_title


def edited_catalogue(tmp_path: Path, old: str, new: str) -> Path:
    text = REASONS_TOML.read_text()
    assert old in text
    path = tmp_path / "reasons.toml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(("old", "new", "names"), [
    ('[signs.anger]\nwords = "anger"', '[signs.rage]\nwords = "anger"', "[signs.rage]"),
    ('[signs.anger]\nwords = "anger"', '[other.anger]\nwords = "anger"', "[signs.anger]"),
    ('[repair_steps.monitored]', '[other.monitored]', "[repair_steps.monitored]"),
    ('words = "withdrawal"\nprompt = "Consider', 'words = "withdrawal"\npromt = "Consider',
     "[signs.withdrawal]"),
    ('words = "tasks not done"', 'words = ""', "[signs.tasks_not_done] words"),
])
def test_a_catalogue_without_words_for_a_contract_code_is_refused(
        tmp_path: Path, old: str, new: str, names: str) -> None:
    """Guards: a sign or repair step of the contract without words (or a prompt), or a code
    the contract does not know, stops loading with the file and the key named."""
    path = edited_catalogue(tmp_path, old, new)
    with pytest.raises(CatalogueError) as caught:
        load_catalogue(path)
    assert str(path) in str(caught.value) and names in str(caught.value)


def test_the_shipped_catalogue_loads_from_a_copy(tmp_path: Path) -> None:
    copy = tmp_path / "reasons.toml"
    shutil.copy(REASONS_TOML, copy)
    assert load_catalogue(copy).observed == CATALOGUE.observed
    assert isinstance(CATALOGUE, Catalogue)


# --- random episodes: true, faithful, the right way -----------------------------------------

DAY = re.compile(r"\b(\d{1,2} [A-Z][a-z]{2})\b")


def test_phrases_are_true_to_the_notes_and_point_the_way_asked() -> None:
    """Guards, on many random episodes and every lead both ways: a Missing prompt exactly
    when the features are missing; a concern only with a sign in the last 4 weeks or a
    rupture in the last 3 months, naming the lead's fact when it has one; a reassuring
    fact only when the recent notes hold neither and no rupture is unrepaired; every date
    said is the day of a cited note, every sign word said a sign of a cited note, "no
    repair recorded" only with a rupture left unrepaired; the evidence is the client's own
    notes known at the as-of date; and no concern reads as reassurance."""
    rng = random.Random(526)
    episodes = [f"E{i:02d}" for i in range(80)]
    b = builder(*episodes)
    for episode_id in episodes:
        for _ in range(rng.randrange(0, 6)):
            observed = MIDNIGHT - timedelta(hours=rng.randrange(1, 24 * 110))
            note(b, episode_id, observed,
                 " ".join(rng.sample(list(contract.SIGNS), rng.randrange(0, 3))) or None,
                 rupture=rng.random() < 0.3,
                 repair=" ".join(rng.sample(contract.REPAIR_STEPS, rng.randrange(1, 3)))
                 if rng.random() < 0.25 else None,
                 recorded_at=None if rng.random() < 0.7 else observed + timedelta(days=2),
                 appointment_id=f"A-{episode_id}-{rng.randrange(3)}" if rng.random() < 0.5
                 else None)
    data = b.build()
    frame = observation_features(open_episodes(data.episodes, AS_OF), data.observations, AS_OF)
    hs = histories(data, episodes, AS_OF)
    notes = data.observations.set_index("observation_id")
    words = {s.words: code for code, s in THRESHOLDS.observed.signs.items()}
    seen: dict[str, int] = {}
    for episode_id in episodes:
        f = frame.loc[episode_id]
        h = hs[episode_id]
        strain = f["signs_sessions_28d"] > 0 or f["ruptures_90d"] > 0
        for lead in LEADS:
            for wanted in (CONCERN, REASSURING):
                p = phrase_observed_strain(h, lead, wanted, THRESHOLDS)
                where = (episode_id, lead, wanted, p)
                if np.isnan(f["signs_sessions_28d"]):
                    assert isinstance(p, Missing), where
                    seen["missing"] = seen.get("missing", 0) + 1
                    continue
                assert not isinstance(p, Missing), where
                if p is None:
                    if wanted == CONCERN:
                        assert not strain, where
                    continue
                assert isinstance(p, Phrase) and p.direction == wanted, where
                assert len(p.text) <= MAX_SENTENCE, where
                cited = notes.loc[p.observation_ids]
                assert len(set(p.observation_ids)) == len(p.observation_ids) > 0, where
                assert (cited["episode_id"] == episode_id).all(), where
                assert (cited["observed_at"] < MIDNIGHT).all(), where
                assert (cited["recorded_at"].isna() | (cited["recorded_at"] < MIDNIGHT)).all()
                days = {f"{d.day} {d.strftime('%b')}" for d in cited["observed_at"]}
                assert set(DAY.findall(p.text)) <= days, where
                if wanted == REASSURING:
                    assert f["signs_sessions_28d"] == 0 and f["ruptures_unrepaired_90d"] == 0
                    recent = h.observations.where(h.observations["days_ago"] <= 28)
                    assert not recent.empty and not recent["rupture"].any(), where
                    assert p.text.startswith("No signs of strain"), where
                    seen["reassuring"] = seen.get("reassuring", 0) + 1
                    continue
                assert strain and not p.text.startswith("No "), where
                noted_signs = {c for text in cited["signs"].dropna() for c in text.split()}
                for word, code in words.items():
                    if re.search(rf"\b{re.escape(word)}\b", p.text):
                        assert code in noted_signs, (word, where)
                assert p.suggestion == " ".join(repair_prompts(h, CATALOGUE)), where
                if "no repair recorded" in p.text:
                    assert f["ruptures_unrepaired_90d"] > 0, where
                own = {"signs_sessions_28d": "OBSERVED_SIGNS", "sign_groups_28d": "OBSERVED_SIGNS",
                       "ruptures_unrepaired_90d": "OBSERVED_UNREPAIRED",
                       "ruptures_90d": "OBSERVED_RUPTURES"}[lead]
                if f[lead] > 0:
                    assert p.variant == own, where
                seen[p.variant] = seen.get(p.variant, 0) + 1
    assert set(seen) >= {"missing", "reassuring", "OBSERVED_SIGNS", "OBSERVED_UNREPAIRED",
                         "OBSERVED_RUPTURES"}, seen
