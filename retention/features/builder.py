"""The one feature builder, shared by training and scoring.

``build_features(data, as_of)`` returns a row per episode open at ``as_of``,
computed only from data dated before ``as_of``: slots scheduled, measures
administered and bookings made before that midnight.
"""

from __future__ import annotations

from datetime import date

import pandas as pd

from retention.clinic.data import ClinicData
from retention.features.alliance import (
    measurement_features,
    session_rating_features,
    working_alliance_features,
)
from retention.features.attendance import (
    attendance_features,
    disengagement_features,
    setting_features,
)
from retention.features.spec import CATEGORIES, FEATURE_NAMES, META_COLUMNS
from retention.features.treatment import open_episodes, program_feature, stage_features


def build_features(data: ClinicData, as_of: date) -> pd.DataFrame:
    """Features for every episode open at ``as_of``, with routing columns first.

    Columns: ``META_COLUMNS`` then ``FEATURE_NAMES`` in spec order; index is
    the episode id. Missing values (no SRS yet, nothing planned) stay NaN.
    """
    episodes = open_episodes(data.episodes, as_of)
    families = [
        attendance_features(episodes, data.appointments, as_of),
        disengagement_features(episodes, data.appointments, as_of),
        stage_features(episodes, as_of),
        program_feature(episodes, CATEGORIES["program"]),
        setting_features(episodes, data.appointments, as_of),
        session_rating_features(episodes, data.measures, data.items, as_of),
        working_alliance_features(episodes, data.measures, as_of),
        measurement_features(episodes, data.appointments, data.measures, as_of),
    ]
    features = pd.concat(families, axis=1)
    clients = data.clients.set_index("client_id")[["clinic_id", "case_manager_id"]]
    meta = episodes[["episode_id", "client_id"]].join(clients, on="client_id")
    frame = pd.concat([meta, features[list(FEATURE_NAMES)]], axis=1)
    frame = frame.sort_index()
    assert tuple(frame.columns) == META_COLUMNS + FEATURE_NAMES
    return frame
