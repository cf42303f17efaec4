"""Map NIDA CTN-0027 (START) records from CTN-0094 onto the clinic data contract.

Outside the service's import path on purpose: this is one data set's mapping,
used to run the whole pipeline on real treatment data (benchmarks/ctn0094_run.py).

How the records become a clinic (see docs/model.md, "Real data"):

- **Who.** Participants randomised to a medication arm (1,269 of 1,920 consented);
  people who consented but were never randomised had no treatment episode.
- **Calendar.** Days in the files count from consent. Each participant's
  randomisation day is their admission; admissions are spread evenly over three
  years from 2020-01-06 in order of participant id (the real enrolment dates are
  not published, so this order is arbitrary and says nothing about time trends).
- **Scheduled days.** Two kinds of appointment:
  1. every dosing day is an attended ``medication`` visit (the clinic dispenses
     daily; there is no record of which non-dosing days were expected, so none is
     counted as missed and none is ``booked_at``, so doses never count as booked ahead);
  2. the protocol's weekly study visits WK0-WK24, scheduled on admission (``booked_at``
     = admission day) at admission + 7k days: ``attended`` when the visit file says
     ``visit``, a ``no_show`` otherwise (``MISSING``, ``no visit`` or no row).
     Slots after the discharge date are ``cancelled_by_clinic`` as of discharge,
     so a future slot's existence never depends on the outcome.
- **Discharge.** The last contact is the last dosing day or attended visit.
  Contact up to week 22 or later is ``completed`` (discharged the next day);
  otherwise ``dropped_out``, discharged 30 days after the last contact (a common
  administrative rule; the episode is open, and the client absent, until then).
- **No alliance measures** exist in this trial: those features are missing throughout.
- **Demographics** (fairness only): sex, age (as birth year), race and Hispanic ethnicity.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from pathlib import Path

import pandas as pd

FIRST_ADMISSION = date(2020, 1, 6)
ENROLMENT_DAYS = 3 * 365
WEEKS = 24
COMPLETED_FROM_DAY = 22 * 7
DROPOUT_DISCHARGE_AFTER = 30
CLINIC = "ctn0027"


def load_frames(folder: Path) -> dict[str, pd.DataFrame]:
    """The five contract tables built from the CTN-0027 files in ``folder``."""
    visits = pd.read_csv(folder / "visit.csv")
    doses = pd.read_csv(folder / "treatment.csv")
    rand = pd.read_csv(folder / "randomization.csv")
    demo = pd.read_csv(folder / "demographics.csv").set_index("who")

    start = rand[rand["which"] == 1].set_index("who")["when"].astype(int).sort_index()
    admitted = {who: FIRST_ADMISSION + timedelta(days=round(i * ENROLMENT_DAYS / len(start)))
                for i, who in enumerate(start.index)}

    def on(who: int, day: float) -> date:
        return admitted[who] + timedelta(days=int(day) - int(start[who]))

    doses = doses[doses["who"].isin(start.index)]
    doses = doses[doses["when"] >= doses["who"].map(start)]
    attended_weeks = visits[(visits["what"] == "visit") & visits["visit"].str.match(r"WK\d+$")]
    attended_weeks = attended_weeks.assign(week=attended_weeks["visit"].str[2:].astype(int))
    attended_weeks = attended_weeks[attended_weeks["week"] <= WEEKS]

    clients, episodes, appts = [], [], []
    dose_days = doses.groupby("who")["when"].apply(lambda s: sorted(set(s.astype(int))))
    visit_days = attended_weeks.groupby("who").apply(
        lambda g: dict(zip(g["week"], g["when"], strict=True)), include_groups=False)
    for who, first in start.items():
        admit = admitted[who]
        days = dose_days.get(who, [])
        weeks = visit_days.get(who, {})
        contacts = [*days, *[int(w) for w in weeks.values() if not pd.isna(w)]]
        last = max(contacts) if contacts else int(first)
        if last - first >= COMPLETED_FROM_DAY:
            discharged, reason = on(who, last) + timedelta(days=1), "completed"
        else:
            discharged = on(who, last) + timedelta(days=DROPOUT_DISCHARGE_AFTER)
            reason = "dropped_out"
        episode = f"e{who}"
        client = f"p{who}"
        row = demo.loc[who] if who in demo.index else None
        clients.append({
            "client_id": client, "clinic_id": CLINIC, "case_manager_id": None,
            "birth_year": _birth_year(row, admit),
            "sex": None if row is None or pd.isna(row["is_male"])
            else ("male" if row["is_male"] == "Yes" else "female"),
            "race_ethnicity": _race(row),
        })
        episodes.append({
            "episode_id": episode, "client_id": client, "program": "medication_assisted",
            "admitted_on": admit, "planned_discharge_on": admit + timedelta(weeks=WEEKS),
            "discharged_on": discharged, "discharge_reason": reason,
            "updated_at": datetime.combine(discharged, time(17)),
        })
        for day in days:
            at = datetime.combine(on(who, day), time(9))
            appts.append(_slot(f"d{who}-{day}", episode, client, at, None, "attended",
                               "medication", at + timedelta(hours=1)))
        booked = datetime.combine(admit, time(8))
        for week in range(WEEKS + 1):
            actual = weeks.get(week)
            if actual is not None and not pd.isna(actual):
                at = datetime.combine(on(who, actual), time(13))
                status, updated = "attended", at + timedelta(hours=1)
            else:
                at = datetime.combine(admit + timedelta(weeks=week), time(13))
                status, updated = "no_show", at + timedelta(hours=4)
            if at.date() >= discharged:
                status, updated = "cancelled_by_clinic", datetime.combine(discharged, time(17))
            appts.append(_slot(f"v{who}-{week}", episode, client, at, min(booked, at),
                               status, "individual", updated))
    empty_measures = pd.DataFrame(columns=[
        "measure_id", "episode_id", "client_id", "appointment_id", "instrument", "rater",
        "administered_at", "score_total", "goal", "task", "bond", "updated_at"])
    empty_items = pd.DataFrame(columns=["measure_id", "item_number", "response"])
    return {
        "clients": pd.DataFrame(clients),
        "episodes": pd.DataFrame(episodes),
        "appointments": pd.DataFrame(appts),
        "alliance_measures": empty_measures,
        "alliance_items": empty_items,
        # The trial's records hold no therapist's session notes.
        "session_observations": pd.DataFrame(columns=[
            "observation_id", "episode_id", "client_id", "appointment_id", "observed_at",
            "recorded_at", "clinician_id", "signs", "rupture", "repair_steps", "updated_at"]),
        # A research data set: no consents to disclose under, no EHR identifiers.
        "consents": pd.DataFrame(columns=[
            "consent_id", "client_id", "recipient", "purpose", "effective_on", "expires_on",
            "revoked_at", "updated_at"]),
        "client_identifiers": pd.DataFrame(columns=["system", "value", "client_id",
                                                    "updated_at"]),
        # Nor any way to reach a participant: no contact details.
        "client_contacts": pd.DataFrame(columns=[
            "client_id", "display_name", "preferred_name", "phone", "preferred_channel",
            "may_text", "may_call", "language", "updated_at"]),
    }


def _slot(appointment_id: str, episode: str, client: str, at: datetime,
          booked: datetime | None, status: str, service: str, updated: datetime) -> dict:
    return {"appointment_id": appointment_id, "episode_id": episode, "client_id": client,
            "scheduled_at": at, "booked_at": booked, "status": status, "service_type": service,
            "telehealth": False, "clinician_id": None, "updated_at": updated}


def _birth_year(row: pd.Series | None, admit: date) -> int | None:
    if row is None or pd.isna(row["age"]):
        return None
    return int(admit.year - row["age"])


def _race(row: pd.Series | None) -> str | None:
    if row is None:
        return None
    if row["is_hispanic"] == "Yes":
        return "hispanic"
    return None if pd.isna(row["race"]) else str(row["race"]).lower()
