"""Settings (``retention.settings``): a clinic's mapping is checked when it is read."""

from __future__ import annotations

from pathlib import Path

import pytest

from retention.settings import (
    ConfigError,
    EtlSettings,
    load_settings,
    parse_etl,
    settings_from_mapping,
)


def test_mapping_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="not a contract table"):
        parse_etl({"queries": {"visits": "SELECT 1"}})
    with pytest.raises(ConfigError, match="unknown code"):
        parse_etl({"codes": {"appointments": {"status": {"NS": "vanished"}}}})
    with pytest.raises(ConfigError, match="must be a SELECT"):
        parse_etl({"queries": {"appointments": "DELETE FROM visits"}})
    with pytest.raises(ConfigError, match="unknown setting"):
        parse_etl({"overlap": 5})


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "retention.toml"
    path.write_text('source_url = "sqlite:///clinic.db"\nstore_url = "sqlite:///store.db"\n'
                    + body)
    return path


def test_a_misspelt_key_fails_start_up_with_a_suggestion(tmp_path: Path) -> None:
    # Read once at start: a limit spelt wrong would otherwise leave the default in force.
    for body, said in [
        ("[etl]\nmax_quarantine_shar = 0.1\n",
         r"\[etl\]: max_quarantine_shar \(did you mean max_quarantine_share\?\)"),
        ("[etl]\nmax_code_quarantin_share = 0.1\n",
         r"max_code_quarantin_share \(did you mean max_code_quarantine_share\?\)"),
        ("[etl.codez.episodes.program]\nOP = 'outpatient'\n", r"codez \(did you mean codes\?\)"),
        ("[evaluation]\ncapacity = 10\n",
         r"\[evaluation\]: capacity \(did you mean capacity_k\?\)"),
        ("[model]\nhorizon_day = 30\n", r"horizon_day \(did you mean horizon_days\?\)"),
    ]:
        with pytest.raises(ConfigError, match=said):
            load_settings(write_config(tmp_path, body), environ={})
    good = load_settings(write_config(tmp_path, "[etl]\nmax_quarantine_share = 0.1\n"),
                         environ={})
    assert good.etl.max_quarantine_share == 0.1


def test_quarantine_limits_are_read_by_table_and_coded_column(tmp_path: Path) -> None:
    body = ("[etl]\nmax_code_quarantine_share = 0.01\nquarantine_min_rows = 5\n"
            "[etl.quarantine_limits]\nalliance_items = 0.2\n\"episodes.program\" = 0.1\n"
            "appointments.status = 0.3\n")  # unquoted: TOML reads a table; both are taken
    etl = load_settings(write_config(tmp_path, body), environ={}).etl
    assert etl.quarantine_limits == {"alliance_items": 0.2, "episodes.program": 0.1,
                                     "appointments.status": 0.3}
    assert (etl.max_code_quarantine_share, etl.quarantine_min_rows) == (0.01, 5)
    assert EtlSettings().max_table_quarantine_share == 0.05
    for limits, said in [({"visits": 0.1}, "'visits' is neither a contract table"),
                         ({"appointments.clinician_id": 0.1}, "nor a coded column"),
                         ({"appointments": 1.5}, "quarantine_limits.appointments must be a share"),
                         ({"appointments": True}, "must be a share")]:
        with pytest.raises(ConfigError, match=said):
            parse_etl({"quarantine_limits": limits})
    for name in ("max_quarantine_share", "max_table_quarantine_share",
                 "max_code_quarantine_share", "max_clinic_quarantine_share"):
        with pytest.raises(ConfigError, match=f"{name} must be a share"):
            parse_etl({name: -0.1})
    with pytest.raises(ConfigError, match="quarantine_min_rows"):
        parse_etl({"quarantine_min_rows": -1})


def test_a_misspelt_tier_fails_start_up(tmp_path: Path) -> None:
    # "hihg" would be a tier no page shows, and the high tier would be empty.
    body = "[list.tiers]\nhihg = 0.5\nmedium = 0.25\n"
    with pytest.raises(ConfigError, match=r"\[list.tiers\]: hihg \(did you mean high\?\)"):
        load_settings(write_config(tmp_path, body), environ={})
    good = load_settings(write_config(tmp_path, "[list.tiers]\nhigh = 0.6\nmedium = 0.3\n"),
                         environ={})
    assert dict(good.tiers) == {"high": 0.6, "medium": 0.3}


def test_without_its_config_file_a_command_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Run from another folder, the relative default is not there; "missing setting(s)
    # source_url, store_url" once sent people looking for settings they had not lost.
    monkeypatch.chdir(tmp_path)
    said = (f"config file config/retention.toml not found in {Path.cwd()}: run retention "
            "from the repository folder, or set RETENTION_CONFIG to the config file's path "
            "(or RETENTION_SOURCE_URL and RETENTION_STORE_URL)")
    for environ in ({}, {"RETENTION_SOURCE_URL": "sqlite:///clinic.db"},
                    {"RETENTION_STORE_URL": "sqlite:///store.db", "RETENTION_MODELS_DIR": "m"}):
        with pytest.raises(ConfigError) as refused:
            load_settings(environ=environ)
        assert str(refused.value) == said
    with pytest.raises(ConfigError, match=r"config file .*other.toml does not exist$"):
        load_settings(tmp_path / "other.toml", environ={})
    with pytest.raises(ConfigError, match=r"other.toml does not exist \(set by RETENTION_CONFIG"):
        load_settings(environ={"RETENTION_CONFIG": str(tmp_path / "other.toml"),
                               "RETENTION_SOURCE_URL": "sqlite:///clinic.db",
                               "RETENTION_STORE_URL": "sqlite:///store.db"})


def test_a_deployment_configured_by_its_environment_alone_needs_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={"RETENTION_SOURCE_URL": "sqlite:///clinic.db",
                                      "RETENTION_STORE_URL": "sqlite:///store.db",
                                      "RETENTION_MODELS_DIR": "versions"})
    assert (settings.source_url, settings.store_url) == ("sqlite:///clinic.db",
                                                         "sqlite:///store.db")
    assert settings.models_dir == Path("versions")
    # And the file, where there is one, is still read under the environment's URLs.
    (tmp_path / "config").mkdir()
    write_config(tmp_path / "config", "horizon_days = 14\n")
    settings = load_settings(environ={"RETENTION_STORE_URL": "sqlite:///elsewhere.db"})
    assert (settings.store_url, settings.horizon_days) == ("sqlite:///elsewhere.db", 14)


def test_a_mapping_file_is_read_and_the_clinics_own_entries_win(tmp_path: Path) -> None:
    shipped = tmp_path / "ehr.toml"
    shipped.write_text(
        '[etl.queries]\nclients = "SELECT 1"\nepisodes = "SELECT 2"\n'
        "[etl.codes.appointments.status]\nNS = 'no_show'\nX = 'cancelled_by_client'\n")
    body = (f"[etl]\nmapping_file = '{shipped}'\n[etl.queries]\nepisodes = 'SELECT 3'\n"
            "[etl.codes.appointments.status]\nX = 'cancelled_by_clinic'\n")
    mapping = load_settings(write_config(tmp_path, body), environ={}).etl.mapping
    assert mapping.queries == {"clients": "SELECT 1", "episodes": "SELECT 3"}
    assert mapping.codes == {"appointments": {"status": {"NS": "no_show",
                                                         "X": "cancelled_by_clinic"}}}


@pytest.mark.parametrize(("text", "said"), [
    ("[etl.queries]\nvisits = 'SELECT 1'\n", r"ehr.toml: \[etl.queries\] 'visits' is not a"),
    ("[etl.codes.appointments.status]\nNS = 'gone'\n", r"maps to unknown code\(s\) gone"),
    ("[etl]\noverlap_minutes = 5\n", r"unknown setting\(s\) in \[etl\] of .*overlap_minutes"),
    ("[source]\nurl = 'x'\n", r"unknown setting\(s\) in .*ehr.toml: source"),
    ("[etl.queries\n", "is not valid TOML"),
])
def test_a_bad_mapping_file_is_refused_at_start(tmp_path: Path, text: str, said: str) -> None:
    shipped = tmp_path / "ehr.toml"
    shipped.write_text(text)
    with pytest.raises(ConfigError, match=said):
        parse_etl({"mapping_file": str(shipped)})


def test_a_missing_mapping_file_is_named() -> None:
    with pytest.raises(ConfigError, match=r"mapping_file nowhere\.toml does not exist"):
        parse_etl({"mapping_file": "nowhere.toml"})


def test_a_reload_in_parts_takes_ranges_worth_their_fixed_cost() -> None:
    """Each range pays a check's set-up and a read's connection: tiny ones are a typo."""
    assert parse_etl({}).reload_part_rows == 0
    assert parse_etl({"reload_part_rows": 2_000_000}).reload_part_rows == 2_000_000
    for bad in (500, -1, True, "1e6"):
        with pytest.raises(ConfigError, match=r"reload_part_rows must be 0 .* or at least 10,000"):
            parse_etl({"reload_part_rows": bad})


def test_a_reload_in_parts_needs_postgresql_at_both_ends(tmp_path: Path) -> None:
    """The ranges share the source's snapshot and are built beside the store's copy."""
    pg = "postgresql+psycopg://retention@db.internal/clinic"
    sqlite = f"sqlite:///{tmp_path / 'x.db'}"
    for source, store in ((sqlite, pg), (pg, sqlite)):
        with pytest.raises(ConfigError, match="reload_part_rows needs a PostgreSQL source and"):
            settings_from_mapping({"source_url": source, "store_url": store,
                                   "etl": {"reload_part_rows": 50_000}})
    both = settings_from_mapping({"source_url": pg, "store_url": pg,
                                  "etl": {"reload_part_rows": 50_000}})
    assert both.etl.reload_part_rows == 50_000
