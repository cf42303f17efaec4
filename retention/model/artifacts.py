"""A model version on disk: LightGBM text plus JSON, signed, checked on every load.

A model version is one folder under the models directory:

- ``model.txt``: the LightGBM booster in its own text format (never pickle),
- ``calibrator.json``: the map from raw log-odds to calibrated probability,
- ``evaluated_model.txt`` and ``evaluated_calibrator.json``: the fit the evaluation
  judged, when the served model was refit on all the data after it
  (``retention.model.training``); what a later candidate is compared with,
- ``evaluation.json``: the held-out evaluation with baselines and subgroups
  (written by the training job; optional for loading),
- ``metadata.json``: ordered features with kinds, categories, reason families,
  monotone constraints, training window, parameters, metrics, library
  versions and the SHA-256 of every other file,
- ``gate.json``: the promotion gate's decision (``retention.model.registry``),
- ``signature.json``: the HMAC, with a key kept elsewhere, over every file above
  (``retention.model.signing``).

The version's name ends with a digest of the model and calibrator, and is checked
against them. ``models/CURRENT`` names the version that scoring uses; it is trusted
only as far as the signed ``history.jsonl`` agrees with it (``retention.model.registry``
manages promotion and rollback).
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
from retention.model.signing import (
    SigningError,
    SigningKey,
    read_journal,
    resolve_key,
    sign_version,
    verify_version,
)

MODEL_FILE = "model.txt"
CALIBRATOR_FILE = "calibrator.json"
EVALUATED_MODEL_FILE = "evaluated_model.txt"
EVALUATED_CALIBRATOR_FILE = "evaluated_calibrator.json"
EVALUATION_FILE = "evaluation.json"
METADATA_FILE = "metadata.json"
CURRENT_FILE = "CURRENT"
HISTORY_FILE = "history.jsonl"
# Journal actions that change CURRENT; the latest of them must name it.
MOVES = ("promote", "force-promote", "rollback")


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
    shape: dict[str, Any] | None = None,
    num_boost_round: int = NUM_BOOST_ROUND,
    evaluated: tuple[lgb.Booster, Calibrator] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything needed to reuse, audit and check a trained booster and calibrator.

    The version name hashes both files, so a new calibrator is a new version.
    ``evaluated`` is the judged fit of a model refit for serving; its files are hashed
    with the others.
    """
    text = booster.model_to_string()
    cal_text = calibrator_json(calibrator)
    digest = hashlib.sha256(text.encode()).hexdigest()
    cal_digest = hashlib.sha256(cal_text.encode()).hexdigest()
    hashes = {MODEL_FILE: digest, CALIBRATOR_FILE: cal_digest}
    if evaluated is not None:
        hashes |= {name: hashlib.sha256(data).hexdigest()
                   for name, data in _evaluated_files(*evaluated).items()}
    return {
        "version": version_name(trained_as_of.isoformat(), digest, cal_digest),
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
        "params": lgb_params(seed, shape),
        "num_boost_round": num_boost_round,
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
        "sha256": hashes,
    }


def _evaluated_files(booster: lgb.Booster, calibrator: Calibrator) -> dict[str, bytes]:
    return {EVALUATED_MODEL_FILE: booster.model_to_string().encode(),
            EVALUATED_CALIBRATOR_FILE: calibrator_json(calibrator).encode()}


def save(
    model: TrainedModel, models_dir: Path, evaluation: dict[str, Any] | None = None, *,
    key: SigningKey | None = None, signed_by: str = "retention train",
    reason: str = "trained",
) -> Path:
    """Write a version folder and sign it; every hash is of the exact bytes written.

    ``key`` defaults to the unconfigured default key (created if missing).
    """
    key = key or resolve_key(create=True)
    folder = models_dir / model.version
    folder.mkdir(parents=True, exist_ok=True)
    files = {MODEL_FILE: model.booster.model_to_string().encode(),
             CALIBRATOR_FILE: calibrator_json(model.calibrator).encode()}
    if model.evaluated is not None:
        files |= _evaluated_files(model.evaluated.booster, model.evaluated.calibrator)
    metadata = dict(model.metadata)
    if evaluation is not None:
        files[EVALUATION_FILE] = json.dumps(evaluation, indent=2, sort_keys=True,
                                            allow_nan=True).encode()
        metadata["sha256"] = {**metadata["sha256"],
                              EVALUATION_FILE: hashlib.sha256(files[EVALUATION_FILE]).hexdigest()}
    files[METADATA_FILE] = json.dumps(metadata, indent=2, sort_keys=True).encode()
    for stale in folder.iterdir():
        # A version saved again (training is deterministic): a gate decision on the
        # earlier evaluation judged other bytes, and goes with them.
        if stale.is_file() and stale.name not in files:
            stale.unlink()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    sign_version(folder, model.version, files, key, signed_by=signed_by, reason=reason)
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


def verified_current(models_dir: Path, key: SigningKey) -> str:
    """The version ``CURRENT`` names, once the signed history agrees that it is current.

    ``CURRENT`` is one line anyone who can write the folder could change; the
    history's chain of signed entries is not, so its latest promotion or rollback
    must name the same version.
    """
    version = current_version(models_dir)
    moves = [e for e in read_journal(models_dir / HISTORY_FILE, key)
             if e.get("action") in MOVES]
    if not moves:
        raise SigningError(
            f"{models_dir / CURRENT_FILE} names {version} but {models_dir / HISTORY_FILE} "
            "records no signed promotion: CURRENT was written by hand or the history is "
            f"missing. Promote the version deliberately: `retention models promote {version} "
            "--reason ...` (with --force if its gate refused it)")
    if moves[-1].get("version") != version:
        raise SigningError(
            f"{models_dir / CURRENT_FILE} names {version} but the signed history's latest "
            f"change made {moves[-1].get('version')} current: CURRENT was changed outside the "
            "registry. Promote the version you mean to serve with `retention models promote`")
    return version


def load(models_dir: Path, version: str | None = None,
         expected_features: Sequence[str] = FEATURE_NAMES, *,
         key: SigningKey | None = None, fit: str = "served") -> TrainedModel:
    """Load a version after checking its signature, hashes, name and features.

    Without ``version``, the current one, as far as the signed history agrees.
    ``fit="evaluated"`` loads the fit its evaluation judged (the same as the served
    one for versions trained before models were refit for serving).
    Refuses, with the reason and what to do, a version that is unsigned, altered,
    signed with another key, misnamed, or whose feature list differs from what
    ``build_features`` produces. ``key`` defaults to the unconfigured default key.
    """
    if version is None:
        current_version(models_dir)  # none at all: say that before anything about keys
    key = key or resolve_key()
    version = version or verified_current(models_dir, key)
    folder = models_dir / version
    metadata, contents = read_checked(folder, version, key=key)
    model_file, calibrator_file = MODEL_FILE, CALIBRATOR_FILE
    if fit == "evaluated" and EVALUATED_MODEL_FILE in contents:
        model_file, calibrator_file = EVALUATED_MODEL_FILE, EVALUATED_CALIBRATOR_FILE
    elif fit not in ("served", "evaluated"):
        raise ValueError(f"fit must be 'served' or 'evaluated', not {fit!r}")
    text = contents[model_file]
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
        calibrator = Calibrator.from_dict(json.loads(contents[calibrator_file]))
    except (CalibrationError, json.JSONDecodeError) as exc:
        raise ModelError(f"model version {version!r}: calibrator unreadable: {exc}") from exc
    return TrainedModel(booster=booster, calibrator=calibrator, metadata=metadata)


def read_checked(folder: Path, version: str, *,
                 key: SigningKey | None = None) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A version's metadata and the bytes of every file in its folder, each checked.

    The signature must verify over every file (``retention.model.signing``), and the
    version must agree with itself (``check_consistent``): a report, a gate decision
    or a model cannot be edited after the fact.
    """
    _, contents = verify_version(folder, version, key or resolve_key())
    return check_consistent(version, contents), contents


def check_consistent(version: str, contents: dict[str, bytes]) -> dict[str, Any]:
    """A version's metadata once its files agree with it; refuses what does not.

    The metadata must hash the model, the calibrator and every file it names, be
    for this version, and the name's date and digest must be those of its training
    date, model and calibrator (the name is how people, runs and lists refer to it).
    """
    what = f"model version {version!r} failed its integrity check"
    for name in (METADATA_FILE, MODEL_FILE, CALIBRATOR_FILE):
        if name not in contents:
            raise ModelError(f"model version {version!r} is incomplete: {name} is missing; "
                             "retrain it with `retention train`")
    try:
        metadata = json.loads(contents[METADATA_FILE])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{what}: {METADATA_FILE} is not JSON") from exc
    hashes = metadata.get("sha256", {})
    for name in sorted({MODEL_FILE, CALIBRATOR_FILE, *hashes}):
        if name not in contents:
            raise ModelError(f"model version {version!r} is incomplete: {name} is missing")
        if hashlib.sha256(contents[name]).hexdigest() != hashes.get(name):
            raise ModelError(f"{what}: {name} does not match the hash in its metadata; "
                             "retrain or restore the version")
    if metadata.get("version") != version:
        raise ModelError(f"{what}: {METADATA_FILE} describes version "
                         f"{metadata.get('version')!r}; restore the version under its own name")
    expected = version_name(metadata.get("trained_as_of", ""), hashes[MODEL_FILE],
                            hashes[CALIBRATOR_FILE])
    if version != expected:
        raise ModelError(f"{what}: its name does not match its model and calibrator (they make "
                         f"{expected!r}): a file was replaced and its hash rewritten. Retrain "
                         "the version")
    return dict(metadata)


def version_name(trained_as_of: str, model_sha256: str, calibrator_sha256: str) -> str:
    """A version's name: training date and a digest of its model and calibrator."""
    both = hashlib.sha256((model_sha256 + calibrator_sha256).encode()).hexdigest()
    return f"{trained_as_of.replace('-', '')}-{both[:10]}"


def fingerprint(frame: pd.DataFrame) -> str:
    """A stable hash of a training frame, to tell later which data a model saw."""
    hashed = pd.util.hash_pandas_object(frame.reset_index(drop=True), index=False)
    return hashlib.sha256(hashed.to_numpy().tobytes()).hexdigest()
