"""Signed model versions and registry: a version or history line changed without the key is
refused, whoever rewrites the hashes beside it, and the key is kept apart from the models."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import lightgbm as lgb
import pytest
from click.testing import CliRunner

from retention.features import FEATURE_NAMES
from retention.model import artifacts, registry, signing
from retention.model.booster import ModelError, TrainedModel
from retention.model.signing import SigningError, SigningKey
from retention.pipelines.cli import main
from retention.pipelines.commands.serve import _demo_key
from retention.settings import ConfigError, load_settings
from retention.store.features import read_features
from tests.conftest import Scored, make_settings

OTHER_KEY = SigningKey(b"another service's key, 32 characters or more", "a test")


@pytest.fixture
def models(scored: Scored, tmp_path: Path) -> Path:
    """A private copy of the trained registry: versions, CURRENT and the signed history."""
    copy = tmp_path / "models"
    shutil.copytree(scored.settings.models_dir, copy)
    return copy


def folder_of(models: Path, scored: Scored) -> Path:
    return models / scored.model.version


def raise_every_risk(text: str, by: float = 2.0) -> str:
    """The model's text with every leaf of its first tree ``by`` log-odds higher (and without
    the trees' byte sizes, which no longer hold: LightGBM then parses tree by tree)."""
    lines = [line for line in text.splitlines(keepends=True) if not line.startswith("tree_sizes=")]
    first = next(i for i, line in enumerate(lines) if line.startswith("leaf_value="))
    values = [float(v) + by for v in lines[first].removeprefix("leaf_value=").split()]
    lines[first] = "leaf_value=" + " ".join(repr(v) for v in values) + "\n"
    return "".join(lines)


def rewrite_hash(folder: Path, name: str) -> None:
    """What an attacker without the key does: write the new SHA-256 into the metadata."""
    meta = json.loads((folder / "metadata.json").read_text())
    meta["sha256"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def test_an_edited_model_with_its_hash_rewritten_is_refused(scored: Scored, models: Path) -> None:
    """Issue 17's tamper: model.txt edited and its new SHA-256 written into metadata.json."""
    folder = folder_of(models, scored)
    tampered = raise_every_risk((folder / "model.txt").read_text())
    (folder / "model.txt").write_text(tampered)
    rewrite_hash(folder, "model.txt")
    # The edit matters: on 50 open episodes the mean risk is half as high again, or more.
    with scored.store.connect() as conn:
        frame = read_features(conn, scored.as_of, FEATURE_NAMES).head(50)
    assert len(frame) == 50
    forged = TrainedModel(
        lgb.Booster(model_str=tampered), scored.model.calibrator, scored.model.metadata
    )
    before, after = scored.model.predict(frame).mean(), forged.predict(frame).mean()
    assert after > 1.5 * before, (before, after)
    # The metadata now agrees with the model, but the signature agrees with neither.
    for attempt in (
        lambda: artifacts.load(models, scored.model.version),
        lambda: artifacts.load(models),
        lambda: registry.promote(models, scored.model.version, reason="test"),
    ):
        with pytest.raises(
            SigningError,
            match=r"integrity check: metadata\.json does not "
            r"match its signed hash.*retrain",
        ):
            attempt()


def test_a_forged_version_signed_with_the_key_still_fails_its_name(
    scored: Scored, models: Path
) -> None:
    """The digest in a version's name is checked too: a model swapped in, hashes rewritten
    and signed (by someone holding the key, bypassing `retention models sign`), is refused;
    `retention models sign` itself refuses to sign it."""
    folder = folder_of(models, scored)
    (folder / "model.txt").write_text(raise_every_risk((folder / "model.txt").read_text()))
    rewrite_hash(folder, "model.txt")
    key = signing.resolve_key()
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "signature.json"}
    signing.sign_version(folder, scored.model.version, files, key, signed_by="x", reason="x")
    with pytest.raises(ModelError, match="its name does not match its model and calibrator"):
        artifacts.load(models, scored.model.version)
    with pytest.raises(ModelError, match="its name does not match"):
        registry.sign(models, scored.model.version, reason="looks fine to me")


def edit_json(path: Path) -> None:
    """A plausible edit of a JSON file: one number or flag changed, still valid JSON."""
    state = json.loads(path.read_text())
    if path.name == "gate.json":
        state["passed"] = not state["passed"]
    elif path.name == "signature.json":
        state["signed_by"] = "someone else"
    elif path.name == "metadata.json":
        state["metrics"]["evaluation"]["auroc"] = 0.99
    elif path.name == "evaluation.json":
        state["subsets"]["engaged"]["metrics"]["model"]["auroc"]["value"] = 0.99
    else:  # calibrator.json: every risk a little higher, whichever map was chosen
        key = {"platt": "intercept", "beta": "c"}.get(state["method"])
        if key is None:
            state["y_thresholds"] = [min(1.0, v + 0.05) for v in state["y_thresholds"]]
        else:
            state[key] = state[key] + 0.5
    path.write_text(json.dumps(state, indent=2, sort_keys=True))


@pytest.mark.parametrize(
    "name",
    [
        "model.txt",
        "calibrator.json",
        "metadata.json",
        "evaluation.json",
        "gate.json",
        "signature.json",
    ],
)
def test_an_edit_to_any_file_of_a_version_is_refused_on_load_and_promotion(
    scored: Scored, models: Path, name: str
) -> None:
    folder = folder_of(models, scored)
    path = folder / name
    if name == "model.txt":
        path.write_text(path.read_text().replace("shrinkage=0.05", "shrinkage=0.5", 1))
    else:
        edit_json(path)
    changed = {name}
    if name in ("model.txt", "calibrator.json", "evaluation.json"):
        rewrite_hash(folder, name)  # the metadata's hashes agree: only the signature knows
        changed.add("metadata.json")
    message = (
        r"signature\.json does not verify"
        if name == "signature.json"
        else rf"integrity check: {re.escape(min(changed))} does not match its signed "
        "hash"
    )
    with pytest.raises(SigningError, match=message):
        artifacts.load(models, scored.model.version)
    with pytest.raises(SigningError, match=message):
        registry.promote(models, scored.model.version, reason="test", force=True)
    assert artifacts.current_version(models) == scored.model.version


def test_a_file_added_or_removed_after_signing_is_refused(scored: Scored, models: Path) -> None:
    folder = folder_of(models, scored)
    (folder / "override.json").write_text("{}")
    with pytest.raises(SigningError, match=r"override\.json was added after signing"):
        artifacts.load(models, scored.model.version)
    (folder / "override.json").unlink()
    (folder / "gate.json").unlink()
    with pytest.raises(ModelError, match=r"incomplete: .*gate\.json is missing"):
        registry.promote(models, scored.model.version, reason="test")


def test_a_renamed_version_folder_is_refused(scored: Scored, models: Path) -> None:
    renamed = models / "20260601-0000000000"
    shutil.copytree(folder_of(models, scored), renamed)
    with pytest.raises(SigningError, match="its signature is for"):
        artifacts.load(models, renamed.name)


def test_a_version_signed_with_another_key_is_refused(scored: Scored, models: Path) -> None:
    folder = folder_of(models, scored)
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "signature.json"}
    signing.sign_version(
        folder,
        scored.model.version,
        files,
        OTHER_KEY,
        signed_by="elsewhere",
        reason="signed by another service",
    )
    assert json.loads((folder / "signature.json").read_text())["key_id"] == OTHER_KEY.key_id
    with pytest.raises(SigningError, match=r"signature\.json was made with another key"):
        artifacts.load(models, scored.model.version)
    with pytest.raises(SigningError, match="another key"):
        registry.promote(models, scored.model.version, reason="test")
    # The key it was signed with verifies it.
    assert (
        artifacts.load(models, scored.model.version, key=OTHER_KEY).version == scored.model.version
    )


def test_an_unsigned_version_is_refused_until_signed_deliberately(
    scored: Scored, models: Path
) -> None:
    folder = folder_of(models, scored)
    (folder / "signature.json").unlink()
    with pytest.raises(
        SigningError,
        match=r"is not signed \(.*signature\.json is missing\).*"
        r"retention models sign",
    ):
        artifacts.load(models, scored.model.version)
    replaced = registry.sign(
        models, scored.model.version, reason="trained before signing", by="ops@clinic"
    )
    assert replaced is None
    assert artifacts.load(models, scored.model.version).version == scored.model.version
    entry = registry.history(models)[-1]
    assert (entry["action"], entry["version"], entry["by"], entry["reason"]) == (
        "sign",
        scored.model.version,
        "ops@clinic",
        "trained before signing",
    )
    signature = json.loads((folder / "signature.json").read_text())
    assert (signature["signed_by"], signature["reason"]) == ("ops@clinic", "trained before signing")


def history_lines(models: Path) -> list[dict]:
    return [json.loads(line) for line in (models / "history.jsonl").read_text().splitlines()]


def write_history(models: Path, lines: list[dict]) -> None:
    (models / "history.jsonl").write_text(
        "".join(json.dumps(r, sort_keys=True) + "\n" for r in lines)
    )


@pytest.fixture
def two_promotions(scored: Scored, models: Path) -> Path:
    """A history of three signed entries: promote, sign, promote again."""
    registry.sign(models, scored.model.version, reason="checked", by="ops")
    registry.promote(models, scored.model.version, reason="again", by="ops")
    entries = registry.history(models)
    assert [e["action"] for e in entries] == ["promote", "sign", "promote"]
    assert entries[0]["by"]  # the training run's promotion says who ran it
    assert (entries[-1]["by"], entries[-1]["previous"]) == ("ops", scored.model.version)
    return models


@pytest.mark.parametrize("tamper", ["edited", "removed", "moved", "unsigned", "other key"])
def test_a_tampered_history_line_is_detected(
    scored: Scored, two_promotions: Path, tamper: str
) -> None:
    models = two_promotions
    lines = history_lines(models)
    if tamper == "edited":
        lines[1]["reason"] = "nothing to see"
    elif tamper == "removed":
        del lines[1]
    elif tamper == "moved":
        lines[0], lines[1] = lines[1], lines[0]
    elif tamper == "unsigned":
        lines[1].pop("hmac_sha256")
    else:
        lines[1] = signing.chain_entry(
            {k: v for k, v in lines[1].items() if k not in ("hmac_sha256", "prev_hmac", "key_id")},
            OTHER_KEY,
            lines[0]["hmac_sha256"],
        )
    write_history(models, lines)
    expected = {
        "edited": "line 2 was altered",
        "removed": "line 2 does not follow",
        "moved": "line 1 does not follow",
        "unsigned": "line 2 is not signed",
        "other key": "line 2 was signed with another key",
    }[tamper]
    with pytest.raises(SigningError, match=expected):
        registry.history(models)
    # Nothing that trusts the history goes on: serving the current model, promotion, rollback.
    with pytest.raises(SigningError, match=expected):
        artifacts.load(models)
    with pytest.raises(SigningError, match=expected):
        registry.promote(models, scored.model.version, reason="test")
    with pytest.raises(SigningError, match=expected):
        registry.rollback(models, reason="test")


def test_current_changed_by_hand_is_refused(scored: Scored, models: Path) -> None:
    other = models / "20260601-0000000000"
    other.mkdir()
    (other / "model.txt").write_text("")
    (models / "CURRENT").write_text(other.name + "\n")
    with pytest.raises(SigningError, match="CURRENT was changed outside the registry"):
        artifacts.load(models)
    (models / "CURRENT").write_text(scored.model.version + "\n")
    (models / "history.jsonl").unlink()
    with pytest.raises(SigningError, match="records no signed promotion"):
        artifacts.load(models)


def test_a_history_rewritten_deliberately_is_signed_again_with_who_and_why(
    scored: Scored, two_promotions: Path
) -> None:
    models = two_promotions
    lines = history_lines(models)
    for line in lines:  # a history from before signing
        for k in ("hmac_sha256", "prev_hmac", "key_id"):
            line.pop(k)
    write_history(models, lines)
    with pytest.raises(SigningError, match="is not signed"):
        registry.history(models)
    assert registry.resign_history(models, reason="upgrade to signed registry", by="ops") == 3
    entries = registry.history(models)
    assert [e["action"] for e in entries] == ["promote", "sign", "promote", "resign-history"]
    assert (entries[-1]["by"], entries[-1]["reason"]) == ("ops", "upgrade to signed registry")
    assert artifacts.load(models).version == scored.model.version


# --- the key ---------------------------------------------------------------------------


def test_with_no_key_configured_training_creates_a_private_one(tmp_path: Path) -> None:
    where = tmp_path / "home" / ".config" / "retention" / "model-signing.key"
    with pytest.raises(SigningError, match="no model signing key is configured"):
        signing.resolve_key(default_file=where)  # loading never makes one up
    made = signing.resolve_key(create=True, default_file=where)
    assert made.created and made.source == str(where)
    assert os.stat(where).st_mode & 0o777 == 0o600
    assert os.stat(where.parent).st_mode & 0o777 == 0o700
    again = signing.resolve_key(default_file=where)
    assert not again.created and again.key_id == made.key_id
    assert "secret" not in repr(again) and again.secret.decode() not in repr(again)


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.key"
    signing.create_key_file(path)
    path.chmod(0o640)
    with pytest.raises(
        SigningError,
        match=r"can be read or changed by others \(mode 0640\); "
        r"run `chmod 600",
    ):
        signing.resolve_key(key_file=path)
    path.chmod(0o600)
    link = tmp_path / "link.key"
    link.symlink_to(path)
    with pytest.raises(SigningError, match="not a link"):
        signing.resolve_key(key_file=link)


def test_the_key_is_never_kept_with_the_models(tmp_path: Path) -> None:
    models = tmp_path / "models"
    key_file = models / "model.key"
    models.mkdir()
    signing.create_key_file(key_file)
    with pytest.raises(SigningError, match="inside the models directory"):
        signing.resolve_key(key_file=key_file, models_dir=models)


def test_a_configured_key_file_is_never_created_and_short_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SigningError, match="does not exist"):
        signing.resolve_key(key_file=tmp_path / "missing.key", create=True)
    assert not (tmp_path / "missing.key").exists()
    with pytest.raises(SigningError, match="RETENTION_MODEL_KEY is too short"):
        signing.resolve_key("short")
    assert signing.resolve_key("x" * 40).source == "$RETENTION_MODEL_KEY"


def test_settings_take_the_key_from_the_environment_or_a_file_never_the_config(
    tmp_path: Path,
) -> None:
    config = tmp_path / "retention.toml"
    config.write_text(
        'source_url = "sqlite:///a.db"\nstore_url = "sqlite:///b.db"\n'
        f'model_key_file = "{tmp_path / "k"}"\n'
    )
    settings = load_settings(config, {"RETENTION_MODEL_KEY": "y" * 40})
    assert settings.model_key_file == tmp_path / "k"
    assert signing.model_key(settings).secret == b"y" * 40
    assert "y" * 40 not in repr(settings)
    config.write_text(config.read_text() + f'model_key = "{"z" * 40}"\n')
    with pytest.raises(ConfigError, match="model_key is a secret"):
        load_settings(config, {})


def test_models_sign_and_key_commands(scored: Scored, models: Path, tmp_path: Path) -> None:
    folder = folder_of(models, scored)
    (folder / "signature.json").unlink()
    config = tmp_path / "retention.toml"
    config.write_text(
        f'source_url = "{scored.settings.source_url}"\n'
        f'store_url = "{scored.settings.store_url}"\n'
        f'models_dir = "{models}"\n'
    )
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(main, ["--config", str(config), *args])
        return result.exit_code, result.stdout, result.stderr

    code, out, err = run("models", "list")
    assert code == 0 and "REFUSED" in out and "is not signed" in err
    code, _, err = run("models", "sign", scored.model.version)
    assert code == 2 and "--reason is required" in err
    code, _, err = run("models", "sign", scored.model.version, "--reason", "restored backup")
    assert code == 0 and "(was unsigned)" in err
    code, out, _ = run("models", "list")
    assert code == 0 and "REFUSED" not in out
    code, out, _ = run("models", "key")
    assert code == 0 and out.split() == [
        signing.resolve_key().key_id,
        str(signing.default_key_file()),
    ]
    made = tmp_path / "keys" / "new.key"
    code, _, err = run("models", "key", "--create", str(made))
    assert code == 0 and os.stat(made).st_mode & 0o777 == 0o600 and "key id" in err
    code, _, err = run("models", "key", "--create", str(made))
    assert code == 1 and "not replacing a key" in err
    config.write_text(config.read_text() + f'model_key_file = "{made}"\n')
    code, _, err = run("models", "promote", scored.model.version)
    assert code == 1 and "another key" in err


def test_the_demo_signs_with_a_key_of_its_own_beside_its_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(tmp_path)
    demo = _demo_key(settings)
    path = tmp_path / "demo-model-signing.key"
    assert demo.model_key_file == path and os.stat(path).st_mode & 0o777 == 0o600
    assert "created, mode 0600" in capsys.readouterr().err
    key = signing.model_key(demo)
    again = _demo_key(settings)
    assert signing.model_key(again).key_id == key.key_id
    assert f"RETENTION_MODEL_KEY_FILE={path}" in capsys.readouterr().err
    # A key the operator configured is used as it is.
    own = settings.with_overrides(model_key="k" * 40)
    assert _demo_key(own) is own
