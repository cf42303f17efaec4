"""Registry and gate: a worse candidate is refused, promotion and rollback are recorded."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine

from retention.evaluation.candidate import assess
from retention.evaluation.gate import gate
from retention.model import artifacts, registry
from retention.model.booster import ModelError, TrainedModel
from retention.model.training import fit, snapshot_dates, time_split, training_rows
from retention.pipelines.cli import main
from retention.settings import EvaluationSettings
from retention.store import schema
from retention.store.clinic_copy import read_clinic_copy
from tests.conftest import Scored

FAST = EvaluationSettings(bootstrap_samples=30)


@pytest.fixture(scope="module")
def rows(scored: Scored) -> pd.DataFrame:
    s = scored.settings
    dates = snapshot_dates(scored.as_of, s.horizon_days, s.snapshot_every_days,
                           s.training_window_days)
    with scored.store.connect() as conn:
        data = read_clinic_copy(conn)
    return training_rows(data, dates, s.horizon_days, scored.as_of)


# Training and assessing a candidate takes seconds: every test that needs one is slow.
@pytest.fixture(scope="module")
def worse(scored: Scored, rows: pd.DataFrame) -> tuple[TrainedModel, dict]:
    """A candidate trained on labels shuffled within each snapshot date: it learns nothing."""
    rng = np.random.default_rng(0)
    shuffled = rows.copy()
    for _, idx in shuffled.groupby("as_of").groups.items():
        shuffled.loc[idx, "label"] = rng.permutation(shuffled.loc[idx, "label"].to_numpy())
    model = fit(shuffled, horizon_days=30, seed=1, trained_as_of=scored.as_of)
    # Judged on the real outcomes of the same evaluation window, against the current model.
    split = replace(time_split(shuffled, 30), evaluate=time_split(rows, 30).evaluate)
    evaluation = assess(model, split, scored.clinic().clients, FAST, engaged_within_days=14,
                        seed=1, current=scored.model)
    return model, evaluation


@pytest.mark.slow
def test_the_gate_refuses_a_deliberately_worse_candidate(worse: tuple) -> None:
    model, evaluation = worse
    decision = gate(model.version, evaluation, tolerance=0.01)
    assert not decision.passed
    text = " ".join(decision.refusals)
    assert "better than the best clinic rule" in text
    assert "no worse than the current model" in text
    assert decision.compared_with is not None


def test_the_current_model_passes_against_itself_and_the_baselines(scored: Scored) -> None:
    gate = registry.read_gate(scored.settings.models_dir, scored.model.version)
    assert gate is not None and gate["passed"], gate


def copied_registry(scored: Scored, tmp_path: Path) -> Path:
    models = tmp_path / "models"
    shutil.copytree(scored.settings.models_dir, models)
    return models


@pytest.mark.slow
def test_a_refused_version_is_kept_but_not_promoted_without_force(
    scored: Scored, worse: tuple, tmp_path: Path
) -> None:
    models = copied_registry(scored, tmp_path)
    model, evaluation = worse
    artifacts.save(model, models, evaluation)
    registry.write_gate(models, gate(model.version, evaluation, 0.01))
    with pytest.raises(registry.RegistryError, match="refused by the promotion gate"):
        registry.promote(models, model.version, reason="test")
    assert artifacts.current_version(models) == scored.model.version
    registry.promote(models, model.version, reason="testing an override", force=True)
    assert artifacts.current_version(models) == model.version
    assert registry.rollback(models, reason="it was worse") == scored.model.version
    assert artifacts.current_version(models) == scored.model.version
    actions = [e["action"] for e in registry.history(models)]
    assert actions[-2:] == ["force-promote", "rollback"]


def test_promotion_refuses_a_version_that_fails_its_hashes(
    scored: Scored, tmp_path: Path
) -> None:
    models = copied_registry(scored, tmp_path)
    path = models / scored.model.version / "evaluation.json"
    report = json.loads(path.read_text())
    report["subsets"]["engaged"]["metrics"]["model"]["auroc"]["value"] = 0.99
    path.write_text(json.dumps(report))
    with pytest.raises(ModelError, match=r"evaluation\.json does not match"):
        registry.promote(models, scored.model.version, reason="test")


def test_a_promotion_says_the_list_changes_at_the_next_scoring_run(
    scored: Scored, tmp_path: Path
) -> None:
    """Which model scored the list is said when the store tells; without a store, the
    promotion still says when it reaches the list, and creates no store by asking."""
    models = copied_registry(scored, tmp_path)
    version = scored.model.version
    absent = tmp_path / "var" / "retention.db"
    empty = create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with empty.begin() as conn:
        schema.upgrade(conn)
    empty.dispose()
    for store_url, said in [
        (str(empty.url), f"No list is published yet: the next scoring run (`retention score`, "
         f"or the nightly run) scores with {version}"),
        (f"sqlite:///{absent}", "It takes effect at the next scoring run (`retention score`, "
         "or the nightly run): until then the published list still comes from the previous "
         "model"),
        (scored.settings.store_url, f"The published list (as of {scored.as_of}) was scored by "
         f"{version} already; the next scoring run (`retention score`, or the nightly run) "
         "scores with it too"),
    ]:
        config = tmp_path / "retention.toml"
        config.write_text(f'source_url = "{scored.settings.source_url}"\n'
                          f'store_url = "{store_url}"\nmodels_dir = "{models}"\n')
        result = CliRunner().invoke(main, ["--config", str(config), "models", "promote",
                                           version])
        assert result.exit_code == 0, result.stderr
        assert f"models promote: {version} is current (was {version}). {said}" in " ".join(
            result.stderr.split())
    assert not absent.exists() and not absent.parent.exists()


@pytest.mark.slow
def test_models_commands(scored: Scored, worse: tuple, tmp_path: Path) -> None:
    models = copied_registry(scored, tmp_path)
    model, evaluation = worse
    artifacts.save(model, models, evaluation)
    registry.write_gate(models, gate(model.version, evaluation, 0.01))
    config = tmp_path / "retention.toml"
    config.write_text(f'source_url = "{scored.settings.source_url}"\n'
                      f'store_url = "{scored.settings.store_url}"\n'
                      f'models_dir = "{models}"\n')
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(main, ["--config", str(config), *args])
        return result.exit_code, result.stdout, result.stderr

    code, out, err = run("models", "list")
    assert code == 0 and f"* {scored.model.version}" in out and "refused" in out
    assert "2 version(s)" in err
    code, out, _ = run("models", "show", model.version)
    assert code == 0 and json.loads(out)["gate"]["passed"] is False
    code, _, err = run("models", "promote", model.version)
    assert code == 1 and "refused by the promotion gate" in err
    code, _, err = run("models", "promote", model.version, "--force")
    assert code == 1 and "--force needs a --reason" in err
    code, _, err = run("models", "rollback")
    assert code == 1 and "no earlier version" in err
    code, _, err = run("models", "show", "nope")
    assert code == 1 and "no model version 'nope'" in err
    # A promotion or rollback changes the registry, not the published list: it says so.
    code, _, err = run("models", "promote", model.version, "--force", "--reason", "test")
    err = " ".join(err.split())
    assert code == 0, err
    assert (f"models promote: {model.version} is current (was {scored.model.version}). It "
            "takes effect at the next scoring run (`retention score`, or the nightly run): "
            f"until then the published list (as of {scored.as_of}) still comes from "
            f"{scored.model.version}, the model that scored it") in err
    code, _, err = run("models", "rollback")
    err = " ".join(err.split())
    assert code == 0, err
    assert (f"models rollback: {scored.model.version} is current again. The published list "
            f"(as of {scored.as_of}) was scored by {scored.model.version} already; the next "
            "scoring run (`retention score`, or the nightly run) scores with it too") in err
