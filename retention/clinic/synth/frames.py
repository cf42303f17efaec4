"""The simulation's rows as contract frames, and writing them to a clinic database."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from retention.clinic import contract
from retention.clinic.synth.config import EPOCH_ORDINAL
from retention.db import bulk


@dataclass
class Sink:
    """Rows of every table, as tuples in contract column order (ids resolved later)."""

    clients: list[tuple[Any, ...]] = field(default_factory=list)
    episodes: list[tuple[Any, ...]] = field(default_factory=list)
    appointments: list[tuple[Any, ...]] = field(default_factory=list)
    measures: list[tuple[Any, ...]] = field(default_factory=list)
    items: list[tuple[Any, ...]] = field(default_factory=list)
    consents: list[tuple[Any, ...]] = field(default_factory=list)
    identifiers: list[tuple[Any, ...]] = field(default_factory=list)
    contacts: list[tuple[Any, ...]] = field(default_factory=list)
    # ORS ratings and TAS totals, and the ORS items (item rows index ``outcome_measures``),
    # drawn from a stream apart: numbered after ``measures``, which keep their ids.
    outcome_measures: list[tuple[Any, ...]] = field(default_factory=list)
    outcome_items: list[tuple[Any, ...]] = field(default_factory=list)
    observations: list[tuple[Any, ...]] = field(default_factory=list)


def _columns(name: str) -> list[str]:
    return [column.name for column in contract.TABLES[name].columns]


def _timestamps(minutes: Sequence[int]) -> np.ndarray:
    return np.asarray(minutes, dtype="int64").astype("datetime64[m]").astype("datetime64[us]")


def _optional_timestamps(minutes: Sequence[int | None]) -> np.ndarray:
    """Minutes as timestamps, NaT where there are none."""
    stamps = _timestamps([0 if m is None else m for m in minutes])
    stamps[[m is None for m in minutes]] = np.datetime64("NaT")
    return stamps


def _dates(days: Sequence[int | None]) -> list[date | None]:
    return [None if d is None else date.fromordinal(d + EPOCH_ORDINAL) for d in days]


def to_frames(sink: Sink) -> dict[str, pd.DataFrame]:
    """Turn the row tuples into typed frames and resolve row indices into ids."""
    appt_width = max(8, len(str(len(sink.appointments))))
    appt_ids = [f"A{i:0{appt_width}d}" for i in range(1, len(sink.appointments) + 1)]
    all_measures = sink.measures + sink.outcome_measures
    all_items = sink.items + [(len(sink.measures) + m, n, v) for m, n, v in sink.outcome_items]
    measure_width = max(8, len(str(len(all_measures))))
    measure_ids = [f"M{i:0{measure_width}d}" for i in range(1, len(all_measures) + 1)]

    clients = pd.DataFrame(sink.clients, columns=_columns("clients"))
    clients["birth_year"] = clients["birth_year"].astype("int64")

    ep = list(zip(*sink.episodes, strict=True))
    episodes = pd.DataFrame(
        {
            "episode_id": list(ep[0]),
            "client_id": list(ep[1]),
            "program": list(ep[2]),
            "admitted_on": _dates(ep[3]),
            "planned_discharge_on": _dates(ep[4]),
            "discharged_on": _dates(ep[5]),
            "discharge_reason": list(ep[6]),
            "updated_at": _timestamps(ep[7]),
        }
    )

    ap = list(zip(*sink.appointments, strict=True)) or [()] * 9
    appointments = pd.DataFrame(
        {
            "appointment_id": appt_ids,
            "episode_id": list(ap[0]),
            "client_id": list(ap[1]),
            "scheduled_at": _timestamps(ap[2]),
            "booked_at": _timestamps(ap[3]),
            "status": list(ap[4]),
            "service_type": list(ap[5]),
            "telehealth": np.asarray(ap[6], dtype=bool),
            "clinician_id": list(ap[7]),
            "updated_at": _timestamps(ap[8]),
        }
    )

    ms = list(zip(*all_measures, strict=True)) or [()] * 11
    measures = pd.DataFrame(
        {
            "measure_id": measure_ids,
            "episode_id": list(ms[0]),
            "client_id": list(ms[1]),
            "appointment_id": [appt_ids[i] for i in ms[2]],
            "instrument": list(ms[3]),
            "rater": list(ms[4]),
            "administered_at": _timestamps(ms[5]),
            "score_total": np.asarray(ms[6], dtype="float64"),
            "goal": np.asarray(ms[7], dtype="float64"),
            "task": np.asarray(ms[8], dtype="float64"),
            "bond": np.asarray(ms[9], dtype="float64"),
            "updated_at": _timestamps(ms[10]),
        }
    )

    it = list(zip(*all_items, strict=True)) or [()] * 3
    items = pd.DataFrame(
        {
            "measure_id": [measure_ids[i] for i in it[0]],
            "item_number": np.asarray(it[1], dtype="int64"),
            "response": np.asarray(it[2], dtype="float64"),
        }
    )
    ob = list(zip(*sink.observations, strict=True)) or [()] * 10
    observation_width = max(8, len(str(len(sink.observations))))
    observations = pd.DataFrame(
        {
            "observation_id": [f"O{i:0{observation_width}d}"
                               for i in range(1, len(sink.observations) + 1)],
            "episode_id": list(ob[0]),
            "client_id": list(ob[1]),
            "appointment_id": [appt_ids[i] for i in ob[2]],
            "observed_at": _timestamps(ob[3]),
            "recorded_at": _optional_timestamps(ob[4]),
            "clinician_id": list(ob[5]),
            "signs": pd.Series(list(ob[6]), dtype=object),
            "rupture": np.asarray(ob[7], dtype=bool),
            "repair_steps": pd.Series(list(ob[8]), dtype=object),
            "updated_at": _timestamps(ob[9]),
        }
    )
    cs = list(zip(*sink.consents, strict=True)) or [()] * 7
    consent_width = max(8, len(str(len(sink.consents))))
    consents = pd.DataFrame(
        {
            "consent_id": [f"K{i:0{consent_width}d}" for i in range(1, len(sink.consents) + 1)],
            "client_id": list(cs[0]),
            "recipient": list(cs[1]),
            "purpose": list(cs[2]),
            "effective_on": _dates(cs[3]),
            "expires_on": _dates(cs[4]),
            "revoked_at": _optional_timestamps(cs[5]),
            "updated_at": _timestamps(cs[6]),
        }
    )
    ci = list(zip(*sink.identifiers, strict=True)) or [()] * 4
    identifiers = pd.DataFrame(
        {
            "system": list(ci[0]),
            "value": list(ci[1]),
            "client_id": list(ci[2]),
            "updated_at": _timestamps(ci[3]),
        }
    )
    cc = list(zip(*sink.contacts, strict=True)) or [()] * 9
    contacts = pd.DataFrame(
        {
            "client_id": list(cc[0]),
            "display_name": list(cc[1]),
            "preferred_name": list(cc[2]),
            "phone": list(cc[3]),
            "preferred_channel": list(cc[4]),
            # Yes, no or not known (None): kept as Python values, never read as no.
            "may_text": pd.Series(list(cc[5]), dtype=object),
            "may_call": pd.Series(list(cc[6]), dtype=object),
            "language": list(cc[7]),
            "updated_at": _timestamps(cc[8]),
        }
    )
    frames = {
        "clients": clients,
        "episodes": episodes,
        "appointments": appointments,
        "alliance_measures": measures,
        "alliance_items": items,
        "session_observations": observations,
        "consents": consents,
        "client_identifiers": identifiers,
        "client_contacts": contacts,
    }
    return {name: frame[_columns(name)] for name, frame in frames.items()}


def write(connection: sa.Connection, frames: Mapping[str, pd.DataFrame]) -> dict[str, int]:
    """Create the contract tables and insert ``frames``; the caller owns the transaction."""
    unknown = set(frames) - set(contract.TABLES)
    if unknown:
        raise ValueError(f"not contract tables: {sorted(unknown)}")
    contract.metadata.create_all(connection)
    counts: dict[str, int] = {}
    for name, table in contract.TABLES.items():
        if name not in frames:
            continue
        frame = frames[name]
        for chunk in bulk.record_chunks(table, frame[_columns(name)]):
            connection.execute(table.insert(), chunk)
        counts[name] = len(frame)
    return counts
