"""No data from the future: features at D equal those computed from the data as it stood at D.

The synthetic clinic is cut back to what its database held at midnight on D:
slots booked later do not exist, statuses recorded later are still
'scheduled', measures taken later (SRS, WAI-SR, ORS and any other instrument) do not
exist, therapists' notes written later do not exist, and episodes discharged on or
after D are still open. Every feature must come out the same, also when many of the
last fortnight's statuses were recorded late, future slots were booked on D or later,
and session notes about sessions before D were written on D or later.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import numpy as np
import pandas as pd
import pytest

from retention.clinic.data import ClinicData, as_timestamp, from_frames
from retention.clinic.registry import Registry, load_registry
from retention.clinic.synth import SynthConfig, generate
from retention.clinic.trajectory import fit_from_clinic, trajectory_toml
from retention.features import FEATURE_NAMES, build_features
from retention.settings import SHIPPED_INSTRUMENTS_FILE


def known_at(data: ClinicData, day: date) -> ClinicData:
    """The clinic's rows as they stood at midnight starting ``day``."""
    cutoff = as_timestamp(day)
    a = data.appointments
    exists = a["booked_at"].lt(cutoff) | (a["booked_at"].isna() & a["scheduled_at"].lt(cutoff))
    appts = a[exists].copy()
    later = appts["updated_at"] >= cutoff
    appts.loc[later, "status"] = "scheduled"
    appts.loc[later, "updated_at"] = appts.loc[later, "booked_at"]
    measures = data.measures[data.measures["administered_at"] < cutoff]
    items = data.items[data.items["measure_id"].isin(measures["measure_id"])]
    episodes = data.episodes[data.episodes["admitted_on"] < cutoff].copy()
    still_open = episodes["discharged_on"] >= cutoff
    episodes.loc[still_open, ["discharged_on", "discharge_reason"]] = None
    episodes["discharged_on"] = pd.to_datetime(episodes["discharged_on"])
    clients = data.clients[data.clients["client_id"].isin(episodes["client_id"])]
    notes = data.observations
    written = notes["recorded_at"].fillna(notes["observed_at"])
    notes = notes[(notes["observed_at"] < cutoff) & (written < cutoff)]
    return from_frames({
        "clients": clients, "episodes": episodes, "appointments": appts,
        "alliance_measures": measures, "alliance_items": items,
        "session_observations": notes,
    })


@pytest.fixture(scope="module")
def clinic() -> ClinicData:
    return from_frames(generate(SynthConfig(end=date(2026, 6, 1), n_clients=300, seed=5)))


@pytest.fixture(scope="module")
def registry(clinic: ClinicData, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """The shipped registry with an expected ORS course fitted on the clinic before the
    first date below, as `retention trajectory` fits one: the course features are then
    read too."""
    path = tmp_path_factory.mktemp("registry") / "instruments.toml"
    fitted = fit_from_clinic(clinic, date(2025, 9, 1))
    path.write_text(SHIPPED_INSTRUMENTS_FILE.read_text() + trajectory_toml(fitted))
    return load_registry(path)


DAYS = [date(2025, 9, 15), date(2026, 1, 5), date(2026, 4, 20)]


def recorded_late(data: ClinicData, day: date, seed: int = 0) -> ClinicData:
    """The clinic with half the statuses of the fortnight before ``day`` recorded on ``day``
    or later, and half the slots after ``day`` booked on ``day`` or later: what a busy
    clinic's database looks like the morning after."""
    cutoff = as_timestamp(day)
    rng = np.random.default_rng(seed)
    a = data.appointments.copy()
    late = rng.random(len(a)) < 0.5
    recent = (a["scheduled_at"] < cutoff) & (a["scheduled_at"] >= cutoff - pd.Timedelta(days=14))
    hours = pd.to_timedelta(rng.integers(0, 72, len(a)), unit="h")
    a.loc[recent & late, "updated_at"] = cutoff + hours[recent & late]
    ahead = (a["scheduled_at"] >= cutoff + pd.Timedelta(days=1)) & late
    booked = np.minimum(cutoff + hours, a["scheduled_at"] - pd.Timedelta(hours=1))
    a.loc[ahead, "booked_at"] = booked[ahead]
    a.loc[ahead, "updated_at"] = np.maximum(a.loc[ahead, "updated_at"], booked[ahead])
    return replace(data, appointments=a)


@pytest.mark.parametrize("day", DAYS)
def test_features_use_only_what_was_known_at_the_as_of_date(clinic: ClinicData, registry: Registry,
        day: date) -> None:
    full = build_features(clinic, day, registry)
    cut = build_features(known_at(clinic, day), day, registry)
    assert len(full) > 20
    pd.testing.assert_frame_equal(full, cut)


@pytest.mark.parametrize("day", DAYS)
def test_late_statuses_and_late_bookings_change_nothing(clinic: ClinicData, registry: Registry,
        day: date) -> None:
    """Guards the short windows, clinic cancellations, booking lead times and the share of
    sessions rated, where late records matter most: statuses recorded on or after the day
    read as unrecorded and bookings made on or after it do not exist."""
    late = recorded_late(clinic, day)
    full = build_features(late, day, registry)
    pd.testing.assert_frame_equal(full, build_features(known_at(late, day), day, registry))
    # The late records are real: some features differ from the clinic recorded on time.
    assert not full.equals(build_features(clinic, day, registry))


def notes_written_late(data: ClinicData, day: date, seed: int = 1) -> ClinicData:
    """The clinic with half the therapists' notes about the fortnight before ``day`` written
    on ``day`` or up to three days later: a note is known from when it is written, not
    from the session it describes."""
    cutoff = as_timestamp(day)
    rng = np.random.default_rng(seed)
    notes = data.observations.copy()
    recent = (notes["observed_at"] < cutoff) & (
        notes["observed_at"] >= cutoff - pd.Timedelta(days=14))
    late = recent & (rng.random(len(notes)) < 0.5)
    hours = pd.to_timedelta(rng.integers(0, 72, len(notes)), unit="h")
    notes.loc[late, "recorded_at"] = cutoff + hours[late]
    notes.loc[late, "updated_at"] = np.maximum(notes.loc[late, "updated_at"],
                                               cutoff + hours[late])
    return replace(data, observations=notes)


@pytest.mark.parametrize("day", DAYS)
def test_notes_written_after_the_day_change_nothing(clinic: ClinicData, registry: Registry,
        day: date) -> None:
    """Guards the therapist-observation features: a note about a session before the day,
    written on or after it, is not yet known."""
    late = notes_written_late(clinic, day)
    full = build_features(late, day, registry)
    pd.testing.assert_frame_equal(full, build_features(known_at(late, day), day, registry))
    # The late notes are real: some features differ from the notes written on time.
    assert not full.equals(build_features(clinic, day, registry))


@pytest.mark.parametrize("day", DAYS)
def test_every_feature_varies_so_the_checks_above_can_fail(clinic: ClinicData,
                                                           registry: Registry,
                                                           day: date) -> None:
    """Guards the leakage checks against passing vacuously: at every date each feature,
    the short windows, SRS course and measurement ones included, takes at least two
    values among the open episodes."""
    full = build_features(clinic, day, registry)
    constant = [name for name in FEATURE_NAMES if full[name].dropna().nunique() < 2]
    assert constant == []


def test_the_cut_really_removes_rows(clinic: ClinicData) -> None:
    """Guards the test above: the cut must differ from the full data."""
    cut = known_at(clinic, date(2026, 1, 5))
    assert len(cut.appointments) < len(clinic.appointments)
    assert len(cut.measures) < len(clinic.measures)
    assert len(cut.observations) < len(clinic.observations)
    for instrument in ("SRS", "WAI-SR", "ORS"):
        assert (cut.measures["instrument"] == instrument).sum() < (
            clinic.measures["instrument"] == instrument).sum()
