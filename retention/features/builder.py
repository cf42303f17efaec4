"""The one feature builder, shared by training and scoring.

``build_features(data, as_of)`` returns a row per episode open at ``as_of``,
computed only from data dated before ``as_of``: slots scheduled, measures
administered and bookings made before that midnight.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

import pandas as pd

from retention.clinic.data import ClinicData
from retention.clinic.registry import Registry, default_registry
from retention.clinic.trajectory import ORS, configured_trajectory
from retention.features.alliance import (
    measurement_features,
    registered_alliance_features,
    session_rating_features,
    working_alliance_features,
)
from retention.features.attendance import (
    attendance_features,
    disengagement_features,
    setting_features,
)
from retention.features.observations import observation_features
from retention.features.outcome import outcome_features
from retention.features.spec import CATEGORIES, FEATURE_NAMES, META_COLUMNS
from retention.features.treatment import open_episodes, program_feature, stage_features


def build_features(data: ClinicData, as_of: date,
                   registry: Registry | None = None) -> pd.DataFrame:
    """Features for every episode open at ``as_of``, with routing columns first.

    Columns: ``META_COLUMNS`` then ``FEATURE_NAMES`` in spec order; index is
    the episode id. Missing values (no SRS yet, nothing planned) stay NaN. ``registry``
    (the shipped ``config/instruments.toml`` by default) says which other alliance forms
    the model reads and holds the clinic's expected ORS course.
    """
    registry = registry or default_registry()
    episodes = open_episodes(data.episodes, as_of)
    # A form registered to be shown only is never read here.
    measures = data.measures
    if ORS not in registry.model_inputs:
        measures = measures[measures["instrument"] != ORS]
    families = [
        attendance_features(episodes, data.appointments, as_of),
        disengagement_features(episodes, data.appointments, as_of),
        stage_features(episodes, as_of),
        program_feature(episodes, CATEGORIES["program"]),
        setting_features(episodes, data.appointments, as_of),
        session_rating_features(episodes, data.measures, data.items, as_of),
        working_alliance_features(episodes, data.measures, as_of),
        measurement_features(episodes, data.appointments, data.measures, as_of),
        registered_alliance_features(episodes, data.measures, as_of, registry),
        outcome_features(episodes, measures, as_of, configured_trajectory(registry)),
        observation_features(episodes, data.observations, as_of),
    ]
    features = pd.concat(families, axis=1)
    clients = data.clients.set_index("client_id")[["clinic_id", "case_manager_id"]]
    meta = episodes[["episode_id", "client_id"]].join(clients, on="client_id")
    frame = pd.concat([meta, features[list(FEATURE_NAMES)]], axis=1)
    frame = frame.sort_index()
    assert tuple(frame.columns) == META_COLUMNS + FEATURE_NAMES
    return frame


def registry_facts(registry: Registry) -> dict[str, Any]:
    """What the features read of the instrument registry: the forms the model may read,
    their ranges and direction, and the expected ORS course.

    Recorded with a model at training and compared before scoring: features built from
    another registry would mean something else to the model (``check_registry``).
    """
    return {code: {"kind": form.kind, "total_range": list(form.total_range),
                   "higher_is": form.higher_is, "reliable_change": form.reliable_change,
                   "trajectory": dict(form.trajectory)}
            for code, form in registry.instruments.items() if form.model_input}


class RegistryMismatch(ValueError):
    """The model was trained on features read through another instrument registry."""


def check_registry(metadata: Mapping[str, Any], registry: Registry) -> None:
    """Refuse to score with a model trained under other registry facts (a form added to or
    taken from the model's inputs, a range changed, another expected ORS course)."""
    trained = metadata.get("instruments")
    if trained is None:
        return  # trained before models recorded them; their features read none of it
    now = registry_facts(registry)
    differ = sorted(code for code in set(trained) | set(now)
                    if trained.get(code) != now.get(code))
    if differ:
        raise RegistryMismatch(
            f"model version {metadata.get('version')} was trained with other registry facts "
            f"for {', '.join(differ)} than {registry.path} holds now: retrain "
            "(`retention train`) after changing the instrument registry, or restore the "
            "registry the model was trained with")
