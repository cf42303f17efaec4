"""The stage of the alliance: where a client's work with the clinic seems to be, read from
the data by a written rule -- a reading of the record, not a clinician's judgement.

Four stages: **engagement** (getting started: the first sessions and weeks, when the
alliance is formed), **exploration** (past those, but the client does not yet rate the
alliance as good), **working phase** (past those, and the client rates the alliance as
good) and **resolution** (the planned end of treatment is near). The rule, first match:

1. the episode has ended (discharged before ``as_of``): no stage;
2. **engagement**: fewer than ``ENGAGEMENT_SESSIONS`` (3) sessions attended in the last
   ``SESSION_WINDOW_DAYS`` (90) days -- since admission for a newer client; for a client
   seen less than that in three months the alliance is being formed again;
3. **resolution**: a planned discharge date within ``RESOLUTION_DAYS`` (28) days, or
   passed without a discharge;
4. **engagement**: still in the first ``ENGAGEMENT_DAYS`` (21) days of treatment;
5. the alliance, from the client's latest own rating before ``as_of`` (an SRS, or a
   WAI-SR if that is newer): **working phase** when it is established -- an SRS at or
   above the cutoff of 36, a WAI-SR item mean at or above the clinic's concern line
   (``working_alliance.concern_below``) -- **exploration** when it is not;
6. no client rating of the alliance at all: the data cannot tell exploration from the
   working phase, and the answer says so (``stage`` is None) rather than guess.

The numbers (3 sessions, 21 and 28 days) are this service's choices, not published
values, and are parameters. Therapist ratings and the group session rating (GSRS) are
not read: the alliance in question is the client's own view of the work with their
therapist. Only data known at ``as_of`` count: sessions held before it whose status
was recorded before it (``features.attendance.past_slots``), ratings given before it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

import pandas as pd

from retention.clinic.data import as_timestamp
from retention.clinic.instruments import SRS_CUTOFF, WAI_SR_N_ITEMS
from retention.features.attendance import past_slots

STAGES = ("engagement", "exploration", "working", "resolution")
STAGE_WORDS = {"engagement": "engagement", "exploration": "exploration",
               "working": "working phase", "resolution": "resolution"}
ENGAGEMENT_SESSIONS = 3
# Sessions are counted over the last 90 days: what the nightly run reads of appointments
# (``store.clinic_copy.read_scoped_copy``), so the list and the page agree.
SESSION_WINDOW_DAYS = 90
ENGAGEMENT_DAYS = 21
RESOLUTION_DAYS = 28
# The clinic's WAI-SR concern line (item mean) unless the caller passes its own.
WAI_ESTABLISHED_FROM = 3.0


@dataclass(frozen=True)
class StageFacts:
    """What the rule read: sessions attended, days since admission, the planned
    discharge, and the client's latest alliance rating."""

    attended: int
    days_in_treatment: int
    planned_discharge_on: date | None
    days_to_planned_discharge: int | None
    discharged_on: date | None
    rating: str | None  # "SRS" or "WAI-SR"
    rating_score: float | None  # the SRS total, or the WAI-SR item mean
    rating_on: date | None
    established: bool | None


@dataclass(frozen=True)
class AllianceStage:
    """The stage (one of ``STAGES``; None when the data cannot tell or the episode has
    ended) and the reason in words, with the facts behind it."""

    stage: str | None
    reason: str
    facts: StageFacts

    @property
    def words(self) -> str:
        return STAGE_WORDS[self.stage] if self.stage else "cannot tell"

    @property
    def because(self) -> str:
        """The reason without its leading stage ("2 sessions attended, ...")."""
        head, sep, rest = self.reason.partition(": ")
        return rest if sep and head in (*STAGE_WORDS.values(), "cannot tell") else self.reason


def _sessions(n: int) -> str:
    return f"{n} session{'' if n == 1 else 's'} attended in the last 3 months"


def _days(n: int) -> str:
    return f"{n} day{'' if n == 1 else 's'}"


def _span(days: int) -> str:
    """21 as "3 weeks", 20 as "20 days"."""
    return f"{days // 7} weeks" if days % 7 == 0 and days >= 14 else _days(days)


def latest_rating(measures: pd.DataFrame, as_of: date, *, srs_cutoff: float = SRS_CUTOFF,
                  wai_from: float = WAI_ESTABLISHED_FROM
                  ) -> tuple[str, float, date, bool] | None:
    """The client's newest SRS or WAI-SR before ``as_of``: (instrument, score, day,
    established); the WAI-SR as its item mean (total over 12)."""
    measures = measures.reset_index(drop=True)
    administered = pd.to_datetime(measures["administered_at"])
    keep = ((measures["rater"] == "client") & measures["score_total"].notna()
            & measures["instrument"].isin(["SRS", "WAI-SR"])
            & (administered < as_timestamp(as_of)))
    rated = measures.loc[keep].copy()
    rated["at"] = administered[keep]
    if rated.empty:
        return None
    last = rated.sort_values(["at", "measure_id"], kind="stable").iloc[-1]
    if last["instrument"] == "SRS":
        score = float(last["score_total"])
        return "SRS", score, last["at"].date(), score >= srs_cutoff
    mean = round(float(last["score_total"]) / WAI_SR_N_ITEMS, 1)  # compared as shown
    return "WAI-SR", mean, last["at"].date(), mean >= wai_from


def stage_of(attended: int, days_in_treatment: int, days_to_planned: int | None,
             established: bool | None, *, engagement_sessions: int = ENGAGEMENT_SESSIONS,
             engagement_days: int = ENGAGEMENT_DAYS,
             resolution_days: int = RESOLUTION_DAYS) -> str | None:
    """The stage of an open episode by rules 2-6 of the module's rule, from the facts it
    reads (``established``: the client's latest rating shows a good alliance; None: no
    rating). The page (``alliance_stage``) and the list's context reason share it."""
    if attended < engagement_sessions:
        return "engagement"
    if days_to_planned is not None and days_to_planned <= resolution_days:
        return "resolution"
    if days_in_treatment < engagement_days:
        return "engagement"
    if established is None:
        return None
    return "working" if established else "exploration"


def alliance_stage(episode: Mapping[str, Any], appointments: pd.DataFrame,
                   measures: pd.DataFrame, as_of: date, *, srs_cutoff: float = SRS_CUTOFF,
                   wai_from: float = WAI_ESTABLISHED_FROM,
                   engagement_sessions: int = ENGAGEMENT_SESSIONS,
                   engagement_days: int = ENGAGEMENT_DAYS,
                   resolution_days: int = RESOLUTION_DAYS) -> AllianceStage:
    """The stage of one episode at ``as_of`` by the module's rule. ``episode`` holds the
    contract's episode columns; ``appointments`` and ``measures`` that episode's rows."""
    admitted = pd.Timestamp(episode["admitted_on"]).date()
    planned = _day(episode.get("planned_discharge_on"))
    discharged = _day(episode.get("discharged_on"))
    appointments = appointments.reset_index(drop=True).assign(
        scheduled_at=lambda a: pd.to_datetime(a["scheduled_at"]),
        updated_at=lambda a: pd.to_datetime(a["updated_at"]))
    slots = past_slots(appointments, pd.Index([episode["episode_id"]]), as_of)
    attended = int(((slots["status"] == "attended")
                    & (slots["days_ago"] <= SESSION_WINDOW_DAYS)).sum())
    days = (as_of - admitted).days
    to_planned = (planned - as_of).days if planned else None
    rating = latest_rating(measures, as_of, srs_cutoff=srs_cutoff, wai_from=wai_from)
    facts = StageFacts(
        attended=attended, days_in_treatment=days, planned_discharge_on=planned,
        days_to_planned_discharge=to_planned, discharged_on=discharged,
        rating=rating[0] if rating else None, rating_score=rating[1] if rating else None,
        rating_on=rating[2] if rating else None, established=rating[3] if rating else None)
    day = f"{_days(days)} in treatment"
    if discharged is not None and discharged < as_of:
        return AllianceStage(None, f"the episode ended on {discharged:%d %b %Y}", facts)
    stage = stage_of(attended, days, to_planned, rating[3] if rating else None,
                     engagement_sessions=engagement_sessions,
                     engagement_days=engagement_days, resolution_days=resolution_days)
    if stage == "engagement" and attended < engagement_sessions:
        return AllianceStage("engagement", f"engagement: {_sessions(attended)}, {day}", facts)
    if stage == "resolution" and planned is not None and to_planned is not None:
        when = (f"planned discharge on {planned:%d %b %Y}, in {_days(to_planned)}"
                if to_planned > 0 else
                f"planned discharge today ({planned:%d %b %Y})" if to_planned == 0 else
                f"planned discharge was {planned:%d %b %Y}, {_days(-to_planned)} ago")
        return AllianceStage("resolution", f"resolution: {when}", facts)
    if stage == "engagement":
        return AllianceStage("engagement", f"engagement: {_sessions(attended)}, {day} "
                             f"(the first {_span(engagement_days)})", facts)
    if stage is None or rating is None:
        return AllianceStage(None, f"cannot tell: {_sessions(attended)}, {day}, but no "
                             "alliance rating by the client (SRS or WAI-SR) on file, so "
                             "exploration cannot be told from the working phase", facts)
    name, score, on, _ = rating
    line = srs_cutoff if name == "SRS" else wai_from
    shown = f"{score:g}" if name == "SRS" else f"{score:.1f}"
    measure = "session rating (SRS)" if name == "SRS" else "working alliance (WAI-SR) mean"
    if stage == "working":
        return AllianceStage("working", f"working phase: {_sessions(attended)}, latest "
                             f"{measure} {shown} on {on:%d %b}, at or above {line:g}", facts)
    return AllianceStage("exploration", f"exploration: {_sessions(attended)}, latest "
                         f"{measure} {shown} on {on:%d %b}, under {line:g}", facts)


def _day(value: object) -> date | None:
    if value is None or value is pd.NaT or (isinstance(value, float) and value != value):
        return None
    return pd.Timestamp(value).date()  # type: ignore[arg-type]
