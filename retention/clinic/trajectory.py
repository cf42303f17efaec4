"""The course expected of a client's Outcome Rating Scale (ORS) from their intake rating, and
when a client is not on track.

The method is the expected recovery curve of Finch, Lambert & Schaalje (2001, Clinical
Psychology & Psychotherapy 8:231-242), the early-warning rule of Lambert's Outcome
Questionnaire system: the expected score is a log-linear function of the session number
whose slope depends on the intake score (a mixed linear model on the log of the session
number, fitted on 11,492 patients' OQ-45), with a tolerance band below it; a rating under
the band signals a client who is not on track. PCOMS does the same with the ORS: its
expected treatment response is the course of clients with the same intake ORS in a large
normative sample (Miller, Duncan, Sorrell & Brown 2005, Journal of Clinical Psychology
61:199-208; Duncan 2012, Canadian Psychology 53(2):93-104).

The coefficients of those normative curves are not published in full, so none is
written here: ``fit_trajectory`` fits the curve's parameters on the clinic's own ORS
history by least squares, as the published curves were derived from a normative sample,
and ``Trajectory.from_mapping`` reads them back from ``[instruments.ORS.trajectory]`` in
``config/instruments.toml`` with the source of the numbers beside them.

Sessions are numbered from the intake: session 1 is the intake rating, where the expected
score is the intake itself; the rating numbered n is the client's n-th ORS of the episode.

Sources checked for this module: the Finch et al. (2001) abstract (log-linear curves by
intake severity, tolerance intervals, sessions 1 to 20); Duncan (2012) (title, journal,
volume, pages); PCOMS software documentation (OpenFIT, "Expected Treatment Response"):
curves by intake ORS from a normative sample by hierarchical linear modelling, with a
line below which a negative outcome is signalled. The volume and pages of Finch et al.
and the bibliographic details of Miller et al. (2005) are as commonly cited and were not
checked against the papers here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import date
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from retention.clinic.data import ClinicData, as_timestamp
from retention.clinic.ids import member
from retention.clinic.instruments import ORS_ITEM_RANGE, ORS_ITEMS, ORS_RELIABLE_CHANGE
from retention.clinic.registry import Registry
from retention.settings import ConfigError

ORS = "ORS"
# The ORS total: four items of 0-10, summed (retention.clinic.instruments).
ORS_RANGE = (len(ORS_ITEMS) * ORS_ITEM_RANGE[0], len(ORS_ITEMS) * ORS_ITEM_RANGE[1])

METHOD = "log-linear recovery curve (Finch, Lambert & Schaalje 2001)"
# Finch et al. estimated the expected score for sessions 1 to 20: a later rating is
# judged against the course at session 20, not against an extrapolation of the curve.
LAST_SESSION = 20
# The share of the clinic's own later ratings the band leaves below it. This is the
# service's choice, not a published number: the published tolerance intervals' width is
# not given in the sources checked. A clinic may refit with another share.
TAIL = 0.10
# Fewer episodes with a rating after the intake than this give too noisy a curve.
MIN_EPISODES = 30
# The table of config/instruments.toml that holds the parameters.
TABLE = "instruments.ORS.trajectory"


def reliable_deterioration(intake: npt.ArrayLike, score: npt.ArrayLike,
                           reliable_change: float = ORS_RELIABLE_CHANGE) -> np.ndarray:
    """Whether each rating is ``reliable_change`` points or more below the intake: known
    with or without an expected course.

    Totals are recorded to a tenth: the fall is compared as recorded, so 19.9 to 14.9
    is a fall of 5, not of 4.999999999999998.
    """
    fall = np.round(np.asarray(intake, dtype=float) - np.asarray(score, dtype=float), 6)
    return fall >= reliable_change


class TrajectoryError(ValueError):
    """A trajectory's parameters are missing, malformed, or contradict the published curves."""


@dataclass(frozen=True)
class Trajectory:
    """The expected ORS course from the intake, and the band below it.

    The expected score at session s is ``intake + rate(intake) * ln(min(s, last_session))``
    within 0-40, with ``rate(intake) = rate_at_zero + rate_per_intake * intake``: more
    distressed clients (a lower intake) are expected to gain more, so ``rate_per_intake``
    is never positive. The lower line sits ``band`` residual spreads below it; one spread
    serves every session after the intake (the published curves have a tolerance interval
    per session: one spread keeps a clinic's fit stable on a modest history).
    """

    rate_at_zero: float  # change per unit of ln(session) for an intake of 0
    rate_per_intake: float  # how that change rate moves per point of intake
    spread: float  # residual standard deviation of a later rating about its expected score
    band: float  # how many spreads below the expected score the lower line sits
    source: str  # where the numbers came from
    method: str = METHOD
    last_session: int = LAST_SESSION
    reliable_change: float = ORS_RELIABLE_CHANGE  # the instrument's, in total points

    def __post_init__(self) -> None:
        numbers = {"rate_at_zero": self.rate_at_zero, "rate_per_intake": self.rate_per_intake,
                   "spread": self.spread, "band": self.band,
                   "reliable_change": self.reliable_change}
        bad = [name for name, value in numbers.items() if not math.isfinite(value)]
        if bad:
            raise TrajectoryError(f"trajectory {', '.join(bad)} must be finite numbers")
        if self.method != METHOD:
            raise TrajectoryError(f"trajectory method {self.method!r} is not known; "
                                  f"the one implemented is {METHOD!r}")
        if not self.source.strip():
            raise TrajectoryError("a trajectory needs the source of its numbers")
        if self.spread <= 0 or self.band < 0 or self.reliable_change <= 0:
            raise TrajectoryError("trajectory spread and reliable_change must be positive and "
                                  "band not negative")
        if self.last_session < 2:
            raise TrajectoryError("trajectory last_session must be 2 or more")
        if self.rate_per_intake > 0:
            raise TrajectoryError(
                f"trajectory rate_per_intake is {self.rate_per_intake:g}: a higher intake would "
                "be expected to gain more, against the published curves (more distressed "
                "clients gain more); fit on a larger history")

    def rate(self, intake: npt.ArrayLike) -> np.ndarray:
        """Expected change per unit of ln(session) for each intake."""
        return self.rate_at_zero + self.rate_per_intake * np.asarray(intake, dtype=float)

    def expected(self, intake: npt.ArrayLike, session: npt.ArrayLike) -> np.ndarray:
        """The expected ORS total at each session (1 = the intake rating) from each intake."""
        x = np.asarray(intake, dtype=float)
        return np.clip(x + self.rate(x) * self._log_session(session), *ORS_RANGE)

    def lower(self, intake: npt.ArrayLike, session: npt.ArrayLike) -> np.ndarray:
        """The lower line of the band: a rating under it is not on track."""
        return self.expected(intake, session) - self.band * self.spread

    def not_on_track(self, intake: npt.ArrayLike, session: npt.ArrayLike,
                     score: npt.ArrayLike) -> np.ndarray:
        """Whether each rating is below the lower line for its intake and session."""
        return np.asarray(score, dtype=float) < self.lower(intake, session)

    def reliable_deterioration(self, intake: npt.ArrayLike, score: npt.ArrayLike) -> np.ndarray:
        """Whether each rating is this instrument's reliable change or more below the intake."""
        return reliable_deterioration(intake, score, self.reliable_change)

    def _log_session(self, session: npt.ArrayLike) -> np.ndarray:
        s = np.asarray(session, dtype=float)
        if np.any(s < 1):
            raise ValueError("sessions are numbered from 1, the intake rating")
        return np.log(np.minimum(s, self.last_session))

    def to_mapping(self) -> dict[str, Any]:
        """The parameters as the ``[instruments.ORS.trajectory]`` table holds them: the
        curve and its band (the reliable change is the instrument's own, ``[instruments.ORS]
        reliable_change``)."""
        mapping = asdict(self)
        del mapping["reliable_change"]
        return mapping

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any],
                     reliable_change: float = ORS_RELIABLE_CHANGE) -> Trajectory:
        """Read the ``[instruments.ORS.trajectory]`` table, with the instrument's reliable
        change; a bad table is a clear error."""
        names = {f.name for f in fields(cls)} - {"reliable_change"}
        unknown = sorted(set(mapping) - names)
        lacking = [n for n in ("rate_at_zero", "rate_per_intake", "spread", "band", "source")
                   if n not in mapping]
        if unknown or lacking:
            raise TrajectoryError(f"[{TABLE}] "
                                  + (f"does not know {', '.join(unknown)}; " if unknown else "")
                                  + (f"lacks {', '.join(lacking)}" if lacking else ""))
        values: dict[str, Any] = {}
        for name, value in mapping.items():
            if name in ("method", "source"):
                if not isinstance(value, str):
                    raise TrajectoryError(f"[{TABLE}] {name} must be text, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise TrajectoryError(f"[{TABLE}] {name} must be a number, got {value!r}")
            elif name == "last_session" and value != int(value):
                raise TrajectoryError(f"[{TABLE}] last_session must be a whole number")
            values[name] = int(value) if name == "last_session" else value
        return cls(**values, reliable_change=reliable_change)


def trajectory_toml(trajectory: Trajectory) -> str:
    """The ``[instruments.ORS.trajectory]`` table as TOML, to paste into the config."""
    lines = [f"[{TABLE}]"]
    for name, value in trajectory.to_mapping().items():
        shown = json.dumps(value) if isinstance(value, str) else repr(value)
        lines.append(f"{name} = {shown}")
    return "\n".join(lines) + "\n"


# --- fitting on a clinic's own history ---------------------------------------------------


def session_numbers(rated: pd.DataFrame) -> pd.DataFrame:
    """Ratings frame (episode_id, session, score) of ORS rows in order within each episode:
    each rating's session is its position in the episode, 1 for the intake."""
    session = rated.groupby("episode_id", sort=False).cumcount() + 1
    return pd.DataFrame({"episode_id": rated["episode_id"].to_numpy(),
                         "session": session.to_numpy(dtype=np.int64),
                         "score": rated["score_total"].to_numpy(dtype=float)})


def fit_trajectory(ratings: pd.DataFrame, *, tail: float = TAIL,
                   last_session: int = LAST_SESSION, min_episodes: int = MIN_EPISODES,
                   about: str = "a clinic's ORS history") -> Trajectory:
    """Fit the curve on ``ratings`` (episode_id, session, score; session 1 = the intake).

    Least squares of each later rating's change from its intake on ln(session) and
    intake x ln(session) (the curve passes through the intake at session 1); the spread is
    the residual standard deviation and the band the number of spreads below the curve
    that leaves ``tail`` of the residuals under it.
    """
    if not 0 < tail < 0.5:
        raise TrajectoryError(f"tail must be between 0 and 0.5, got {tail}")
    r = ratings[["episode_id", "session", "score"]].dropna()
    intake = (r.loc[r["session"] == 1].drop_duplicates("episode_id")
              .set_index("episode_id")["score"].astype(float))
    later = r[(r["session"] >= 2) & member(r["episode_id"], intake.index)]
    episodes = later["episode_id"].nunique()
    if episodes < min_episodes:
        raise TrajectoryError(f"{episodes} episodes have an ORS after the intake; fitting the "
                              f"expected course needs at least {min_episodes}")
    x = intake.reindex(later["episode_id"].to_numpy()).to_numpy(dtype=float)
    t = np.log(np.minimum(later["session"].to_numpy(dtype=float), last_session))
    y = later["score"].to_numpy(dtype=float) - x
    design = np.column_stack([t, x * t])
    (rate_at_zero, rate_per_intake), *_ = np.linalg.lstsq(design, y, rcond=None)
    residuals = y - design @ np.array([rate_at_zero, rate_per_intake])
    spread = math.sqrt(float(residuals @ residuals) / (len(y) - 2))
    band = -float(np.quantile(residuals / spread, tail))
    return Trajectory(
        rate_at_zero=float(rate_at_zero), rate_per_intake=float(rate_per_intake),
        spread=spread, band=max(band, 0.0), last_session=last_session,
        source=(f"fitted on {len(y):,} later ratings of {episodes:,} episodes ({about}) by "
                f"`fit_trajectory`; band: the lowest {tail:.0%} of residuals"))


def fit_from_clinic(data: ClinicData, before: date, *, tail: float = TAIL,
                    min_episodes: int = MIN_EPISODES) -> Trajectory:
    """Fit the expected course on the clinic's client-rated ORS of episodes admitted before
    ``before``, from ratings administered before it (a backtest from ``before`` on sees
    no curve learnt from its own future)."""
    cutoff = as_timestamp(before)
    episodes = data.episodes
    admitted = episodes.loc[episodes["admitted_on"] < cutoff, "episode_id"]
    m = data.measures
    rated = m[(m["instrument"] == ORS) & (m["rater"] == "client") & m["score_total"].notna()
              & (m["administered_at"] < cutoff) & member(m["episode_id"], admitted)]
    rated = rated.sort_values(["episode_id", "administered_at", "measure_id"])
    return fit_trajectory(session_numbers(rated), tail=tail, min_episodes=min_episodes,
                          about=f"client-rated ORS before {before.isoformat()}, of episodes "
                          "admitted before it")


def configured_trajectory(registry: Registry) -> Trajectory | None:
    """The expected ORS course the registry holds (``[instruments.ORS.trajectory]``), or
    None when the clinic has not fitted one (or does not register the ORS)."""
    ors = registry.get(ORS)
    if ors is None or not ors.trajectory:
        return None
    reliable = ors.reliable_change if ors.reliable_change is not None else ORS_RELIABLE_CHANGE
    try:
        return Trajectory.from_mapping(ors.trajectory, reliable_change=reliable)
    except TrajectoryError as exc:
        raise ConfigError(f"{registry.path}: {exc}") from exc
