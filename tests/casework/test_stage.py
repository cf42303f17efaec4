"""The stage of the alliance (``retention.casework.stage``): each stage at its boundaries,
the reason in words, "cannot tell" when the data cannot, and only what was known."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import pandas as pd

from retention.casework.stage import alliance_stage, latest_rating

AS_OF = date(2026, 6, 1)
EPISODE = "E1"
APPOINTMENT_COLUMNS = ["appointment_id", "episode_id", "client_id", "scheduled_at",
                       "booked_at", "status", "service_type", "telehealth", "clinician_id",
                       "updated_at"]
MEASURE_COLUMNS = ["measure_id", "episode_id", "client_id", "appointment_id", "instrument",
                   "rater", "administered_at", "score_total", "goal", "task", "bond",
                   "updated_at"]


def episode(admitted_on: str, planned: str | None = None,
            discharged: str | None = None) -> dict[str, Any]:
    return {"episode_id": EPISODE, "client_id": "C1", "program": "outpatient",
            "admitted_on": date.fromisoformat(admitted_on),
            "planned_discharge_on": date.fromisoformat(planned) if planned else None,
            "discharged_on": date.fromisoformat(discharged) if discharged else None}


def sessions(*days: str, status: str = "attended",
             updated_at: datetime | None = None) -> pd.DataFrame:
    return pd.DataFrame([{
        "appointment_id": f"A{n}-{status}", "episode_id": EPISODE, "client_id": "C1",
        "scheduled_at": datetime.fromisoformat(d).replace(hour=10), "booked_at": None,
        "status": status, "service_type": "individual", "telehealth": False,
        "clinician_id": "th-1",
        "updated_at": updated_at or datetime.fromisoformat(d).replace(hour=12)}
        for n, d in enumerate(days)], columns=APPOINTMENT_COLUMNS)


def rated(*rows: tuple[str, str, float], rater: str = "client") -> pd.DataFrame:
    """(instrument, ISO day, total) rows."""
    return pd.DataFrame([{
        "measure_id": f"M{n}", "episode_id": EPISODE, "client_id": "C1",
        "appointment_id": None, "instrument": instrument, "rater": rater,
        "administered_at": datetime.fromisoformat(d).replace(hour=11),
        "score_total": float(total), "goal": None, "task": None, "bond": None,
        "updated_at": datetime.fromisoformat(d).replace(hour=11)}
        for n, (instrument, d, total) in enumerate(rows)], columns=MEASURE_COLUMNS)


NO_RATINGS = rated()
WEEKLY = sessions("2026-04-06", "2026-04-13", "2026-04-20", "2026-04-27")


def test_engagement_while_fewer_than_three_sessions_attended() -> None:
    both = pd.concat([sessions("2026-05-18", "2026-05-25"),
                      sessions("2026-05-20", status="no_show")])
    stage = alliance_stage(episode("2026-05-11"), both, rated(("SRS", "2026-05-25", 39)),
                           AS_OF)
    assert stage.stage == "engagement"
    assert stage.reason == ("engagement: 2 sessions attended "
                            "in the last 3 months, 21 days in treatment")
    assert (stage.facts.attended, stage.facts.days_in_treatment) == (2, 21)
    # even with a planned discharge close by: the work has not started
    near = alliance_stage(episode("2026-05-11", planned="2026-06-05"), both, NO_RATINGS, AS_OF)
    assert near.stage == "engagement"


def test_engagement_in_the_first_three_weeks_even_with_three_sessions() -> None:
    three = sessions("2026-05-13", "2026-05-20", "2026-05-27")
    day20 = alliance_stage(episode("2026-05-12"), three, rated(("SRS", "2026-05-27", 39)),
                           AS_OF)
    assert day20.stage == "engagement"
    assert day20.reason == ("engagement: 3 sessions attended "
                            "in the last 3 months, 20 days in treatment "
                            "(the first 3 weeks)")
    day21 = alliance_stage(episode("2026-05-11"), three, rated(("SRS", "2026-05-27", 39)),
                           AS_OF)
    assert day21.stage == "working"


def test_working_phase_and_exploration_by_the_latest_client_rating() -> None:
    good = alliance_stage(episode("2026-04-01"), WEEKLY,
                          rated(("SRS", "2026-04-20", 30), ("SRS", "2026-04-27", 36)), AS_OF)
    assert good.stage == "working" and good.words == "working phase"
    assert good.reason == ("working phase: 4 sessions attended "
                           "in the last 3 months, latest session rating (SRS) "
                           "36 on 27 Apr, at or above 36")
    low = alliance_stage(episode("2026-04-01"), WEEKLY,
                         rated(("SRS", "2026-04-20", 38), ("SRS", "2026-04-27", 35.5)), AS_OF)
    assert low.stage == "exploration"
    assert low.reason == ("exploration: 4 sessions attended "
                          "in the last 3 months, latest session rating (SRS) "
                          "35.5 on 27 Apr, under 36")
    # a newer WAI-SR decides: a mean of 2.9 (35/12) is under the concern line of 3
    wai = alliance_stage(episode("2026-04-01"), WEEKLY,
                         rated(("SRS", "2026-04-20", 38), ("WAI-SR", "2026-04-27", 35)), AS_OF)
    assert wai.stage == "exploration" and wai.facts.rating_score == 2.9
    assert "working alliance (WAI-SR) mean 2.9 on 27 Apr, under 3" in wai.reason
    at_line = alliance_stage(episode("2026-04-01"), WEEKLY,
                             rated(("WAI-SR", "2026-04-27", 36)), AS_OF)
    assert at_line.stage == "working" and at_line.facts.rating_score == 3.0
    # the clinic's own line may be stricter
    strict = alliance_stage(episode("2026-04-01"), WEEKLY, rated(("WAI-SR", "2026-04-27", 36)),
                            AS_OF, wai_from=4.0)
    assert strict.stage == "exploration"


def test_therapist_and_group_ratings_do_not_count_and_none_means_cannot_tell() -> None:
    others = pd.concat([rated(("SRS", "2026-04-27", 40), rater="therapist"),
                        rated(("GSRS", "2026-04-27", 40))])
    stage = alliance_stage(episode("2026-04-01"), WEEKLY, others, AS_OF)
    assert stage.stage is None and stage.words == "cannot tell"
    assert stage.reason == ("cannot tell: 4 sessions attended "
                            "in the last 3 months, 61 days in treatment, but no "
                            "alliance rating by the client (SRS or WAI-SR) on file, so "
                            "exploration cannot be told from the working phase")
    assert stage.facts.established is None


def test_resolution_within_four_weeks_of_the_planned_discharge() -> None:
    good = rated(("SRS", "2026-04-27", 39))
    inside = alliance_stage(episode("2026-04-01", planned="2026-06-29"), WEEKLY, good, AS_OF)
    assert inside.stage == "resolution"
    assert inside.reason == "resolution: planned discharge on 29 Jun 2026, in 28 days"
    assert inside.facts.days_to_planned_discharge == 28
    outside = alliance_stage(episode("2026-04-01", planned="2026-06-30"), WEEKLY, good, AS_OF)
    assert outside.stage == "working"
    passed = alliance_stage(episode("2026-04-01", planned="2026-05-31"), WEEKLY, good, AS_OF)
    assert passed.reason == "resolution: planned discharge was 31 May 2026, 1 day ago"
    today = alliance_stage(episode("2026-04-01", planned="2026-06-01"), WEEKLY, good, AS_OF)
    assert today.reason == "resolution: planned discharge today (01 Jun 2026)"


def test_an_ended_episode_has_no_stage() -> None:
    stage = alliance_stage(episode("2026-04-01", discharged="2026-05-20"), WEEKLY, NO_RATINGS,
                           AS_OF)
    assert stage.stage is None and stage.reason == "the episode ended on 20 May 2026"


def test_only_what_was_known_at_the_as_of_date() -> None:
    # a session recorded as attended on the as-of day was not known as attended then
    late = pd.concat([sessions("2026-04-06", "2026-04-13"),
                      sessions("2026-05-29", updated_at=datetime(2026, 6, 1, 8))])
    stage = alliance_stage(episode("2026-04-01"), late, NO_RATINGS, AS_OF)
    assert stage.stage == "engagement" and stage.facts.attended == 2
    assert alliance_stage(episode("2026-04-01"), late, NO_RATINGS,
                          AS_OF + timedelta(days=1)).facts.attended == 3
    # a rating given on the as-of day is not read
    ratings = rated(("SRS", "2026-04-27", 39), ("SRS", "2026-06-01", 20))
    assert latest_rating(ratings, AS_OF) == ("SRS", 39.0, date(2026, 4, 27), True)
    assert alliance_stage(episode("2026-04-01"), WEEKLY, ratings, AS_OF).stage == "working"


def test_the_list_context_names_the_stage_the_client_page_shows() -> None:
    """The list's stage-of-treatment context and the client page read one rule: on a
    synthetic clinic, every open episode's context sentence names the page's stage (or,
    when the page cannot tell, none), and every stage occurs."""
    from retention.clinic.data import from_frames
    from retention.clinic.synth import SynthConfig, generate
    from retention.features.treatment import open_episodes
    from retention.reasons.catalogue import load_catalogue
    from retention.reasons.history import histories
    from retention.reasons.phrases import CONCERN, STAGE_PHRASES, Phrase, phrase_early_treatment
    from retention.settings import SHIPPED_INSTRUMENTS_FILE

    as_of = date(2026, 3, 2)
    data = from_frames(generate(SynthConfig(end=date(2026, 4, 1), n_clients=400, seed=11)))
    t = load_catalogue(SHIPPED_INSTRUMENTS_FILE.parent / "reasons.toml").thresholds
    ids = list(open_episodes(data.episodes, as_of)["episode_id"])
    rows = histories(data, ids, as_of)
    seen = set()
    for eid in ids:
        page = alliance_stage(
            data.episodes.set_index("episode_id").loc[eid].to_dict() | {"episode_id": eid},
            data.appointments[data.appointments["episode_id"] == eid],
            data.measures[data.measures["episode_id"] == eid], as_of,
            wai_from=t.working_alliance.concern_below)
        phrase = phrase_early_treatment(rows[eid], "days_in_treatment", CONCERN, t)
        assert isinstance(phrase, Phrase)
        text = phrase.text
        if page.stage is None:
            assert phrase.variant == "STAGE", (eid, text)
        else:
            assert text.startswith(STAGE_PHRASES[page.stage].capitalize()), (eid, page, text)
            assert f"{page.facts.attended} session" in text
        seen.add(page.stage)
    assert seen >= {"engagement", "exploration", "working", "resolution"}


def test_sessions_count_over_the_last_three_months() -> None:
    """Ten sessions long ago and two in the last three months: being seen again, the
    alliance is formed again (engagement), as the nightly run, which reads three months of
    appointments, says too."""
    long_ago = [f"2025-{m:02d}-0{d}" for m in (9, 10) for d in range(1, 6)]
    stage = alliance_stage(episode("2025-08-01"), sessions(*long_ago, "2026-04-10", "2026-05-20"),
                           NO_RATINGS, AS_OF)
    assert stage.stage == "engagement"
    assert stage.reason.startswith("engagement: 2 sessions attended in the last 3 months")
