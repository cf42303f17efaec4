"""Reasons from the model's contributions (``retention.reasons.explain``): faithful to the
model, listed only where their fact points, sized in points that add up to the risk shown,
ranked by size, deterministic, and stored as plain JSON.

The rule: each family's points are its share, by log-odds, of the client's movement from
the starting point (the displayed risk of the model's expected score) to the displayed
risk. Families are taken largest first (ties on the family code); one under
max(min_points, min_share x the movement) is not shown, nor one past ``max_reasons`` of its
kind; a family the model did not move (exactly 0 log-odds) is never considered. A family
raising the risk is a reason when its phraser finds a concern, one lowering it is going
well when its phraser finds a reassuring fact, stage and setting are context; a phraser's
None leaves the family out (counted), its Missing becomes a prompt (at most
``max_reasons`` of them, each text once: a prompt already given is not repeated).

The first part checks the list published by the session's scored synthetic clinic
(``tests/conftest.py``; the fixtures are in ``tests/reasons/conftest.py``), the second
``explain`` on hand-made contributions, with stand-in phrasers where the wording does not
matter and the real ones where it does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from retention.clinic.data import ClinicData
from retention.features import FEATURE_NAMES, build_features, spec
from retention.reasons.catalogue import Catalogue, Family, load_catalogue
from retention.reasons.explain import (
    ALL_PHRASERS,
    Explanation,
    Limits,
    explain,
    family_contributions,
)
from retention.reasons.history import History, histories
from retention.reasons.phrases import Missing, Phrase
from retention.scoring import explain_rows, limits, payload_of
from retention.store.clinic_copy import read_scoped_copy
from retention.store.features import read_features
from tests.conftest import Scored
from tests.support.reasons import AS_OF, HEADING, KINDS, Published, rich_clinic

CONCERN, REASSURING, CONTEXT = "concern", "reassuring", "context"
CONTEXT_FAMILIES = ("early_treatment", "setting", "measurement")
PLACES = (*KINDS, "prompts", "left_out")  # where a family moved by the model can end up
# What a phraser answers, as ``select`` needs it: 'fact', 'none', or ('missing', its text).
Answer = str | tuple[str, str]
# Each published point is rounded to a tenth: start, the three kinds, other and the risk.
ROUNDING = 6 * 0.05


def select(values: Mapping[str, float], start: float, risk: float, limits: Limits,
           outcome: Callable[[str, str], Answer]) -> dict[str, list[str]]:
    """Where each family goes, by the rule in the module docstring, written out plainly.

    ``values`` are the families' log-odds, ``start`` and ``risk`` displayed risks, and
    ``outcome(family, wanted)`` what its phraser answers: 'fact', 'none' or ('missing',
    the prompt's text).
    """
    total = sum(values.values())
    movement = 100 * (risk - start)
    floor = max(limits.min_points, limits.min_share * abs(movement))
    places: dict[str, list[str]] = {place: [] for place in PLACES}
    asked: set[str] = set()
    for family in sorted(values, key=lambda f: (-abs(values[f]), f)):
        value = values[family]
        if value == 0:
            continue  # not moved by the model: never shown, prompted for or left out
        points = movement * value / total if total else 0.0
        kind = "context" if family in CONTEXT_FAMILIES else "reasons" if value > 0 else "protective"
        if abs(points) < floor or len(places[kind]) >= limits.max_reasons:
            continue
        answer = outcome(family, CONCERN if value > 0 else REASSURING)
        if isinstance(answer, tuple):
            _, text = answer
            if len(places["prompts"]) < limits.max_reasons and text not in asked:
                places["prompts"].append(family)
                asked.add(text)
        else:
            places[kind if answer == "fact" else "left_out"].append(family)
    return places


def placed(e: Explanation | Mapping[str, Any]) -> dict[str, list[str]]:
    """The families of an explanation (or a published row) by place."""
    def family(item: Any) -> str:
        return item if isinstance(item, str) else item["family"] if isinstance(item, Mapping) \
            else item.family

    items = e if isinstance(e, Mapping) else {place: getattr(e, place) for place in PLACES}
    return {place: [family(item) for item in items[place]] for place in PLACES}


def points_add_up(points: Mapping[str, float]) -> float:
    """How far start + reasons + protective + context + other is from the risk, in points."""
    parts = points["start"] + points["reasons"] + points["protective"] + points["context"]
    return abs(parts + points["other"] - points["risk"])


# --- 1. faithful: the model's own contributions, summed by family ---------------------------


def test_contributions_add_up_to_the_models_score(scored: Any, published: Published) -> None:
    """Guards: per-feature contributions plus the expected value are the model's log-odds,
    the published raw score and expected value are those numbers, the risk the model's."""
    c = published.contributions
    features = list(scored.model.feature_names)
    assert list(c.columns) == [*features, "expected_value"]
    summed = c[features].sum(axis=1) + c["expected_value"]
    np.testing.assert_allclose(summed, published.raw, rtol=0, atol=1e-6)
    assert {r["episode_id"] for r in published.rows} == set(published.features.index)
    risk = pd.Series(scored.model.predict(published.features), index=published.features.index)
    for row in published.rows:
        eid = row["episode_id"]
        assert row["raw_score"] == pytest.approx(published.raw[eid], abs=1e-6), eid
        assert row["expected_value"] == pytest.approx(c.loc[eid, "expected_value"], abs=1e-6)
        assert row["risk"] == pytest.approx(risk[eid], abs=1e-6), eid


def test_family_contributions_are_sums_of_their_features(published: Published) -> None:
    """Guards: each family's log-odds is the sum of exactly its own features' contributions."""
    by_family = family_contributions(published.contributions, published.families)
    assert sorted(by_family.columns) == sorted(set(published.families.values()))
    for family in by_family.columns:
        expected = published.contributions[published.members(family)].sum(axis=1)
        np.testing.assert_allclose(by_family[family], expected, rtol=0, atol=1e-12)


def test_published_points_are_shares_of_the_movement_from_the_start(
    scored: Any, published: Published,
) -> None:
    """Guards the points on the published list: the start is the displayed risk of the
    model's expected score; each family shown carries its log-odds and its share of the
    movement to the client's displayed risk, at least the floor, in the kind its sign
    says; at most ``max_reasons`` of each kind, largest first with ties on the code; and
    start + reasons + protective + context + other is the risk shown."""
    lim = limits(scored.settings)
    by_family = family_contributions(published.contributions, published.families)
    explained = 0
    for row in published.rows:
        eid, p = row["episode_id"], row["points"]
        if p is None:
            assert placed(row) == {place: [] for place in PLACES}, eid
            continue
        explained += 1
        values = by_family.loc[eid]
        expected = published.contributions.loc[eid, "expected_value"]
        start = float(scored.model.calibrator.predict(np.array([expected]))[0])
        # The risk before it was rounded for publishing: with the families nearly cancelling
        # out (a movement of hundredths of a point), rounding the risk to six decimals moves
        # each family's share by more than the points' own rounding.
        raw = float(published.contributions.loc[eid].sum())
        risk = float(scored.model.calibrator.predict(np.array([raw]))[0])
        movement = 100 * (risk - start)
        total = float(values.sum())
        floor = max(lim.min_points, lim.min_share * abs(movement))
        assert p["start"] == pytest.approx(100 * start, abs=0.05 + 1e-9), eid
        assert p["risk"] == pytest.approx(100 * row["risk"], abs=0.05 + 1e-6), eid
        assert points_add_up(p) <= ROUNDING + 1e-9, (eid, p)
        for kind in KINDS:
            shown = row[kind]
            assert len(shown) <= lim.max_reasons, (eid, kind)
            order = sorted(shown, key=lambda r: (-abs(values[r["family"]]), r["family"]))
            assert shown == order, (eid, kind)
            assert p[kind] == pytest.approx(sum(r["percentage_points"] for r in shown),
                                            abs=0.05 + 1e-9), (eid, kind)
            for r in shown:
                value = values[r["family"]]
                assert (r["family"] in CONTEXT_FAMILIES) == (kind == "context"), (eid, r)
                if kind != "context":
                    assert (value > 0) == (kind == "reasons"), (eid, r["code"])
                assert r["direction"] == HEADING[kind], (eid, r["code"])
                assert r["code"].startswith(r["family"] + "."), r["code"]
                assert r["log_odds"] == pytest.approx(value, abs=5e-5 + 1e-9), (eid, r["code"])
                points = movement * value / total
                assert r["percentage_points"] == pytest.approx(points, abs=0.05 + 1e-6), eid
                assert abs(points) >= floor - 1e-6, (eid, r["code"], points, floor)
        assert len(row["prompts"]) <= lim.max_reasons, eid
    assert explained > 0


def outcome_of(history: History, contributions: pd.Series, families: Mapping[str, str],
               catalogue: Catalogue) -> Callable[[str, str], Answer]:
    """What the real phraser of a family answers for one episode: 'fact', 'none' or
    ('missing', its text), asked with the family's member pushing hardest the way the
    model moved it."""
    def outcome(family: str, wanted: str) -> Answer:
        members = contributions[[f for f, fam in families.items() if fam == family]]
        lead = str(members.idxmax() if wanted == CONCERN else members.idxmin())
        found = ALL_PHRASERS[family](history, lead, wanted, catalogue.thresholds)
        if isinstance(found, Missing):
            return "missing", found.text
        if found is None:
            return "none"
        assert found.direction == (CONTEXT if family in CONTEXT_FAMILIES else wanted), found
        return "fact"
    return outcome


def test_published_lists_follow_the_rule(scored: Any, published: Published,
                                         store_inputs: tuple[pd.DataFrame, ClinicData]) -> None:
    """Guards the whole selection on the published list: which families are reasons, going
    well, context and prompts, and which were left out, are exactly those the rule gives
    from the contributions and the phrasers' answers: left out is exactly the families
    whose phraser returned None; a family the model did not move is nowhere, and no
    prompt's text is given twice."""
    features, data = store_inputs
    hist = histories(data, list(features.index), scored.as_of)
    by_family = family_contributions(published.contributions, published.families)
    lim = limits(scored.settings)
    left_out = 0
    for row in published.rows:
        eid = row["episode_id"]
        if row["points"] is None:
            continue
        texts = [p["text"] for p in row["prompts"]]
        assert len(texts) == len(set(texts)), (eid, texts)
        unmoved = {f for f, v in by_family.loc[eid].items() if v == 0}
        assert not unmoved & {f for fams in placed(row).values() for f in fams}, eid
        contributions = published.contributions.loc[eid]
        start = float(scored.model.calibrator.predict(
            np.array([contributions["expected_value"]]))[0])
        risk = float(scored.model.calibrator.predict(np.array([published.raw[eid]]))[0])
        outcome = outcome_of(hist[eid], contributions.drop("expected_value"), published.families,
                             scored.catalogue)
        assert placed(row) == select(by_family.loc[eid].to_dict(), start, risk, lim, outcome), eid
        left_out += len(row["left_out"])
    assert left_out > 0, "the synthetic clinic has families whose facts point the other way"


# --- 2. deterministic -----------------------------------------------------------------------


def test_explain_is_deterministic(scored: Any, published: Published,
                                  store_inputs: tuple[pd.DataFrame, ClinicData]) -> None:
    """Guards: the same inputs give the same explanations in the same order, whatever the
    order of the rows, and those are what was published (reasons, going well, context,
    prompts, points and the families left out)."""
    features, data = store_inputs
    contributions = scored.model.contributions(features)
    hist = histories(data, list(features.index), scored.as_of)

    def run(frame: pd.DataFrame) -> dict[str, Explanation]:
        return explain(frame, published.families, hist, scored.catalogue,
                       scored.model.calibrator.predict, limits(scored.settings))

    first, second = run(contributions), run(contributions)
    assert list(first) == list(second)
    assert first == second
    shuffled = run(contributions.iloc[::-1])
    assert {k: shuffled[k] for k in first} == first
    for row in published.rows:
        if row["points"] is not None:
            payload = payload_of(first[row["episode_id"]])
            assert {k: row[k] for k in payload} == payload, row["episode_id"]


# --- explain on hand-made contributions -----------------------------------------------------

CATALOGUE = Catalogue(
    {fam: Family(fam, f"title {fam}", f"suggest {fam}", f"good {fam}") for fam in spec.FAMILIES},
    load_catalogue(Path(__file__).resolve().parents[2] / "config" / "reasons.toml").thresholds,
)
FAMILIES = {f.name: f.family for f in spec.FEATURES}


def risk_of(raw: np.ndarray) -> np.ndarray:
    """A stand-in calibrator, not the plain sigmoid, so points must come from it."""
    return 1.0 / (1.0 + np.exp(-(0.8 * np.asarray(raw) - 0.3)))


def hand_contributions(values: Mapping[str, float], expected: float = -1.0,
                       episode_id: str = "E1") -> pd.DataFrame:
    row = {name: 0.0 for name in FEATURE_NAMES} | dict(values) | {"expected_value": expected}
    return pd.DataFrame([row], index=[episode_id])


@pytest.fixture(scope="module")
def rich() -> dict[str, History]:
    """The histories of the hand-built clinic's episodes."""
    data = rich_clinic().build()
    return histories(data, list(build_features(data, AS_OF).index), AS_OF)


def explain_one(rich: Mapping[str, History], values: Mapping[str, float],
                limits: Limits | None = None, episode_id: str = "E1",
                expected: float = -1.0) -> Explanation:
    """``explain`` on one hand-built episode with the stand-in calibrator."""
    return explain(hand_contributions(values, expected, episode_id), FAMILIES, rich, CATALOGUE,
                   risk_of, limits or Limits())[episode_id]


def family_values(values: Mapping[str, float]) -> dict[str, float]:
    out = dict.fromkeys(spec.FAMILIES, 0.0)
    for name, v in values.items():
        out[FAMILIES[name]] += v
    return out


@dataclass
class Stand:
    """Stand-in phrasers: each family answers as told ('fact' by default, 'none', 'missing'
    or 'wrong': a fact pointing the other way), and every question is recorded."""

    answers: dict[str, str] = field(default_factory=dict)
    asked: list[tuple[str, str, str]] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)  # prompt texts other than the default

    def phraser(self, family: str) -> Callable[..., Phrase | Missing | None]:
        def answer(h: History, lead: str, wanted: str, t: Any) -> Phrase | Missing | None:
            self.asked.append((family, lead, wanted))
            told = self.answers.get(family, "fact")
            if told == "missing":
                return Missing("NOT_TAKEN", self.prompt(family))
            if told == "none":
                return None
            other = REASSURING if wanted == CONCERN else CONCERN
            way = CONTEXT if family in CONTEXT_FAMILIES else other if told == "wrong" else wanted
            return Phrase(lead.upper(), f"{family} led by {lead}", way, ["A1"], ["M1"])
        return answer

    def outcome(self, family: str, wanted: str) -> Answer:
        told = self.answers.get(family, "fact")
        if told == "missing":
            return "missing", self.prompt(family)
        return "none" if told == "wrong" else told

    def prompt(self, family: str) -> str:
        """The text of the family's prompt: its own unless ``texts`` gives it another."""
        return self.texts.get(family, f"No {family} measure yet")


@pytest.fixture
def stand(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stand]:
    s = Stand()
    for family in spec.FAMILIES:
        monkeypatch.setitem(ALL_PHRASERS, family, s.phraser(family))
    yield s


def expected_places(values: Mapping[str, float], limits: Limits, stand: Stand,
                    expected: float = -1.0) -> dict[str, list[str]]:
    fam = family_values(values)
    raw = expected + sum(values.values())
    start, risk = (float(risk_of(np.array([x]))[0]) for x in (expected, raw))
    return select(fam, start, risk, limits, stand.outcome)


# Every family the model moved by at least a hundredth of a point.
EVERYTHING = Limits(max_reasons=10, min_share=0.0, min_points=0.01)


def test_families_are_ranked_by_size_with_ties_on_the_family_code(stand: Stand,
                                                                  rich: Any) -> None:
    """Guards ranking: largest first, equal families in code order, each worded by the
    member pushing hardest the way the family moved the risk, asked the right way."""
    values = {
        "consecutive_misses": 0.9, "days_since_attended": -0.2,  # disengagement 0.7
        "srs_change": 0.5, "missed_28d": 0.5, "wai_client_task": 0.5,
        "wai_client_bond": -0.3, "srs_relationship_latest": 0.1,  # weak_bond -0.2
        "days_in_treatment": -0.3, "telehealth_share_90d": 0.3,
    }
    e = explain_one(rich, values, Limits(max_reasons=3, min_share=0.0, min_points=0.5))
    assert [r.code for r in e.reasons] == [
        "disengagement.CONSECUTIVE_MISSES", "alliance_rupture.SRS_CHANGE",
        "goal_task_disagreement.WAI_CLIENT_TASK",
    ]
    assert [r.code for r in e.protective] == ["weak_bond.WAI_CLIENT_BOND"]
    assert [r.code for r in e.context] == ["early_treatment.DAYS_IN_TREATMENT",
                                           "setting.TELEHEALTH_SHARE_90D"]
    assert [r.log_odds for r in e.reasons] == [0.7, 0.5, 0.5]
    asked = {family: wanted for family, _, wanted in stand.asked}
    assert asked["disengagement"] == CONCERN and asked["weak_bond"] == REASSURING
    # The fourth family raising the risk found no slot, so its phraser was not asked.
    assert "inconsistent_engagement" not in asked


def test_at_most_max_reasons_of_each_kind_and_a_left_out_family_takes_no_slot(
    stand: Stand, rich: Any,
) -> None:
    """Guards: at most ``max_reasons`` reasons, as many going well, as many context and as
    many prompts; a family left out does not use up a slot, the next one takes it."""
    values = {"missed_28d": 1.6, "consecutive_misses": 1.5, "srs_latest": 1.4,
              "wai_client_bond": 1.3, "wai_client_goal": -1.2, "wai_rater_gap": -1.1,
              "days_in_treatment": 1.0, "program": -0.9}
    two = Limits(max_reasons=2, min_share=0.0, min_points=0.0)
    e = explain_one(rich, values, two)
    assert placed(e) == {"reasons": ["inconsistent_engagement", "disengagement"],
                         "protective": ["goal_task_disagreement", "rater_gap"],
                         "context": ["early_treatment", "setting"], "prompts": [],
                         "left_out": []}
    stand.answers["inconsistent_engagement"] = "none"
    e = explain_one(rich, values, two)
    assert placed(e)["reasons"] == ["disengagement", "alliance_rupture"]
    assert placed(e)["left_out"] == ["inconsistent_engagement"]
    stand.answers.update({f: "missing" for f in ("disengagement", "alliance_rupture",
                                                 "weak_bond", "goal_task_disagreement")})
    e = explain_one(rich, values, two)
    assert placed(e)["prompts"] == ["disengagement", "alliance_rupture"]
    assert placed(e)["reasons"] == [] and placed(e)["protective"] == ["rater_gap"]
    assert placed(e) == expected_places(values, two, stand)


def test_a_family_under_the_floor_is_not_shown(stand: Stand, rich: Any) -> None:
    """Guards the floor: a family is shown only with at least ``min_points`` and at least
    ``min_share`` of the movement from the start; under it, its phraser is not even asked."""
    values = {"missed_28d": 2.0, "srs_latest": 0.3, "wai_client_bond": 0.06,
              "days_in_treatment": -0.2, "wai_rater_gap": 0.005}
    e = explain_one(rich, values, EVERYTHING)
    points = {r.family: r.percentage_points for r in (*e.reasons, *e.protective, *e.context)}
    # A movement of 40.3 points: 37.2, 5.6, 1.1, -3.7 and 0.1 of them.
    assert points == {"inconsistent_engagement": 37.2, "alliance_rupture": 5.6,
                      "weak_bond": 1.1, "early_treatment": -3.7, "rater_gap": 0.1}
    by_points = placed(explain_one(rich, values, Limits(10, min_share=0.0, min_points=1.5)))
    assert (by_points["reasons"], by_points["context"]) == (
        ["inconsistent_engagement", "alliance_rupture"], ["early_treatment"])
    # A tenth of the movement is 4.03 points: stage of treatment's 3.7 are under it.
    by_share = Limits(10, min_share=0.1, min_points=0.0)
    stand.asked.clear()
    shared = placed(explain_one(rich, values, by_share))
    assert (shared["reasons"], shared["context"]) == (
        ["inconsistent_engagement", "alliance_rupture"], [])
    assert [family for family, _, _ in stand.asked] == ["inconsistent_engagement",
                                                        "alliance_rupture"]
    by_points = Limits(10, min_share=0.0, min_points=1.5)
    for lim in (EVERYTHING, by_points, by_share, Limits()):
        assert placed(explain_one(rich, values, lim)) == expected_places(values, lim, stand)


@pytest.mark.parametrize("lim", [EVERYTHING, Limits(), Limits(max_reasons=1),
                                 Limits(max_reasons=3, min_share=0.4, min_points=0.0),
                                 Limits(max_reasons=3, min_share=0.0, min_points=50.0)],
                         ids=["everything", "defaults", "one each", "0.4 of the movement",
                              "50 points"])
@pytest.mark.parametrize("expected", [-2.5, 0.4])
def test_points_add_up_to_the_risk(stand: Stand, rich: Any, lim: Limits,
                                   expected: float) -> None:
    """Guards: start + reasons + protective + context + other is the displayed risk, exactly
    before rounding and within a tenth per published number after; the start is the
    displayed risk of the expected score, each family's points its share by log-odds of
    the movement, whatever is shown."""
    values = {"missed_28d": 1.1, "consecutive_misses": 0.4, "srs_latest": -0.7,
              "wai_client_bond": 0.25, "wai_client_goal": -0.05, "wai_rater_gap": 0.6,
              "days_in_treatment": -0.35, "program": 0.15}
    stand.answers["rater_gap"] = "none"
    e = explain_one(rich, values, lim, expected=expected)
    raw = expected + sum(values.values())
    start, risk = (float(risk_of(np.array([x]))[0]) for x in (expected, raw))
    assert (e.start, e.risk, e.raw_score) == pytest.approx((start, risk, raw))
    movement = 100 * (risk - start)
    shown = [*e.reasons, *e.protective, *e.context]
    fam = family_values(values)
    for r in shown:
        points = movement * fam[r.family] / sum(values.values())
        assert r.percentage_points == pytest.approx(points, abs=0.05 + 1e-9), r.code
    assert 100 * e.start + sum(r.percentage_points for r in shown) + e.other_points == \
        pytest.approx(100 * e.risk, abs=1e-9)
    points = e.points()
    assert points_add_up(points) <= ROUNDING + 1e-9, points
    assert (points["start"], points["risk"]) == (round(100 * start, 1), round(100 * risk, 1))
    assert placed(e) == expected_places(values, lim, stand, expected)


def test_left_out_are_exactly_the_families_whose_phraser_returned_none(stand: Stand,
                                                                      rich: Any) -> None:
    """Guards: a family is left out (and counted) exactly when it was considered and its
    phraser returned None, or a fact pointing the other way; never one under the floor or
    past the cap, never a prompt, never a context family."""
    values = {"missed_28d": 1.5, "consecutive_misses": 1.2, "srs_latest": 0.9,
              "wai_client_bond": -0.8, "wai_client_goal": -0.7, "wai_rater_gap": 0.01,
              "days_in_treatment": 0.6}
    stand.answers.update({"inconsistent_engagement": "none", "weak_bond": "wrong",
                          "goal_task_disagreement": "missing", "rater_gap": "none"})
    e = explain_one(rich, values, Limits(max_reasons=3, min_share=0.0, min_points=1.0))
    assert e.left_out == ["inconsistent_engagement", "weak_bond"]
    assert placed(e)["reasons"] == ["disengagement", "alliance_rupture"]
    assert placed(e)["prompts"] == ["goal_task_disagreement"]
    assert placed(e)["protective"] == [] and placed(e)["context"] == ["early_treatment"]
    # rater_gap is under the floor: its None was never asked for, so it is not counted.
    assert "rater_gap" not in {family for family, _, _ in stand.asked}


def test_a_missing_measure_is_a_prompt_never_a_reason(rich: Any) -> None:
    """Guards, with the real phrasers: a client who never gave a session rating or a WAI-SR
    gets prompts to take them, whichever way the model moved the risk, and no reason,
    reassuring fact or left-out count for those families."""
    e = explain_one(rich, {"srs_latest": 1.0, "wai_rater_gap": -0.8, "wai_client_goal": 0.7},
                    episode_id="E2")
    assert [(p.code, p.family) for p in e.prompts] == [
        ("alliance_rupture.SRS_NONE", "alliance_rupture"),
        ("rater_gap.WAI_PAIR_NONE", "rater_gap"),
        ("goal_task_disagreement.WAI_NONE", "goal_task_disagreement"),
    ]
    assert e.prompts[0].text == (
        "No session rating (SRS) recorded yet: consider asking for one at the next session")
    assert e.reasons == e.protective == [] and e.left_out == []


def test_stage_and_setting_are_context_whichever_way_they_move(rich: Any) -> None:
    """Guards, with the real phrasers: the planned discharge and the program are listed as
    context, with the family's title and suggestion, never as a reason or going well."""
    for sign in (1, -1):
        e = explain_one(rich, {"days_to_planned_end": 1.2 * sign, "program": -0.9 * sign})
        assert e.reasons == e.protective == [] and e.left_out == []
        assert [(r.code, r.direction) for r in e.context] == [
            ("early_treatment.PLANNED_END", CONTEXT), ("setting.PROGRAM", CONTEXT)]
        assert [(r.title, r.suggestion) for r in e.context] == [
            ("title early_treatment", "suggest early_treatment"), ("title setting",
                                                                   "suggest setting")]


def test_titles_and_suggestions_follow_the_direction(rich: Any) -> None:
    """Guards, with the real phrasers: a concern carries the family's title and next step, a
    reassuring fact the family's reassuring title and no suggestion."""
    concern = explain_one(rich, {"missed_28d": 1.0})
    assert [(r.code, r.direction, r.title, r.suggestion) for r in concern.reasons] == [
        ("inconsistent_engagement.MISSED_SESSIONS", CONCERN, "title inconsistent_engagement",
         "suggest inconsistent_engagement")]
    good = explain_one(rich, {"attended_28d": -1.0}, episode_id="E3")
    assert [(r.code, r.direction, r.title, r.suggestion) for r in good.protective] == [
        ("inconsistent_engagement.ATTENDED_ALL", REASSURING, "good inconsistent_engagement", "")]


def test_a_family_whose_facts_point_the_other_way_is_left_out(rich: Any) -> None:
    """Guards, with the real phrasers: E3 kept all its sessions and E1 missed most, so the
    model raising E3's risk through attendance, or lowering E1's, lists nothing and counts
    the family as left out."""
    e3 = explain_one(rich, {"missed_28d": 1.0}, episode_id="E3")
    e1 = explain_one(rich, {"attended_28d": -1.0})
    for e in (e3, e1):
        assert e.reasons == e.protective == [] and e.left_out == ["inconsistent_engagement"]
        assert e.other_points == pytest.approx(100 * (e.risk - e.start), abs=1e-9)


def test_alliance_ratings_not_seen_alike_or_held_back_are_left_out(rich: Any) -> None:
    """Guards, with the real phrasers: the model lowering E7's risk through the rater gap
    (client 4.5 against therapist 3.8 of 5: not alike) or E8's through the therapist's bond
    of 4.0 (held back by the client's own 3.0) lists nothing going well and counts the
    family left out; E10's pair (4.1 against 3.8: alike) is going well, under the family's
    reassuring title."""
    for episode_id, values, family in (("E7", {"wai_rater_gap": -1.0}, "rater_gap"),
                                       ("E8", {"wai_therapist_bond": -1.0}, "weak_bond")):
        e = explain_one(rich, values, episode_id=episode_id)
        assert e.reasons == e.protective == e.prompts == [], episode_id
        assert e.left_out == [family], episode_id
    e10 = explain_one(rich, {"wai_rater_gap": -1.0}, episode_id="E10")
    assert [(r.code, r.direction, r.title, r.suggestion, r.text) for r in e10.protective] == [
        ("rater_gap.WAI_ALIKE", REASSURING, "good rater_gap", "",
         "Client rates the alliance 4.1 of 5 on the working alliance questionnaire (WAI-SR), "
         "the therapist 3.8 (9 Mar)")]
    assert e10.left_out == []


def test_a_family_the_model_did_not_move_is_never_listed(rich: Any) -> None:
    """Guards: with no floor at all, a family with no contribution is neither a reason, nor
    going well, nor context, nor a prompt, nor left out: the model did not move the risk
    through it (E2 took no measure, so its rating families would be prompts)."""
    no_floor = Limits(max_reasons=10, min_share=0.0, min_points=0.0)
    e = explain_one(rich, {"missed_28d": 1.0}, no_floor, episode_id="E3")
    assert placed(e) == {"reasons": [], "protective": [], "context": [], "prompts": [],
                         "left_out": ["inconsistent_engagement"]}
    # Members moving the family both ways by as much still move it by 0 in all.
    e2 = explain_one(rich, {"srs_latest": 0.8, "wai_client_bond": 0.5,
                            "srs_relationship_latest": -0.5}, no_floor, episode_id="E2")
    assert placed(e2) == {"reasons": [], "protective": [], "context": [],
                          "prompts": ["alliance_rupture"], "left_out": []}


def test_a_prompt_already_given_is_not_repeated(stand: Stand, rich: Any) -> None:
    """Guards: families prompting for the same measure in the same words give one prompt,
    the largest family's; the repeat takes no prompt slot and is not counted left out."""
    values = {"srs_latest": 1.5, "wai_client_bond": 1.2, "wai_client_goal": 0.9,
              "wai_rater_gap": 0.6}
    stand.answers.update(dict.fromkeys(("alliance_rupture", "weak_bond", "goal_task_disagreement",
                                        "rater_gap"), "missing"))
    stand.texts.update(dict.fromkeys(("alliance_rupture", "weak_bond"), "shared: no rating"))
    two = Limits(max_reasons=2, min_share=0.0, min_points=0.0)
    e = explain_one(rich, values, two)
    assert [(p.family, p.text) for p in e.prompts] == [
        ("alliance_rupture", "shared: no rating"),
        ("goal_task_disagreement", "No goal_task_disagreement measure yet")]
    assert e.left_out == [] and e.reasons == []
    assert placed(e) == expected_places(values, two, stand)


def test_a_measure_never_taken_is_asked_for_once(rich: Any) -> None:
    """Guards, with the real phrasers: E2 gave no session rating, so the session ratings and
    the bond (its SRS relationship item) would both ask for an SRS in the same words: it is
    asked for once; the WAI-SR is asked for apart."""
    e = explain_one(rich, {"srs_latest": 1.0, "srs_relationship_latest": 0.9,
                           "wai_client_goal": 0.8}, episode_id="E2")
    assert [(p.code, p.text) for p in e.prompts] == [
        ("alliance_rupture.SRS_NONE",
         "No session rating (SRS) recorded yet: consider asking for one at the next session"),
        ("goal_task_disagreement.WAI_NONE",
         "No client-rated working alliance questionnaire (WAI-SR) yet: consider one at a coming "
         "session"),
    ]
    assert e.reasons == e.protective == [] and e.left_out == []


def test_explanations_serialise_to_plain_json(rich: Any) -> None:
    """Guards: what a published row keeps of an explanation survives JSON unchanged, and a
    reason's dict is what ``asdict`` gives."""
    e = explain_one(rich, {"missed_28d": 1.2, "wai_client_bond": -0.4, "program": 0.5,
                           "wai_rater_gap": 0.6}, episode_id="E3")
    e2 = explain_one(rich, {"srs_latest": 1.0}, episode_id="E2")
    for x in (e, e2):
        payload = payload_of(x)
        assert json.loads(json.dumps(payload)) == payload
        for r in (*x.reasons, *x.protective, *x.context):
            assert r.to_dict() == asdict(r)
        assert [p.to_dict() for p in x.prompts] == [asdict(p) for p in x.prompts]
    assert payload_of(e2)["prompts"] and payload_of(e)["context"]


def test_reason_json_is_that_of_to_dict(scored: Scored) -> None:
    """Guards: on the scored clinic, every shown item's ``to_dict`` is its ``asdict``."""
    with scored.store.connect() as conn:
        features = read_features(conn, scored.as_of, scored.model.feature_names)
        data = read_scoped_copy(conn, scored.as_of)
    contributions = scored.model.contributions(features.iloc[:20])
    families = {f["name"]: f["family"] for f in scored.model.metadata["features"]}
    explained = explain_rows(data, features.iloc[:20], contributions, families,
                             scored.catalogue, scored.as_of, scored.model.calibrator.predict,
                             limits(scored.settings))
    shown = [r for e in explained.values() for r in [*e.reasons, *e.protective, *e.context]]
    assert shown
    assert all(json.dumps(r.to_dict()) == json.dumps(asdict(r)) for r in shown)
