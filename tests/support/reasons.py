"""Helpers the reasons and scoring tests share: the published list with the model's view of
the same features, what the scoring job reads, and small hand-built clinics."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import pandas as pd

from retention.clinic.data import ClinicData
from retention.features import FEATURE_NAMES
from retention.store.clinic_copy import read_clinic_copy
from retention.store.features import read_features
from retention.store.lists import count_scores, read_list
from tests.support.factories import ClinicBuilder, at

CANCELLED = ("cancelled_by_client", "cancelled_by_clinic")

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
        """(row, 'reasons' or 'protective', reason) for every published reason."""
        for row in self.rows:
            for kind in ("reasons", "protective"):
                for reason in row[kind]:
                    yield row, kind, reason

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


# --- wording on hand-built clinics ----------------------------------------------------------

AS_OF = date(2026, 3, 20)  # the as-of date of the hand-built clinics


def rich_clinic() -> ClinicBuilder:
    """E1 misses and cancels, E2 has just started, E3 attends but is past its planned end,
    E4 only cancels."""
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
    return b
