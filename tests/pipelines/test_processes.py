"""The commands as real processes: the CLI, gunicorn over real HTTP, the scheduler."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import create_engine

from retention.pipelines.scheduler import JOB_ID, build_scheduler
from retention.store.lists import latest_drift, latest_publication
from retention.store.runs import list_runs
from tests.conftest import AS_OF, REPO, Scored, make_settings
from tests.support.apps import free_port, make_key
from tests.support.redis import PrivateRedis

RETENTION = [sys.executable, "-m", "retention.pipelines.cli"]


def write_config(path: Path, root: Path, **extra: object) -> Path:
    lines = [
        f'source_url = "sqlite:///{root / "clinic.db"}"',
        f'store_url = "sqlite:///{root / "store.db"}"',
        f'models_dir = "{root / "models"}"',
        f'reasons_file = "{REPO / "config" / "reasons.toml"}"',
        *(f"{k} = {json.dumps(v)}" for k, v in extra.items()),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RETENTION, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture
def copied(scored: Scored, tmp_path: Path) -> Path:
    """A private copy of the scored clinic, store and models for tests that write."""
    for name, url in (("clinic.db", scored.settings.source_url),
                      ("store.db", scored.settings.store_url)):
        # SQLite's backup API: a plain file copy would miss pages still in the WAL.
        with sqlite3.connect(url.removeprefix("sqlite:///")) as src, \
                sqlite3.connect(tmp_path / name) as dst:
            src.backup(dst)
    shutil.copytree(scored.settings.models_dir, tmp_path / "models")
    return tmp_path


@pytest.fixture
def server(copied: Path, private_redis: PrivateRedis) -> Iterator[tuple[str, str]]:
    """A gunicorn server over the copied store, and an admin key for it.

    Two workers must share their rate-limit counts, so they count in a Redis of the test's own.
    """
    engine = create_engine(f"sqlite:///{copied / 'store.db'}")
    token = make_key(engine, "admin")
    engine.dispose()
    config = write_config(copied / "cfg.toml", copied, api_rate_limit_storage=private_redis.url)
    port = free_port()
    proc = subprocess.Popen(
        [*RETENTION, "--config", str(config), "serve", "--port", str(port), "--workers", "2"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/health", timeout=1)
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        else:
            proc.terminate()
            pytest.fail("the server did not start: " + (proc.communicate()[0] or ""))
        yield base, token
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def get(url: str, token: str | None = None) -> urllib.request.Request:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return urllib.request.Request(url, headers=headers)


@pytest.mark.slow
def test_gunicorn_serves_the_list_over_http(server: tuple[str, str]) -> None:
    base, token = server
    with urllib.request.urlopen(get(base + "/v1/risk-list?limit=3", token), timeout=5) as response:
        assert response.status == 200
        body = json.loads(response.read())
    assert len(body["items"]) == 3
    assert body["items"][0]["reasons"]


@pytest.mark.slow
def test_http_errors_are_problem_json(server: tuple[str, str]) -> None:
    base, token = server
    for token_sent, status in ((token, 404), (None, 401)):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(get(base + "/v1/clients/NOBODY/risk", token_sent), timeout=5)
        assert caught.value.code == status
        assert caught.value.headers["Content-Type"] == "application/problem+json"


@pytest.mark.slow
def test_metrics_count_requests_across_gunicorn_workers(server: tuple[str, str]) -> None:
    base, token = server
    for _ in range(12):
        urllib.request.urlopen(get(base + "/v1/risk-list?limit=1", token), timeout=5).read()
    text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    line = next(x for x in text.splitlines() if x.startswith("retention_http_requests_total")
                and 'route="/v1/risk-list"' in x and 'status="200"' in x)
    assert float(line.rsplit(" ", 1)[1]) == 12.0


def test_scheduler_job_is_configured_to_never_overlap(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, schedule_cron="15 3 * * *")
    job = build_scheduler(settings).get_job(JOB_ID)
    assert job.coalesce is True
    assert job.max_instances == 1
    assert job.misfire_grace_time == settings.misfire_grace_seconds >= 3600
    assert isinstance(job.trigger, CronTrigger)
    fields = {f.name: str(f) for f in job.trigger.fields}
    assert (fields["hour"], fields["minute"]) == ("3", "15")


@pytest.mark.slow
def test_scheduler_process_runs_the_nightly_job(copied: Path) -> None:
    """A real scheduler process, asked to run once at start, publishes that night's list."""
    config = write_config(copied / "cfg.toml", copied)
    tonight = AS_OF + timedelta(days=1)
    proc = subprocess.Popen(
        [*RETENTION, "--config", str(config), "scheduler", "--run-now", "--as-of",
         tonight.isoformat()],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    engine = create_engine(f"sqlite:///{copied / 'store.db'}")
    try:
        deadline = time.monotonic() + 120
        published = None
        while time.monotonic() < deadline and published is None:
            time.sleep(0.5)
            with engine.connect() as conn:
                published = latest_publication(conn, tonight)
                failed = [r for r in list_runs(conn, 2) if r["status"] == "failed"]
            assert not failed, f"the nightly run failed: {failed[0]['error']}"
        assert published is not None, f"the scheduler published no list for {tonight}"
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
        engine.dispose()
    assert "nightly run for" in output
    with engine.connect() as conn:
        kinds = [(r["kind"], r["status"]) for r in list_runs(conn, 2)]
    assert kinds == [("score", "succeeded"), ("etl", "succeeded")]


@pytest.mark.slow
def test_demo_runs_end_to_end_without_serving(tmp_path: Path) -> None:
    """The demo as the README runs it (its default clinic of 2,000 clients), on a pinned day:
    its synthetic clinic, model and list are the same whatever day the test runs. (A clinic
    of a few hundred clients is too small for a model the gate can trust.)"""
    config = write_config(tmp_path / "cfg.toml", tmp_path)
    result = run_cli("--config", str(config), "demo", "--no-serve", "--today", AS_OF.isoformat())
    assert result.returncode == 0, result.stderr
    assert "demo: ready in" in result.stderr
    assert "within the bound" in result.stderr  # the calibration, printed by training
    # Every comparison the gate made, with its interval and verdict.
    assert "better than the best clinic rule: auroc engaged" in result.stderr
    assert "), better" in result.stderr
    runs = run_cli("--config", str(config), "runs")
    assert runs.returncode == 0
    assert runs.stdout.count("succeeded") == 3
    # Scored minutes after training, on data like its own: no input has drifted.
    engine = create_engine(f"sqlite:///{tmp_path / 'store.db'}")
    with engine.connect() as conn:
        drift = latest_drift(conn)
    engine.dispose()
    assert drift["psi"] and not drift["drifted"] and drift["flagged"] == []


@pytest.mark.slow
def test_missing_source_database_is_a_clear_error(tmp_path: Path) -> None:
    config = write_config(tmp_path / "cfg.toml", tmp_path)
    result = run_cli("--config", str(config), "etl")
    assert result.returncode != 0
    assert "run `retention synth`" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_mapping_error_is_a_clear_error_naming_its_entry(copied: Path) -> None:
    """The typo'd column once printed an 81-line traceback before the error."""
    config = write_config(copied / "cfg.toml", copied)
    with config.open("a") as fh:
        fh.write('[etl.queries]\nepisodes = "SELECT episode_id, admited_on FROM episodes"\n')
    result = run_cli("--config", str(config), "etl")
    assert result.returncode == 1
    assert "the query for [etl.queries] episodes failed in the clinic database" in result.stderr
    assert "admited_on" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_missing_settings_are_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "cfg.toml"
    config.write_text('store_url = "sqlite:///x.db"\n')
    result = run_cli("--config", str(config), "runs")
    assert result.returncode != 0
    assert "missing setting(s) source_url" in result.stderr


def run_bare(*args: str, cwd: Path, **environ: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a person runs it: no --config, no RETENTION_* but those given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    return subprocess.run([*RETENTION, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**env, **environ, "PYTHONPATH": str(REPO)})


@pytest.mark.slow
def test_run_from_another_folder_a_command_says_the_config_file_is_not_found(
    tmp_path: Path,
) -> None:
    result = run_bare("runs", cwd=tmp_path)
    assert result.returncode == 1
    assert (f"Error: config file config/retention.toml not found in {tmp_path.resolve()}: "
            "run retention from the repository folder, or set RETENTION_CONFIG to the config "
            "file's path (or RETENTION_SOURCE_URL and RETENTION_STORE_URL)") in result.stderr
    assert "missing setting" not in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing made where it ran


@pytest.mark.slow
def test_a_deployment_configured_by_its_environment_alone_runs(copied: Path,
                                                                tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_bare("runs", cwd=elsewhere,
                      RETENTION_SOURCE_URL=f"sqlite:///{copied / 'clinic.db'}",
                      RETENTION_STORE_URL=f"sqlite:///{copied / 'store.db'}")
    assert result.returncode == 0, result.stderr
    assert "succeeded" in result.stdout
