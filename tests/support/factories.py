"""Small, readable clinic data for tests: build rows by hand, get a ClinicData; or give a
clinic's clients other demographics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

import pandas as pd

from retention.clinic import contract
from retention.clinic.data import ClinicData, from_frames
from retention.clinic.instruments import WAI_SR_KEY

# A clinic's own form for the instrument registry (config/instruments.toml), made up for
# tests: three items 1-5, the second worded the other way round, its total the mean.
OWN_FORM = """
[instruments.CLINIC-X]
name = "Our check-in"
kind = "alliance"
raters = ["client"]
item_range = [1, 5]
reversed = [2]
total = "mean"
total_range = [1, 5]
higher_is = "better"
model_input = false
source = "the clinic's own form"

[instruments.CLINIC-X.items]
1 = "felt heard"
2 = "felt rushed"
3 = "worked on what matters"

[instruments.CLINIC-X.subscales]
bond = { items = [1, 2], score = "sum" }
"""


def at(day: str, hour: int = 10) -> datetime:
    """A timestamp on an ISO day, at ``hour`` o'clock."""
    return datetime.combine(date.fromisoformat(day), datetime.min.time()) + timedelta(hours=hour)


@dataclass
class ClinicBuilder:
    """Accumulates contract rows; ``build()`` returns them as ClinicData."""

    rows: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {name: [] for name in contract.TABLES}
    )
    _n: int = 0

    def _id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n:05d}"

    def client(self, client_id: str, clinic_id: str = "clinic-a", case_manager_id: str = "cm-1",
               **demographics: Any) -> str:
        self.rows["clients"].append({
            "client_id": client_id, "clinic_id": clinic_id, "case_manager_id": case_manager_id,
            "birth_year": demographics.get("birth_year", 1985),
            "sex": demographics.get("sex", "female"),
            "race_ethnicity": demographics.get("race_ethnicity"),
        })
        return client_id

    def episode(self, episode_id: str, client_id: str, admitted_on: str,
                program: str = "outpatient", planned_discharge_on: str | None = None,
                discharged_on: str | None = None, discharge_reason: str | None = None) -> str:
        self.rows["episodes"].append({
            "episode_id": episode_id, "client_id": client_id, "program": program,
            "admitted_on": date.fromisoformat(admitted_on),
            "planned_discharge_on": (date.fromisoformat(planned_discharge_on)
                                     if planned_discharge_on else None),
            "discharged_on": date.fromisoformat(discharged_on) if discharged_on else None,
            "discharge_reason": discharge_reason,
            "updated_at": at(discharged_on or admitted_on, 18),
        })
        return episode_id

    def appointment(self, episode_id: str, when: datetime, status: str = "attended",
                    service_type: str = "individual", telehealth: bool = False,
                    booked_at: datetime | None = None, updated_at: datetime | None = None,
                    appointment_id: str | None = None) -> str:
        appointment_id = appointment_id or self._id("A")
        self.rows["appointments"].append({
            "appointment_id": appointment_id, "episode_id": episode_id,
            "client_id": self._client_of(episode_id), "scheduled_at": when,
            "booked_at": booked_at if booked_at is not None else when - timedelta(days=7),
            "status": status, "service_type": service_type, "telehealth": telehealth,
            "clinician_id": "th-1",
            "updated_at": updated_at or (when + timedelta(hours=2) if status != "scheduled"
                                         else (booked_at or when - timedelta(days=7))),
        })
        return appointment_id

    def srs(self, episode_id: str, when: datetime, items: Sequence[float],
            instrument: str = "SRS", appointment_id: str | None = None) -> str:
        measure_id = self._id("M")
        self._measure(measure_id, episode_id, when, instrument, "client", appointment_id,
                      float(sum(items)), None)
        for n, response in enumerate(items, start=1):
            self.rows["alliance_items"].append(
                {"measure_id": measure_id, "item_number": n, "response": float(response)})
        return measure_id

    def ors(self, episode_id: str, when: datetime, items: Sequence[float],
            appointment_id: str | None = None, total: float | None = None) -> str:
        """A client's Outcome Rating Scale: four items 0-10, the total their sum (or
        ``total``, as an EHR might have recorded it)."""
        measure_id = self._id("M")
        self._measure(measure_id, episode_id, when, "ORS", "client", appointment_id,
                      float(sum(items)) if total is None else total, None)
        for n, response in enumerate(items, start=1):
            self.rows["alliance_items"].append(
                {"measure_id": measure_id, "item_number": n, "response": float(response)})
        return measure_id

    def measure(self, episode_id: str, when: datetime, instrument: str, total: float | None,
                rater: str = "client", items: Sequence[float] = ()) -> str:
        """A measure of any instrument (a registered one, or a clinic's own), its total
        as given and its items numbered from 1."""
        measure_id = self._id("M")
        self._measure(measure_id, episode_id, when, instrument, rater, None, total, None)
        for n, response in enumerate(items, start=1):
            self.rows["alliance_items"].append(
                {"measure_id": measure_id, "item_number": n, "response": float(response)})
        return measure_id

    def observation(self, episode_id: str, observed_at: datetime, signs: str | None = None,
                    rupture: bool = False, repair_steps: str | None = None,
                    recorded_at: datetime | None = None, appointment_id: str | None = None,
                    observation_id: str | None = None) -> str:
        """What the therapist noted after a session: signs (space-separated codes), a
        rupture, the repair steps taken; written at ``recorded_at`` (unknown: None)."""
        observation_id = observation_id or self._id("O")
        self.rows["session_observations"].append({
            "observation_id": observation_id, "episode_id": episode_id,
            "client_id": self._client_of(episode_id), "appointment_id": appointment_id,
            "observed_at": observed_at, "recorded_at": recorded_at, "clinician_id": "th-1",
            "signs": signs, "rupture": rupture, "repair_steps": repair_steps,
            "updated_at": recorded_at or observed_at})
        return observation_id

    def wai(self, episode_id: str, when: datetime, rater: str, items: Sequence[int]) -> str:
        measure_id = self._id("M")
        scales = {k: sum(items[i - 1] for i in key) / len(key) for k, key in WAI_SR_KEY.items()}
        self._measure(measure_id, episode_id, when, "WAI-SR", rater, None, float(sum(items)),
                      scales)
        for n, response in enumerate(items, start=1):
            self.rows["alliance_items"].append(
                {"measure_id": measure_id, "item_number": n, "response": float(response)})
        return measure_id

    def _measure(self, measure_id: str, episode_id: str, when: datetime, instrument: str,
                 rater: str, appointment_id: str | None, total: float | None,
                 scales: dict[str, float] | None) -> None:
        scales = scales or {}
        self.rows["alliance_measures"].append({
            "measure_id": measure_id, "episode_id": episode_id,
            "client_id": self._client_of(episode_id), "appointment_id": appointment_id,
            "instrument": instrument, "rater": rater, "administered_at": when,
            "score_total": total, "goal": scales.get("goal"), "task": scales.get("task"),
            "bond": scales.get("bond"), "updated_at": when,
        })

    def consent(self, client_id: str, recipient: str = "class:treating_providers",
                purpose: str = "treatment", effective_on: str = "2026-01-05",
                expires_on: str | None = None, revoked_at: datetime | None = None,
                consent_id: str | None = None) -> str:
        """A consent of ``client_id`` (42 CFR Part 2), last written when signed or revoked."""
        consent_id = consent_id or self._id("K")
        self.rows["consents"].append({
            "consent_id": consent_id, "client_id": client_id, "recipient": recipient,
            "purpose": purpose, "effective_on": date.fromisoformat(effective_on),
            "expires_on": date.fromisoformat(expires_on) if expires_on else None,
            "revoked_at": revoked_at, "updated_at": revoked_at or at(effective_on, 9),
        })
        return consent_id

    def identifier(self, client_id: str, value: str,
                   system: str = "urn:oid:2.16.840.1.113883.3.9999.1") -> tuple[str, str]:
        """An EHR's identifier (an MRN by default) for ``client_id``."""
        self.rows["client_identifiers"].append({
            "system": system, "value": value, "client_id": client_id,
            "updated_at": at("2026-01-05", 8)})
        return system, value

    def contact(self, client_id: str, display_name: str | None = "Test Client",
                phone: str | None = "(617) 555-0142", preferred_channel: str | None = "phone",
                may_text: bool | None = True, may_call: bool | None = True,
                language: str | None = "en", preferred_name: str | None = None) -> str:
        """How case managers reach ``client_id`` (made up: a fictional 555-01xx number)."""
        self.rows["client_contacts"].append({
            "client_id": client_id, "display_name": display_name,
            "preferred_name": preferred_name, "phone": phone,
            "preferred_channel": preferred_channel, "may_text": may_text,
            "may_call": may_call, "language": language, "updated_at": at("2026-01-05", 8)})
        return client_id

    def _client_of(self, episode_id: str) -> str:
        for e in self.rows["episodes"]:
            if e["episode_id"] == episode_id:
                return str(e["client_id"])
        raise KeyError(episode_id)

    def build(self) -> ClinicData:
        frames = {
            name: pd.DataFrame(rows, columns=[c.name for c in contract.TABLES[name].columns])
            for name, rows in self.rows.items()
        }
        return from_frames(frames)


def with_other_demographics(data: ClinicData) -> ClinicData:
    """Every client's sex, race/ethnicity and birth year changed to another value."""
    clients = data.clients.copy()
    for col in ("sex", "race_ethnicity"):
        values = sorted({str(v) for v in clients[col].dropna()} | {"unrecorded"})
        following = dict(zip(values, values[1:] + values[:1], strict=True))
        clients[col] = [following[str(v) if pd.notna(v) else "unrecorded"] for v in clients[col]]
    clients["birth_year"] = clients["birth_year"].fillna(1980).astype(int) - 23
    return replace(data, clients=clients)
