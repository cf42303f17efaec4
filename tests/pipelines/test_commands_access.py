"""`retention keys create/list/rotate/revoke` against the real store, then the key over the
API."""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime, time, timedelta
from pathlib import Path

from click.testing import CliRunner, Result
from sqlalchemy import create_engine

from retention.access.audit import read_audit
from retention.access.ehr_clients import TOKEN_LABEL_PREFIX
from retention.access.keys import create_key
from retention.api import create_app
from retention.clock import MovableClock
from retention.pipelines.cli import main
from retention.pipelines.commands.common import Context
from retention.settings import Settings
from tests.conftest import REPO, Scored
from tests.support.apps import clock_on, copied_store, keyed_client


def config_file(settings: Settings, directory: Path) -> Path:
    """A config naming ``settings``' databases and the repository's reasons."""
    config = directory / "cfg.toml"
    config.write_text(f'source_url = "{settings.source_url}"\n'
                      f'store_url = "{settings.store_url}"\n'
                      f'reasons_file = "{REPO / "config" / "reasons.toml"}"\n')
    return config


def test_create_list_revoke(scored: Scored, tmp_path: Path) -> None:
    config = config_file(scored.settings, tmp_path)
    run = CliRunner()
    base = ["--config", str(config), "keys"]
    created = run.invoke(main, [*base, "create", "--role", "case_manager", "--clinic",
                                "clinic-east", "--label", "clinic-east desk"])
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
    bad = run.invoke(main, [*base, "create", "--role", "ehr", "--recipient", "epic"])
    assert bad.exit_code != 0 and "--clinic" in bad.output
    unnamed = run.invoke(main, [*base, "create", "--role", "ehr", "--clinic", "clinic-east"])
    assert unnamed.exit_code != 0 and "--recipient" in unnamed.output




def test_keys_expire_are_warned_about_and_rotate_without_an_outage(
    scored: Scored, tmp_path: Path,
) -> None:
    settings = copied_store(scored.settings, tmp_path)
    config = config_file(settings, tmp_path)
    clock = MovableClock(datetime.combine(scored.as_of, time(9)))

    def keys(*args: str) -> Result:
        return CliRunner().invoke(main, ["--config", str(config), "keys", *args],
                                  obj=Context(config_path=None, clock=clock))

    created = keys("create", "--role", "ehr", "--clinic", "clinic-east", "--label", "epic",
                   "--recipient", "demo-ehr", "--expires", "30d")
    assert created.exit_code == 0, created.output
    old = created.stdout.strip()
    old_id = old.split("_")[1]
    assert "expiring 2026-07-01 09:00 UTC" in created.stderr
    listed = keys("list")
    assert "warning" not in listed.stderr and "2026-07-01 09:00" in listed.stdout

    clock.at += timedelta(days=20)
    listed = keys("list")
    assert f"warning: key {old_id} (ehr, epic) expires in 10 days" in listed.stderr
    assert f"retention keys rotate {old_id}" in listed.stderr
    assert "expiring" in listed.stdout

    app = create_app(settings, clock=clock)
    assert keyed_client(app, old).get("/v1/risk-list").status_code == 200  # cached now
    rotated = keys("rotate", old_id, "--overlap", "2d")
    assert rotated.exit_code == 0, rotated.output
    new = rotated.stdout.strip()
    new_id = new.split("_")[1]
    for token in (old, new):  # the overlap: both work
        assert keyed_client(app, token).get("/v1/risk-list").status_code == 200

    clock.at += timedelta(days=2, minutes=1)
    refused = keyed_client(app, old).get("/v1/risk-list")
    assert refused.status_code == 401 and refused.mimetype == "application/problem+json"
    assert "expired" in refused.get_json()["detail"] and refused.headers["WWW-Authenticate"]
    assert keyed_client(app, new).get("/v1/risk-list").status_code == 200
    with create_engine(settings.store_url).connect() as conn:
        last = read_audit(conn, datetime.min, datetime.max)[-2]
    assert (last["key_id"], last["outcome"], last["status"]) == (old_id, "expired", 401)

    listed = keys("list").stdout.splitlines()
    assert "expired" in next(line for line in listed if line.startswith(old_id))
    # The new key lives as long as the old one was given (30 days), from the rotation.
    assert f"2026-07-21 09:00 clinic-east for demo-ehr epic (replaces {old_id})" in next(
        line for line in listed if line.startswith(new_id))
    again = keys("rotate", old_id)
    assert again.exit_code != 0 and "create a new key" in again.output
    for bad in ("soon", "2026-06-01", "0d"):
        refused_create = keys("create", "--role", "admin", "--expires", bad)
        assert refused_create.exit_code != 0, bad


def test_a_flood_is_in_the_export_counted_per_minute(scored: Scored, tmp_path: Path) -> None:
    """The flood's first denials are records; the rest are counted, and exported as counts."""
    settings = copied_store(scored.settings, tmp_path).with_overrides(
        api_rate_limit_per_address_per_minute=50)
    config = config_file(settings, tmp_path)
    day = scored.as_of + timedelta(days=333)  # a day no other test writes records on
    client = create_app(settings, clock=clock_on(day)).test_client()
    assert [client.get("/v1/models").status_code for _ in range(60)] == [401] * 50 + [429] * 10

    def export(*args: str) -> Result:
        return CliRunner().invoke(main, ["--config", str(config), "audit", "export", "--from",
                                         f"{day}", "--to", f"{day}", *args])

    records = export()
    assert records.exit_code == 0, records.output
    per_minute = settings.audit_denials_per_minute
    assert len(records.stdout.splitlines()) == per_minute
    assert f"{60 - per_minute} more denial(s) in these days were counted" in records.stderr
    counted = export("--denials", "--format", "csv")
    assert counted.exit_code == 0, counted.output
    rows = list(csv.DictReader(io.StringIO(counted.stdout)))
    assert sorted((r["outcome"], r["status"], int(r["denials"])) for r in rows) == [
        ("rate_limited", "429", 10), ("unauthenticated", "401", 50 - per_minute)]
    assert all(r["window_start"] == f"{day}T09:00:00Z" and r["key_id"] == "" for r in rows)


def test_smart_access_tokens_are_counted_not_listed_or_warned_about(
    scored: Scored, tmp_path: Path,
) -> None:
    settings = copied_store(scored.settings, tmp_path)
    config = config_file(settings, tmp_path)
    now = datetime.combine(scored.as_of, time(9))
    store = create_engine(settings.store_url)
    with store.begin() as conn:
        token_id, _ = create_key(conn, "ehr", ["clinic-east"], recipient="demo-ehr",
                                 label=f"{TOKEN_LABEL_PREFIX}0123456789ab", now=now,
                                 expires_at=now + timedelta(minutes=5))
        key_id, _ = create_key(conn, "case_manager", ["clinic-east"], now=now)
    store.dispose()

    def listed(*args: str) -> Result:
        return CliRunner().invoke(main, ["--config", str(config), "keys", "list", *args],
                                  obj=Context(config_path=None, clock=MovableClock(now)))

    plain = listed()
    assert plain.exit_code == 0, plain.output
    assert key_id in plain.stdout and token_id not in plain.output
    assert re.search(r"SMART access token\(s\), [1-9][0-9]* live \(not listed; --tokens "
                     r"lists them\)", plain.stderr)
    everything = listed("--tokens")
    assert token_id in everything.stdout and token_id not in everything.stderr
