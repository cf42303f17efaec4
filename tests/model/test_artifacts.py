"""Model versions on disk: text and JSON only, and refused on load when tampered with,
incomplete, for other features, or not past the gate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from retention.features import FEATURE_NAMES
from retention.model import artifacts
from retention.model.booster import ModelError
from tests.conftest import Scored


def copy_version(scored: Scored, tmp_path: Path) -> Path:
    folder = tmp_path / scored.model.version
    shutil.copytree(scored.settings.models_dir / scored.model.version, folder)
    return folder


def test_loading_refuses_a_tampered_model_file(scored: Scored, tmp_path: Path) -> None:
    folder = copy_version(scored, tmp_path)
    text = (folder / "model.txt").read_text()
    (folder / "model.txt").write_text(text.replace("shrinkage=0.05", "shrinkage=0.5", 1))
    with pytest.raises(ModelError, match="integrity check"):
        artifacts.load(tmp_path, scored.model.version)


def test_loading_refuses_a_feature_list_the_etl_does_not_produce(
    scored: Scored, tmp_path: Path
) -> None:
    copy_version(scored, tmp_path)
    with pytest.raises(ModelError, match="expects different features"):
        artifacts.load(tmp_path, scored.model.version, expected_features=FEATURE_NAMES[:-1])
    with pytest.raises(ModelError, match="expects different features"):
        artifacts.load(tmp_path, scored.model.version,
                      expected_features=tuple(reversed(FEATURE_NAMES)))


def test_loading_refuses_a_tampered_calibrator(scored: Scored, tmp_path: Path) -> None:
    folder = copy_version(scored, tmp_path)
    state = json.loads((folder / "calibrator.json").read_text())
    # Every risk a little higher, whichever map was chosen.
    key = {"platt": "intercept", "beta": "c"}.get(state["method"])
    if key is None:
        state["y_thresholds"] = [min(1.0, v + 0.05) for v in state["y_thresholds"]]
    else:
        state[key] = state[key] + 0.5
    (folder / "calibrator.json").write_text(json.dumps(state, indent=2, sort_keys=True))
    with pytest.raises(ModelError, match=r"calibrator\.json does not match"):
        artifacts.load(tmp_path, scored.model.version)
    (folder / "calibrator.json").unlink()
    with pytest.raises(ModelError, match="incomplete"):
        artifacts.load(tmp_path, scored.model.version)


def test_a_version_is_text_and_json_only(scored: Scored) -> None:
    folder = scored.settings.models_dir / scored.model.version
    assert sorted(p.name for p in folder.iterdir()) == [
        "calibrator.json", "evaluated_calibrator.json", "evaluated_model.txt",
        "evaluation.json", "gate.json", "metadata.json", "model.txt", "signature.json"]
    signature = json.loads((folder / "signature.json").read_text())
    assert set(signature["files"]) == {"calibrator.json", "evaluated_calibrator.json",
                                       "evaluated_model.txt", "evaluation.json", "gate.json",
                                       "metadata.json", "model.txt"}
    assert len(signature["hmac_sha256"]) == 64  # a signature; the key is kept elsewhere
    meta = json.loads((folder / "metadata.json").read_text())
    assert [f["name"] for f in meta["features"]] == list(FEATURE_NAMES)
    assert [f["kind"] for f in meta["features"]][:1] == ["numeric"]
    assert set(meta["sha256"]) == {"model.txt", "calibrator.json", "evaluation.json",
                                   "evaluated_model.txt", "evaluated_calibrator.json"}
    assert {"train_until", "calibrate_from", "evaluate_from"} <= set(meta["window"])
    assert meta["data_fingerprint"]
    assert {"lightgbm", "scikit-learn"} <= set(meta["libraries"])


def test_no_current_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="run `retention train` first"):
        artifacts.load(tmp_path)


def test_no_version_past_the_gate_says_so(scored: Scored, tmp_path: Path) -> None:
    """Trained versions but none current: the error points at the gate, not at training."""
    copy_version(scored, tmp_path)
    with pytest.raises(ModelError, match="no trained version has passed the"):
        artifacts.load(tmp_path)
