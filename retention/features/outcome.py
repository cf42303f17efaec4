"""Outcome features from the client's Outcome Rating Scale (ORS) administered before ``as_of``:
where the client started, where they are now, and whether they are on the course expected
from their intake (``retention.clinic.trajectory``).

Clients whose outcome ratings fall off the expected course are the ones who end
treatment without benefit (Finch, Lambert & Schaalje 2001; Duncan 2012): the signal that
PCOMS and the OQ system raise with the clinician.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

from retention.clinic.ids import positions
from retention.clinic.trajectory import ORS, Trajectory, reliable_deterioration
from retention.features import spec
from retention.features.alliance import client_ratings, measures_before

NOT_ON_TRACK = spec.NOT_ON_TRACK
# The ORS features, as spec.py lists them (the one list of the model's inputs).
FEATURES: tuple[spec.FeatureSpec, ...] = tuple(
    f for f in spec.FEATURES if f.family == NOT_ON_TRACK)
FEATURE_NAMES = tuple(f.name for f in FEATURES)


def outcome_features(episodes: pd.DataFrame, measures: pd.DataFrame, as_of: date,
                     trajectory: Trajectory | None) -> pd.DataFrame:
    """The ORS features of each episode of ``episodes`` (index: episode id) at ``as_of``.

    The client's ORS with a total, administered before ``as_of``, in order: the n-th is
    the rating of session n, the first the intake. Everything but the count is missing
    without any ORS; the change and the course need a rating after the intake.

    Plain numpy over all episodes at once, as ``alliance.srs_course``.
    """
    rated = client_ratings(measures_before(measures, episodes.index, as_of), ORS)
    codes = positions(rated["episode_id"], episodes.index)
    # Stable: each episode's ratings keep their order (oldest first).
    order = np.argsort(codes, kind="stable")
    codes = codes[order]
    scores = rated["score_total"].to_numpy(dtype=float)[order]
    n = len(episodes.index)
    out = {name: np.full(n, np.nan) for name in FEATURE_NAMES}
    out["ors_sessions"] = np.zeros(n)
    if len(codes):
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        sizes = np.diff(np.r_[starts, len(codes)])
        owner = codes[starts]
        intake, latest = scores[starts], scores[starts + sizes - 1]
        sessions = sizes.astype(float)
        later = sizes >= 2
        out["ors_intake"][owner] = intake
        out["ors_latest"][owner] = latest
        out["ors_sessions"][owner] = sessions
        # Totals are recorded to a tenth: the change as recorded, not as summed.
        out["ors_change"][owner] = np.where(later, np.round(latest - intake, 6), np.nan)
        # Without an expected course (none fitted for this clinic yet) the course is
        # unknown, not on track.
        if trajectory is not None:
            out["ors_expected_gap"][owner] = np.where(
                later, latest - trajectory.expected(intake, sessions), np.nan)
            out["ors_not_on_track"][owner] = np.where(
                later, trajectory.not_on_track(intake, sessions, latest), np.nan)
        out["ors_reliable_deterioration"][owner] = np.where(
            later, reliable_deterioration(intake, latest), np.nan)
    return pd.DataFrame(out, index=episodes.index)
