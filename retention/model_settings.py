"""The ``[evaluation]`` settings: how a model is split, calibrated, judged and promoted.

Read from ``Settings.evaluation`` (the config file's ``[evaluation]`` section)
and checked once, so a bad tolerance fails at start rather than mid-training.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from retention.calibration import METHODS
from retention.config import ConfigError, Settings


@dataclass(frozen=True)
class ModelSettings:
    """Evaluation, promotion and drift settings with their defaults."""

    # Share of snapshot dates held out for evaluation (latest) and calibration (before it).
    evaluate_share: float = 0.2
    calibrate_share: float = 0.15
    # Platt by default: a clinic's calibration slice holds few dropouts, and isotonic
    # steps then put whole blocks of clients at exactly 0% or 100% risk.
    calibration_method: str = "platt"
    # A case manager's capacity: the top k episodes per clinic per snapshot date.
    capacity_k: int = 10
    # Bootstrap resamples of clients (clustered) for confidence intervals.
    bootstrap_samples: int = 200
    bootstrap_seed: int = 20260601
    # Subgroup metrics further than this from the whole population are flagged.
    fairness_tolerance: float = 0.05
    # Groups with fewer positives or negatives than this are reported, not judged.
    fairness_min_outcomes: int = 20
    # A candidate may be this much worse (AUROC, average precision) than the current model.
    promotion_tolerance: float = 0.01
    # Population stability index above which a feature or the score has drifted.
    drift_psi_threshold: float = 0.25
    # Below this many scored episodes PSI is mostly sampling noise (about 0.14 expected
    # for 75 rows over 11 bins with no drift at all): record it, flag nothing.
    drift_min_rows: int = 200
    # Cron for the weekly retrain job (minute hour day month weekday).
    retrain_cron: str = "0 4 * * 0"


def model_settings(settings: Settings) -> ModelSettings:
    """Parse and check the ``[evaluation]`` section."""
    raw: Mapping[str, Any] = settings.evaluation or {}
    known = {f.name for f in fields(ModelSettings)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) in [evaluation]: {', '.join(unknown)}")
    ms = ModelSettings(**raw)
    for name in ("evaluate_share", "calibrate_share"):
        if not 0 < getattr(ms, name) < 0.5:
            raise ConfigError(f"[evaluation] {name} must be between 0 and 0.5")
    if ms.calibration_method not in METHODS:
        raise ConfigError(f"[evaluation] calibration_method must be one of {METHODS}")
    if ms.capacity_k < 1 or ms.bootstrap_samples < 10:
        raise ConfigError("[evaluation] capacity_k must be >= 1 and bootstrap_samples >= 10")
    for name in ("fairness_tolerance", "promotion_tolerance"):
        if not 0 <= getattr(ms, name) < 1:
            raise ConfigError(f"[evaluation] {name} must be between 0 and 1")
    if ms.drift_psi_threshold <= 0:
        raise ConfigError("[evaluation] drift_psi_threshold must be positive")
    return ms
