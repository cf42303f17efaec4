"""`retention keys create/list/revoke` against the real store, then the key over the API."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from retention.api import create_app
from retention.pipelines.cli import main
from tests.conftest import REPO, Scored
from tests.support.apps import clock_on, keyed_client


def test_create_list_revoke(scored: Scored, tmp_path: Path) -> None:
    config = tmp_path / "cfg.toml"
    config.write_text(f'source_url = "{scored.settings.source_url}"\n'
                      f'store_url = "{scored.settings.store_url}"\n'
                      f'reasons_file = "{REPO / "config" / "reasons.toml"}"\n')
    run = CliRunner()
    base = ["--config", str(config), "keys"]
    created = run.invoke(main, [*base, "create", "--role", "ehr", "--clinic", "clinic-east",
                                "--label", "epic-test"])
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    assert token.startswith("rk_") and "shown only this once" in created.stderr
    key_id = token.split("_")[1]
    secret = token.removeprefix(f"rk_{key_id}_")  # may itself hold "_"
    app = create_app(scored.settings, clock=clock_on(scored.as_of))
    body = keyed_client(app, token).get("/v1/risk-list?limit=500").get_json()
    assert body["items"] and {i["clinic_id"] for i in body["items"]} == {"clinic-east"}

    listed = run.invoke(main, [*base, "list"])
    assert listed.exit_code == 0 and key_id in listed.stdout
    assert token not in listed.output and secret not in listed.output

    assert run.invoke(main, [*base, "revoke", key_id]).exit_code == 0
    assert keyed_client(app, token).get("/v1/risk-list").status_code == 401
    assert "revoked" in run.invoke(main, [*base, "list"]).stdout

    unknown = run.invoke(main, [*base, "revoke", "nosuchkey"])
    assert unknown.exit_code != 0 and "keys list" in unknown.output
    bad = run.invoke(main, [*base, "create", "--role", "ehr"])
    assert bad.exit_code != 0 and "--clinic" in bad.output
