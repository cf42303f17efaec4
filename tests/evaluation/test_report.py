"""The report and the model card render from the real training run's files."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from retention.pipelines.cli import main
from tests.conftest import Scored

HTI1_ATTRIBUTES = {
    "developer", "funding_source", "intervention_details", "intended_use",
    "intended_patient_population", "intended_users", "decision_role", "out_of_scope_uses",
    "known_limitations", "training_data", "use_of_demographic_variables",
    "representativeness", "fairness_approach", "validation", "monitoring_and_updates",
}


def test_report_and_model_card_render(scored: Scored, tmp_path: Path) -> None:
    config = tmp_path / "retention.toml"
    config.write_text(f'source_url = "{scored.settings.source_url}"\n'
                      f'store_url = "{scored.settings.store_url}"\n'
                      f'models_dir = "{scored.settings.models_dir}"\n')
    result = CliRunner().invoke(main, ["--config", str(config), "report",
                                       "--out", str(tmp_path / "reports")])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "reports" / scored.model.version
    page = (folder / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # all rows and still engaged
    for text in ("2+ consecutive missed sessions", "SRS below 36", "days since last attended",
                 "logistic regression", "Promotion gate: passed", "Subgroups", "Top features"):
        assert text in page, text
    # The calibration bound with its verdict and the deciles behind it.
    assert "<h2>Calibration: " in page and "<th>decile</th>" in page
    assert page.count("<tr><td>") >= 10
    summary = json.loads((folder / "report.json").read_text())
    assert summary["version"] == scored.model.version

    card = json.loads((folder / "model-card.json").read_text())
    attrs = card["source_attributes"]
    assert set(attrs) >= HTI1_ATTRIBUTES
    meta = scored.model.metadata
    assert attrs["training_data"]["window"] == meta["window"]
    assert attrs["training_data"]["data_fingerprint"] == meta["data_fingerprint"]
    internal = attrs["validation"]["internal"]
    assert internal["all_open_episodes"]["auroc"]["value"] > 0.7
    assert internal["best_baseline_still_engaged"]["name"] in summary["evaluation"]["scorers"]
    assert attrs["use_of_demographic_variables"].startswith("none")
    assert "HTI-1" in (folder / "model-card.html").read_text()
