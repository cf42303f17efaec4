"""Helpers the reasons and scoring tests share: the published list with the model's view of
the same features, what the scoring job reads, instrument registries with an expected ORS
course, and small hand-built clinics."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd

from retention.clinic.data import ClinicData
from retention.clinic.registry import load_registry
from retention.clinic.trajectory import fit_from_clinic, trajectory_toml
from retention.features import FEATURE_NAMES
from retention.settings import SHIPPED_INSTRUMENTS_FILE
from retention.store.clinic_copy import read_clinic_copy
from retention.store.features import read_features
from retention.store.lists import count_scores, read_list
from tests.support.factories import ClinicBuilder, at

CANCELLED = ("cancelled_by_client", "cancelled_by_clinic")
# Where an explanation lists a family, and the way its fact must point to be listed there.
KINDS = ("reasons", "protective", "context")
HEADING = {"reasons": "concern", "protective": "reassuring", "context": "context"}

# --- the published list of the scored synthetic clinic --------------------------------------


@dataclass(frozen=True)
class Published:
    """The published list with the model's view of the same stored features."""

    rows: list[dict[str, Any]]
    features: pd.DataFrame
    contributions: pd.DataFrame
    raw: pd.Series
    families: dict[str, str]  # feature -> reason family, from the model metadata

    def members(self, family: str) -> list[str]:
        return [f for f, fam in self.families.items() if fam == family]

    def entries(self) -> Iterator[tuple[dict[str, Any], str, dict[str, Any]]]:
        """(row, kind, reason) for every published reason, kind one of ``KINDS``."""
        for row in self.rows:
            for kind in KINDS:
                for reason in row[kind]:
                    yield row, kind, reason

    def prompts(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """(row, prompt) for every published prompt to take a missing measure."""
        for row in self.rows:
            for prompt in row["prompts"]:
                yield row, prompt

    def family_log_odds(self, episode_id: str, family: str) -> float:
        """The family's summed contribution for the episode, from the model."""
        return float(self.contributions.loc[episode_id, self.members(family)]
                     .to_numpy(dtype=float).sum())

    def lead(self, episode_id: str, family: str, raises: bool) -> str:
        """The family's member that pushes hardest in the reason's direction."""
        values = self.contributions.loc[episode_id, self.members(family)].astype(float)
        return str(values.idxmax() if raises else values.idxmin())


def read_published(scored: Any) -> Published:
    """The whole published list of ``scored`` (a ``tests.conftest.Scored``), with the
    model's contributions and raw scores for the same stored features."""
    with scored.store.connect() as conn:
        rows = read_list(conn, scored.as_of, limit=100_000)
        n = count_scores(conn, scored.as_of)
        features = read_features(conn, scored.as_of, scored.model.feature_names)
    assert rows and len(rows) == n, "the whole list is read back"
    contributions = scored.model.contributions(features)
    raw = pd.Series(scored.model.raw_score(features), index=features.index)
    families = {f["name"]: f["family"] for f in scored.model.metadata["features"]}
    return Published(rows, features, contributions, raw, families)


def read_store_inputs(scored: Any) -> tuple[pd.DataFrame, ClinicData]:
    """What the scoring job reads: stored features and the store's copy of the clinic."""
    with scored.store.connect() as conn:
        features = read_features(conn, scored.as_of, FEATURE_NAMES)
        data = read_clinic_copy(conn)
    return features, data


# --- instrument registries with an expected ORS course ------------------------------------


def registry_with_course(data: ClinicData, before: date, path: Path) -> Path:
    """The shipped instrument registry with the ORS course fitted on ``data``'s ratings before
    ``before`` (``[instruments.ORS.trajectory]``), written to ``path`` and checked as the
    service reads it."""
    table = trajectory_toml(fit_from_clinic(data, before))
    path.write_text(SHIPPED_INSTRUMENTS_FILE.read_text() + "\n" + table)
    load_registry(path)
    return path


# Made up for the hand-built clinics, not published numbers: an ORS course (intake 15 is
# expected at 21.8 by the 5th rating, the on-track line 4.5 below; last_session left to its
# default), and two alliance forms of a clinic's own that the model reads, each with a cutoff,
# one better high and one better low.
MADE_UP_REGISTRY = """
[instruments.ORS.trajectory]
rate_at_zero = 8.0
rate_per_intake = -0.25
spread = 3.0
band = 1.5
source = "made up for tests, not fitted on any clinic"

[instruments.CHECKIN]
name = "Alliance check-in"
kind = "alliance"
raters = ["client"]
item_range = [1, 5]
total = "sum"
total_range = [4, 20]
higher_is = "better"
cutoff = { value = 14, meaning = "made up for tests, not a published cutoff" }
model_input = true
scored_from_items = false
source = "made up for tests"

[instruments.CHECKIN.items]
1 = "heard"
2 = "understood"
3 = "goals"
4 = "overall"

[instruments.STRAIN]
name = "Strain check"
kind = "alliance"
raters = ["client"]
item_range = [0, 4]
total = "sum"
total_range = [0, 16]
higher_is = "worse"
cutoff = { value = 8, meaning = "made up for tests, not a published cutoff" }
model_input = true
scored_from_items = false
source = "made up for tests"

[instruments.STRAIN.items]
1 = "tense"
2 = "unheard"
3 = "rushed"
4 = "stuck"
"""


def made_up_registry(path: Path) -> Path:
    """The shipped instrument registry with ``MADE_UP_REGISTRY``, written to ``path``."""
    path.write_text(SHIPPED_INSTRUMENTS_FILE.read_text() + MADE_UP_REGISTRY)
    load_registry(path)
    return path


# --- wording on hand-built clinics ----------------------------------------------------------

AS_OF = date(2026, 3, 20)  # the as-of date of the hand-built clinics


def rich_clinic() -> ClinicBuilder:
    """Clients between them calling for every wording variant, each way it can point.

    E1 misses and cancels, with falling session ratings; E2 has just started and has no
    ratings; E3 attends but is past its planned end; E4 only cancels; E5's WAI-SR have
    totals without subscales; E6 keeps nearly every session but rates them low, and
    rates the alliance well below the therapist (2.1 against 3.2 of 5); E7 rates the
    alliance well above the therapist (4.5 against 3.8 of 5: they do not see it alike); E8
    started 3 days ago, has attended nothing yet but has a session booked, is due to be
    discharged on the as-of date, and rates the alliance 3.0 of 5 (neither weak nor strong,
    which holds back the therapist's 4.0); E9 rated two sessions 30 and the latest 40; E10
    and the therapist see the alliance alike (4.1 against 3.8 of 5), the client's goal, task
    and bond all at or above 4, the therapist's goal and task 4.0 and bond 3.5.
    """
    b = ClinicBuilder()
    b.client("C1")
    b.episode("E1", "C1", "2026-01-05", program="intensive_outpatient",
              planned_discharge_on="2026-05-05")
    b.appointment("E1", at("2026-02-17"))
    b.appointment("E1", at("2026-02-24"), telehealth=True)
    b.appointment("E1", at("2026-03-03"), "no_show")
    b.appointment("E1", at("2026-03-10"), "no_show")
    b.appointment("E1", at("2026-03-13"), "late_cancel", service_type="group")
    b.appointment("E1", at("2026-03-17"), "cancelled_by_client")
    b.appointment("E1", at("2026-03-18"), "cancelled_by_clinic")
    b.appointment("E1", at("2026-03-24"), "attended", booked_at=at("2026-03-10"))
    # Booked, then cancelled before the as-of date: not booked ahead any more.
    b.appointment("E1", at("2026-03-22"), "cancelled_by_client", booked_at=at("2026-03-12"),
                  updated_at=at("2026-03-19"))
    b.srs("E1", at("2026-02-10", 11), [9, 9, 9, 9])
    b.srs("E1", at("2026-02-17", 11), [9, 9, 9, 9.5])
    b.srs("E1", at("2026-02-24", 11), [8, 7, 6.5, 7])
    b.srs("E1", at("2026-02-24", 12), [9, 9, 9, 9], instrument="GSRS")
    b.srs("E1", at("2026-03-13", 12), [8, 8, 8, 8], instrument="GSRS")
    b.wai("E1", at("2026-02-03", 11), "client", [3] * 12)  # superseded by the next two
    b.wai("E1", at("2026-02-04", 11), "therapist", [2] * 12)
    b.wai("E1", at("2026-02-17", 11), "client", [4, 4, 2, 5, 3, 5, 2, 5, 3, 4, 5, 4])
    b.wai("E1", at("2026-02-18", 11), "therapist", [4] * 12)
    b.client("C2")
    b.episode("E2", "C2", "2026-03-15", program="detox")
    b.client("C3")
    b.episode("E3", "C3", "2025-10-01", planned_discharge_on="2026-03-01")
    for day in ("2026-03-02", "2026-03-09", "2026-03-16"):
        b.appointment("E3", at(day))
    b.appointment("E3", at("2026-04-08"), "scheduled", booked_at=at("2026-03-01"))
    bare = b.srs("E3", at("2026-03-16", 11), [9, 9, 9, 9])
    b.rows["alliance_items"] = [i for i in b.rows["alliance_items"] if i["measure_id"] != bare]
    b.wai("E3", at("2026-03-16", 11), "client", [5] * 12)
    b.client("C4")
    b.episode("E4", "C4", "2026-02-01", planned_discharge_on="2026-03-21")
    b.appointment("E4", at("2026-03-03"))
    b.appointment("E4", at("2026-03-10"), "cancelled_by_client")
    b.appointment("E4", at("2026-03-17"), "cancelled_by_client")
    # A clinic that sends WAI-SR totals without subscales, and a therapist rating with neither.
    b.client("C5")
    b.episode("E5", "C5", "2026-01-05")
    b.appointment("E5", at("2026-03-16"))
    b.wai("E5", at("2026-03-16", 11), "client", [3] * 12)
    b.wai("E5", at("2026-03-16", 12), "therapist", [4] * 12)
    for row in b.rows["alliance_measures"]:
        if row["episode_id"] == "E5":
            row.update(goal=None, task=None, bond=None)
            if row["rater"] == "therapist":
                row.update(score_total=None)
    b.client("C6")
    b.episode("E6", "C6", "2026-01-05")
    for day in ("02-21", "02-24", "02-27", "03-02", "03-07", "03-09", "03-13", "03-16", "03-19"):
        b.appointment("E6", at(f"2026-{day}"))
    b.appointment("E6", at("2026-03-05"), "no_show")
    b.appointment("E6", at("2026-03-11"), service_type="group")
    b.appointment("E6", at("2026-03-23"), "scheduled", booked_at=at("2026-03-16"))
    b.srs("E6", at("2026-03-09", 11), [9, 9, 8.5, 8.5])
    b.srs("E6", at("2026-03-13", 11), [9, 9, 8.5, 8.5])
    b.srs("E6", at("2026-03-16", 11), [8.5, 8.5, 8.5, 8.5])
    b.srs("E6", at("2026-03-02", 12), [9, 9, 9, 9], instrument="GSRS")
    b.srs("E6", at("2026-03-11", 12), [9.5, 9.5, 9.5, 9.5], instrument="GSRS")
    b.wai("E6", at("2026-03-09", 11), "client", [2] * 11 + [3])  # item mean 2.1
    b.wai("E6", at("2026-03-09", 12), "therapist", [3] * 10 + [4, 4])  # item mean 3.2
    b.client("C7")
    b.episode("E7", "C7", "2026-02-02", program="medication_assisted")
    for day in ("2026-03-02", "2026-03-09", "2026-03-16"):
        b.appointment("E7", at(day))
    b.wai("E7", at("2026-03-09", 11), "client", [5, 4] * 6)  # item mean 4.5
    b.wai("E7", at("2026-03-09", 12), "therapist", [4] * 10 + [3, 3])  # item mean 3.8
    b.client("C8")
    b.episode("E8", "C8", "2026-03-17", planned_discharge_on="2026-03-20")
    b.appointment("E8", at("2026-03-18"), "cancelled_by_clinic")
    b.appointment("E8", at("2026-03-24"), "scheduled", booked_at=at("2026-03-17"))
    b.wai("E8", at("2026-03-18", 11), "client", [3] * 12)
    b.wai("E8", at("2026-03-18", 12), "therapist", [4] * 12)
    b.client("C9")
    b.episode("E9", "C9", "2026-01-05")
    for day in ("2026-03-03", "2026-03-10", "2026-03-17"):
        b.appointment("E9", at(day))
        b.srs("E9", at(day, 11), [10] * 4 if day.endswith("17") else [7.5] * 4)
    b.client("C10")
    b.episode("E10", "C10", "2026-02-02")
    for day in ("2026-03-02", "2026-03-09", "2026-03-16"):
        b.appointment("E10", at(day))
    # Goal is items 4, 6, 8, 11, task 1, 2, 10, 12 and bond 3, 5, 7, 9.
    b.wai("E10", at("2026-03-09", 11), "client", [4] * 11 + [5])  # item mean 4.1
    b.wai("E10", at("2026-03-09", 12), "therapist", [4, 4, 3, 4, 3] + [4] * 7)  # item mean 3.8
    return b


def weekly_ors(b: ClinicBuilder, episode_id: str, totals: list[float]) -> list[str]:
    """Client ORS totals, oldest first, weekly (daily past six) up to 19 Mar 2026."""
    step = 7 if len(totals) <= 6 else 1
    start = pd.Timestamp("2026-03-19") - pd.Timedelta(days=step * (len(totals) - 1))
    return [b.ors(episode_id, at((start + pd.Timedelta(days=step * i)).date().isoformat(), 11),
                  [total / 4] * 4) for i, total in enumerate(totals)]


def new_families_clinic() -> ClinicBuilder:
    """Clients between them calling for every variant of the ORS, the therapist's notes and
    the other alliance forms of ``MADE_UP_REGISTRY``, each way it can point (as of 20 Mar).

    ORS (its course as ``MADE_UP_REGISTRY`` draws it): R1 16 by the 5th rating from an intake
    of 15, under the on-track line of 17.3; R2 23 by the 6th, at or above the 22.6 expected;
    R3 26 by the 3rd, under the 26.2 expected but above the cutoff of 25; R4 fell 5 from 38;
    R5 fell 5 from 23 and is under the line; R6 has the intake alone; R7 ends 112 daily
    ratings at 10.5 from 15.5. Notes: N1 noted signs on two days, the later with a rupture
    not repaired; N2 a rupture repaired, then another with anger not; N3 three clear notes
    and an old rupture repaired; N4 every sign at four sessions, the last with a rupture
    repaired that day; N5 a recent rupture without signs, repaired on its note (and three
    sessions attended, none rated); N6 clear
    notes but an old rupture never repaired; N7 a note written only after the as-of date;
    N8 two notes of one session and a third, clear. Forms: F1 rates the check-in 10 (under
    14), F2 16; F3 rates strain 12 (over 8, higher is worse), F4 8.
    """
    b = ClinicBuilder()
    ors: dict[str, list[float]] = {"R1": [15, 16, 16, 17, 16], "R2": [15, 17, 19, 20, 21, 23],
                                   "R3": [24, 25, 26], "R4": [38, 33], "R5": [23, 18],
                                   "R6": [10], "R7": [15.5] + [14.5] * 110 + [10.5]}
    for episode_id, totals in ors.items():
        b.client(f"C{episode_id}")
        b.episode(episode_id, f"C{episode_id}", "2025-10-01")
        weekly_ors(b, episode_id, totals)
    for n in range(1, 9):
        b.client(f"CN{n}")
        b.episode(f"N{n}", f"CN{n}", "2025-11-03")
    b.observation("N1", at("2026-03-03"), "anger")
    b.observation("N1", at("2026-03-12"), "withdrawal frustration", rupture=True)
    b.observation("N2", at("2026-01-10"), rupture=True)
    b.observation("N2", at("2026-01-17"), repair_steps="acknowledged")
    b.observation("N2", at("2026-03-10"), "anger", rupture=True)
    for day in ("03-02", "03-09", "03-16"):
        b.observation("N3", at(f"2026-{day}"))
    b.observation("N3", at("2026-01-05"), "lack_of_trust", rupture=True)
    b.observation("N3", at("2026-01-12"), repair_steps="clarified acknowledged")
    every_sign = " ".join(("lack_of_trust", "communication_breakdown", "inconsistent_engagement",
                           "rejects_suggestions", "tasks_not_done", "frustration", "anger",
                           "withdrawal"))
    for day in ("02-24", "03-03", "03-10"):
        b.observation("N4", at(f"2026-{day}"), every_sign)
    b.observation("N4", at("2026-03-17"), every_sign, rupture=True)
    b.observation("N4", at("2026-03-17", 15), repair_steps="acknowledged clarified "
                  "took_responsibility revisited_goals_tasks monitored")
    b.observation("N5", at("2026-03-02"))
    b.observation("N5", at("2026-03-10"), rupture=True, repair_steps="acknowledged")
    for day in ("03-02", "03-10", "03-16"):  # past the first sessions, no rating of its own
        b.appointment("N5", at(f"2026-{day}", 9))
    b.observation("N6", at("2026-03-09"))
    b.observation("N6", at("2026-03-16"))
    b.observation("N6", at("2026-01-10"), rupture=True)
    b.observation("N7", at("2026-03-18"), "anger", rupture=True, recorded_at=at("2026-03-21"))
    b.appointment("N8", at("2026-03-12"), appointment_id="A-N8")
    b.observation("N8", at("2026-03-12"), appointment_id="A-N8")
    b.observation("N8", at("2026-03-12", 14), appointment_id="A-N8")
    b.observation("N8", at("2026-03-19"))
    forms = {"F1": ("CHECKIN", 10.0), "F2": ("CHECKIN", 16.0), "F3": ("STRAIN", 12.0),
             "F4": ("STRAIN", 8.0)}
    for episode_id, (code, total) in forms.items():
        b.client(f"C{episode_id}")
        b.episode(episode_id, f"C{episode_id}", "2026-01-05")
        b.measure(episode_id, at("2026-03-16", 11), code, total)
    return b
