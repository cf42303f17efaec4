"""The [engine] settings, the command-line flags, and the default path without Dask."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from retention.pipelines.cli import main
from retention.pipelines.commands.common import with_engine
from retention.settings import ConfigError, EngineSettings, Settings, parse_engine
from tests.conftest import REPO, make_settings
from tests.support.dask_cluster import require


def test_the_default_engine_is_the_single_process() -> None:
    assert parse_engine({}) == EngineSettings()
    assert EngineSettings().kind == "local"


@pytest.mark.parametrize(("given", "says"), [
    ({"kind": "spark"}, "kind must be one of local, dask"),
    ({"kind": "dask"}, "needs scheduler"),
    ({"kind": "dask", "scheduler": "dask.internal"}, "tcp://host:port or tls://host:port"),
    ({"kind": "dask", "scheduler": "tls://dask.internal:8786"}, "a tls:// scheduler needs"),
    ({"tls_ca_file": "/etc/ca.pem"}, "TLS needs all of"),
    ({"partition_episodes": 10}, "at least 100"),
    ({"kind": "dask", "schedular": "tcp://h:1"}, "schedular"),
])
def test_a_bad_engine_section_is_a_clear_error(given: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_engine(given)


def test_tls_files_are_paths() -> None:
    engine = parse_engine({"kind": "dask", "scheduler": "tls://10.0.5.20:8786",
                           "tls_ca_file": "/etc/r/ca.pem", "tls_cert_file": "/etc/r/job.pem",
                           "tls_key_file": "/etc/r/job.key"})
    assert engine.tls_key_file == Path("/etc/r/job.key")


def settings(tmp_path: Path) -> Settings:
    """Settings with a PostgreSQL store (never connected to here)."""
    return make_settings(tmp_path, store_url="postgresql+psycopg://retention@db.internal/store")


def test_the_dask_engine_refuses_a_sqlite_store(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a PostgreSQL store"):
        make_settings(tmp_path, engine={"kind": "dask", "scheduler": "tcp://127.0.0.1:8786"})


def test_scheduler_on_the_command_line_means_the_dask_engine(tmp_path: Path) -> None:
    base = settings(tmp_path)
    assert with_engine(base, None, None) is base
    chosen = with_engine(base, None, "tcp://127.0.0.1:8786")
    assert (chosen.engine.kind, chosen.engine.scheduler) == ("dask", "tcp://127.0.0.1:8786")
    assert with_engine(chosen, "local", None).engine.kind == "local"
    with pytest.raises(click.UsageError, match="needs scheduler"):
        with_engine(base, "dask", None)


def test_the_etl_help_says_when_to_switch_engines_and_what_stays_in_the_job() -> None:
    shown = CliRunner().invoke(main, ["etl", "--help"])
    assert shown.exit_code == 0, shown.output
    said = " ".join(shown.output.split())
    assert "--engine dask --scheduler tcp://host:8786" in said and "docs/network.md" in said
    assert "Switch when the nightly run outgrows its window" in said
    # What Dask does not move, so that no one switches expecting a smaller job machine.
    assert "Extract, check and load stay in this process on either engine" in said


def test_the_config_file_reads_an_engine_section(tmp_path: Path) -> None:
    from retention.settings import load_settings

    config = tmp_path / "retention.toml"
    config.write_text('source_url = "sqlite:///c.db"\n'
                      'store_url = "postgresql+psycopg://retention@db.internal/store"\n'
                      '[engine]\nkind = "dask"\nscheduler = "tcp://10.0.5.20:8786"\n'
                      "partition_episodes = 5000\n")
    engine = load_settings(config, environ={}).engine
    assert (engine.kind, engine.scheduler, engine.partition_episodes) == (
        "dask", "tcp://10.0.5.20:8786", 5000)


def test_the_default_path_never_imports_dask() -> None:
    """The jobs, the commands and the app import no Dask on the local engine (the demo and
    a clinic need none of it installed)."""
    code = ("import sys\n"
            "import retention.pipelines.cli, retention.pipelines.nightly\n"
            "import retention.pipelines.commands.scoring, retention.pipelines.commands.data\n"
            "import retention.pipelines.scheduler, retention.api.app, retention.engine\n"
            "import retention.engine.partitions\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('dask', "
            "'distributed'))\n"
            "assert not loaded, loaded\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_what_a_task_carries_holds_no_secret_a_worker_does_not_need(tmp_path: Path) -> None:
    """The source, the store owner and the signing key stay with the job; the registry the
    job read travels, so a worker need not hold the registry's file."""
    network = require("retention.engine.network")  # with CI set, a failure, not a skip
    registry = tmp_path / "instruments.toml"
    registry.write_text((REPO / "config" / "instruments.toml").read_text())
    job = settings(tmp_path).with_overrides(
        source_url="postgresql+psycopg://etl:source-secret@clinic.internal/ehr",
        store_owner_url="postgresql+psycopg://owner:owner-secret@db.internal/store",
        model_key="k" * 64, instruments_file=registry)
    travelling = pickle.dumps(network.for_workers(job))
    registry.unlink()
    for secret in (b"source-secret", b"owner-secret", b"k" * 64):
        assert secret not in travelling
    on_worker = pickle.loads(travelling)
    assert on_worker.store_url == job.store_url
    assert on_worker.instruments.model_inputs == job.instruments.model_inputs
