"""A model version on disk: LightGBM text plus JSON, every file hashed, checked on load.

A model version is one folder under the models directory:

- ``model.txt``: the LightGBM booster in its own text format (never pickle),
- ``calibrator.json``: the map from raw log-odds to calibrated probability,
- ``evaluation.json``: the held-out evaluation with baselines and subgroups
  (written by the training job; optional for loading),
- ``metadata.json``: ordered features with kinds, categories, reason families,
  monotone constraints, training window, parameters, metrics, library
  versions and the SHA-256 of every other file.

``models/CURRENT`` names the version that scoring uses; ``retention.model.registry``
manages promotion and rollback.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import sklearn

from retention.features.spec import CATEGORIES, FEATURE_NAMES, FEATURES
from retention.model.booster import NUM_BOOST_ROUND, ModelError, TrainedModel, lgb_params
from retention.model.calibration import CalibrationError, Calibrator

MODEL_FILE = "model.txt"
CALIBRATOR_FILE = "calibrator.json"
EVALUATION_FILE = "evaluation.json"
METADATA_FILE = "metadata.json"
CURRENT_FILE = "CURRENT"



def calibrator_json(calibrator: Calibrator) -> str:
    """The calibrator's file content: canonical JSON, so its hash is stable."""
    return json.dumps(calibrator.to_dict(), indent=2, sort_keys=True)


def build_metadata(
    booster: lgb.Booster,
    calibrator: Calibrator,
    *,
    seed: int,
    horizon_days: int,
    trained_as_of: date,
    window: dict[str, str],
    metrics_by_split: dict[str, dict[str, float]],
    data_fingerprint: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything needed to reuse, audit and check a trained booster and calibrator.

    The version name hashes both files, so a new calibrator is a new version.
    """
    text = booster.model_to_string()
    cal_text = calibrator_json(calibrator)
    digest = hashlib.sha256(text.encode()).hexdigest()
    cal_digest = hashlib.sha256(cal_text.encode()).hexdigest()
    both = hashlib.sha256((digest + cal_digest).encode()).hexdigest()
    return {
        "version": f"{trained_as_of:%Y%m%d}-{both[:10]}",
        "task": f"disengagement within {horizon_days} days",
        "horizon_days": horizon_days,
        "trained_as_of": trained_as_of.isoformat(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "features": [
            {"name": f.name, "kind": f.kind, "family": f.family, "monotone": f.monotone,
             "description": f.description}
            for f in FEATURES
        ],
        "categories": {k: list(v) for k, v in CATEGORIES.items()},
        "params": lgb_params(seed),
        "num_boost_round": NUM_BOOST_ROUND,
        "window": window,
        "metrics": metrics_by_split,
        "data_fingerprint": data_fingerprint,
        "libraries": {
            "lightgbm": lgb.__version__,
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
            "pandas": pd.__version__,
            "python": platform.python_version(),
        },
        "calibration": {"method": calibrator.method, "rows": calibrator.n_rows_},
        **(extra or {}),
        "sha256": {MODEL_FILE: digest, CALIBRATOR_FILE: cal_digest},
    }


def save(
    model: TrainedModel, models_dir: Path, evaluation: dict[str, Any] | None = None
) -> Path:
    """Write a version folder; every hash in the metadata is of the exact bytes written."""
    folder = models_dir / model.version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MODEL_FILE).write_text(model.booster.model_to_string())
    (folder / CALIBRATOR_FILE).write_text(calibrator_json(model.calibrator))
    metadata = dict(model.metadata)
    if evaluation is not None:
        text = json.dumps(evaluation, indent=2, sort_keys=True, allow_nan=True)
        (folder / EVALUATION_FILE).write_text(text)
        metadata["sha256"] = {**metadata["sha256"],
                              EVALUATION_FILE: hashlib.sha256(text.encode()).hexdigest()}
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True))
    return folder


def set_current(models_dir: Path, version: str) -> None:
    """Point scoring at ``version`` (which must exist)."""
    if not (models_dir / version / MODEL_FILE).exists():
        raise ModelError(f"no model version {version!r} in {models_dir}")
    tmp = models_dir / (CURRENT_FILE + ".tmp")
    tmp.write_text(version + "\n")
    tmp.replace(models_dir / CURRENT_FILE)


def current_version(models_dir: Path) -> str:
    """The version scoring should use."""
    path = models_dir / CURRENT_FILE
    if not path.exists():
        trained = models_dir.is_dir() and any(
            (p / MODEL_FILE).exists() for p in models_dir.iterdir() if p.is_dir()
        )
        if trained:
            raise ModelError(
                f"no current model in {models_dir}: no trained version has passed the "
                "promotion gate; see `retention models list`, train on more history, or "
                "promote one deliberately with `retention models promote VERSION --force "
                "--reason ...`"
            )
        raise ModelError(
            f"no current model in {models_dir}: run `retention train` first"
        )
    return path.read_text().strip()


def load(models_dir: Path, version: str | None = None,
         expected_features: Sequence[str] = FEATURE_NAMES) -> TrainedModel:
    """Load a version after checking its hash and that its features match the ETL's.

    Refuses, with the reason, a model whose file was altered or whose feature
    list differs from what ``build_features`` produces.
    """
    version = version or current_version(models_dir)
    folder = models_dir / version
    metadata, contents = read_checked(folder, version)
    text = contents[MODEL_FILE]
    names = tuple(f["name"] for f in metadata["features"])
    if names != tuple(expected_features):
        extra = sorted(set(names) - set(expected_features))
        lacking = sorted(set(expected_features) - set(names))
        raise ModelError(
            f"model version {version!r} expects different features than the ETL produces "
            f"(model only: {extra or 'none'}; ETL only: {lacking or 'none'}; or a different "
            "order); retrain the model for this version of the service"
        )
    booster = lgb.Booster(model_str=text.decode())
    if tuple(booster.feature_name()) != names:
        raise ModelError(f"model version {version!r}: booster and metadata features differ")
    try:
        calibrator = Calibrator.from_dict(json.loads(contents[CALIBRATOR_FILE]))
    except (CalibrationError, json.JSONDecodeError) as exc:
        raise ModelError(f"model version {version!r}: calibrator unreadable: {exc}") from exc
    return TrainedModel(booster=booster, calibrator=calibrator, metadata=metadata)


def read_checked(folder: Path, version: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A version's metadata and the bytes of every file it hashes, each checked.

    The model and calibrator must be hashed; any other hashed file (the
    evaluation) must match too, so a report cannot be edited after the fact.
    """
    try:
        metadata = json.loads((folder / METADATA_FILE).read_text())
    except FileNotFoundError as exc:
        raise ModelError(
            f"model version {version!r} is incomplete: {exc.filename} is missing"
        ) from exc
    hashes = metadata.get("sha256", {})
    contents: dict[str, bytes] = {}
    for name in sorted({MODEL_FILE, CALIBRATOR_FILE, *hashes}):
        try:
            data = (folder / name).read_bytes()
        except FileNotFoundError as exc:
            raise ModelError(
                f"model version {version!r} is incomplete: {exc.filename} is missing"
            ) from exc
        if hashlib.sha256(data).hexdigest() != hashes.get(name):
            raise ModelError(
                f"model version {version!r} failed its integrity check: {name} does not "
                "match the hash in its metadata; retrain or restore the version"
            )
        contents[name] = data
    return metadata, contents


def fingerprint(frame: pd.DataFrame) -> str:
    """A stable hash of a training frame, to tell later which data a model saw."""
    hashed = pd.util.hash_pandas_object(frame.reset_index(drop=True), index=False)
    return hashlib.sha256(hashed.to_numpy().tobytes()).hexdigest()
