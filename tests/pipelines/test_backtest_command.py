"""`retention backtest` from the command line: origins, progress, the summary and the report."""

from __future__ import annotations

import json
from datetime import date, datetime, time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from retention.clock import FixedClock
from retention.pipelines.cli import main
from retention.pipelines.commands.common import Context
from tests.conftest import AS_OF, REPO


def write_config(path: Path, source_url: str, store_url: str, models_dir: Path) -> Path:
    path.write_text(
        f'source_url = "{source_url}"\n'
        f'store_url = "{store_url}"\n'
        f'models_dir = "{models_dir}"\n'
        f'reasons_file = "{REPO / "config" / "reasons.toml"}"\n'
        # A short window keeps the test quick: fewer snapshots, a default-shaped booster.
        "training_window_days = 150\n"
        "snapshot_every_days = 7\n"
        "[evaluation]\n"
        "bootstrap_samples = 50\n"
    )
    return path


def backtest(config: Path, *args: str, today: date = AS_OF) -> Result:
    clock = FixedClock(datetime.combine(today, time(9)))
    return CliRunner().invoke(main, ["--config", str(config), "backtest", *args],
                              obj=Context(config_path=None, clock=clock))


@pytest.fixture(scope="module")
def clinic_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic clinic, written and taken through the ETL by the commands."""
    root = tmp_path_factory.mktemp("backtest")
    config = write_config(root / "cfg.toml", f"sqlite:///{root / 'clinic.db'}",
                          f"sqlite:///{root / 'store.db'}", root / "models")
    clock = FixedClock(datetime.combine(AS_OF, time(2, 30)))
    for args in (["synth", "--clients", "600", "--clinics", "2", "--end", str(AS_OF),
                  "--seed", "5"], ["etl"]):
        done = CliRunner().invoke(main, ["--config", str(config), *args],
                                  obj=Context(config_path=None, clock=clock))
        assert done.exit_code == 0, done.output
    return config


@pytest.fixture
def nowhere(tmp_path: Path) -> Path:
    """A config whose store was never filled."""
    return write_config(tmp_path / "cfg.toml", f"sqlite:///{tmp_path / 'clinic.db'}",
                        f"sqlite:///{tmp_path / 'store.db'}", tmp_path / "models")


@pytest.mark.slow
def test_backtest_prints_each_origin_and_writes_the_report(
    clinic_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    models = clinic_config.parent / "models"
    monkeypatch.chdir(tmp_path)  # the default --out is relative: reports/backtest-<as-of>
    # One origin keeps it quick (each costs a fit); test_backtest.py pools several.
    result = backtest(clinic_config, "--from", "2026-04-20")
    assert result.exit_code == 0, result.output
    err = result.stderr
    # As of the clock's day; origins every 4 weeks back from a horizon before it.
    assert "1 origin(s) every 4 weeks from 2026-05-02 to 2026-05-02, as of 2026-06-01" in err
    assert "  snapshots: " in err
    line = err.split("backtest [1/1] origin 2026-05-02: trained on ")[1].split("\n")[0]
    assert " rows, scored " in line and line.endswith(" disengaged)"), line
    assert "backtest: pooled 1 of 1 origins (2026-05-02 to 2026-05-02)" in err
    # The best clinic rule and the regression, each with the gate's verdict.
    assert err.count("; AUROC better") + err.count("; AUROC cannot be told apart") + err.count(
        "; AUROC worse") == 4
    for text in ("still engaged (attended within 14 days): ", "all open episodes: ",
                 "    model: AUROC ", "    logistic regression, same features: AUROC ",
                 "      model minus it: AUROC ",
                 "precision at capacity (top 10 per clinic per origin", "calibration (model, "
                 "pooled): ECE "):
        assert text in err, text
    folder = tmp_path / "reports" / "backtest-2026-06-01"
    assert f"backtest: wrote {Path('reports/backtest-2026-06-01/backtest.json')}" in err
    record = json.loads((folder / "backtest.json").read_text())
    assert record["as_of"] == "2026-06-01"
    assert [o["origin"] for o in record["origins"]] == ["2026-05-02"]
    assert record["period"]["scored"] == 1
    ev = record["evaluation"]
    assert ev["rows"] == sum(o["test_rows"] for o in record["origins"])
    assert 0.5 < ev["subsets"]["all"]["metrics"]["model"]["auroc"]["value"] <= 1
    for subset in ("all", "engaged"):
        auroc = ev["subsets"][subset]["metrics"]["model"]["auroc"]
        assert auroc["low"] <= auroc["value"] <= auroc["high"]
        assert set(ev["subsets"][subset]["differences"]) == {
            "missed_2_in_a_row", "srs_rule", "days_since_attended", "logistic_regression"}
    page = (folder / "backtest.html").read_text()
    assert "Origin by origin" in page and page.count("data:image/png;base64,") == 2
    # Nothing was saved as a version.
    assert not models.exists()

    # Outcomes after the last ETL's day are not in the copy: a later as-of is refused.
    later = backtest(clinic_config, "--as-of", "2026-06-10")
    assert later.exit_code == 1
    assert "last updated by an ETL run as of 2026-06-01" in later.output
    assert "use --as-of 2026-06-01" in later.output


def test_an_empty_store_says_to_run_the_etl(nowhere: Path) -> None:
    result = backtest(nowhere)
    assert result.exit_code == 1
    assert "run `retention etl` first" in result.output


def test_a_period_without_origins_is_refused(nowhere: Path) -> None:
    result = backtest(nowhere, "--from", "2026-05-10", "--to", "2026-05-01")
    assert result.exit_code == 1
    assert "holds no origin" in result.output and "use an earlier --from" in result.output


def test_an_origin_whose_outcome_is_not_known_is_refused(nowhere: Path) -> None:
    result = backtest(nowhere, "--as-of", "2026-06-01", "--to", "2026-05-20")
    assert result.exit_code == 1
    assert "ends 2026-06-19, after the as-of date 2026-06-01" in result.output
    assert "use an earlier --to" in result.output
