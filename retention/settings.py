"""Settings: read once at the entry point from a TOML file, then the environment.

Every section is parsed and checked here, into typed objects, and the result is
passed down: nothing else reads the environment, the config file or a raw
section. An unknown key is refused with the nearest known one, so a typo fails
at start rather than being silently ignored.

    [etl.queries]
    appointments = "SELECT visit_id AS appointment_id, ... FROM ehr.visits"

    [etl.codes.appointments.status]
    NS = "no_show"
    ATT = "attended"
"""

from __future__ import annotations

import importlib.util
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from retention.clinic import contract
from retention.clinic.registry import Registry, default_registry, load_registry

# What the registry reads too, kept apart so that it need not import this module; named
# here as well, where the rest of the service imports them from.
from retention.config_base import INSTRUMENT_CODE as INSTRUMENT_CODE
from retention.config_base import INSTRUMENT_CODE_RULE as INSTRUMENT_CODE_RULE
from retention.config_base import SHIPPED_INSTRUMENTS_FILE as SHIPPED_INSTRUMENTS_FILE
from retention.config_base import ConfigError as ConfigError
from retention.config_base import unknown_keys

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_CONFIG_FILE = Path("config/retention.toml")

# Environment variables that override the file, and the field each sets.
ENV_OVERRIDES = {
    "RETENTION_SOURCE_URL": "source_url",
    "RETENTION_STORE_URL": "store_url",
    "RETENTION_MODELS_DIR": "models_dir",
    "RETENTION_REASONS_FILE": "reasons_file",
    "RETENTION_INSTRUMENTS_FILE": "instruments_file",
    "RETENTION_STORE_OWNER_URL": "store_owner_url",
    "RETENTION_MODEL_KEY_FILE": "model_key_file",
    "RETENTION_MODEL_KEY": "model_key",
}

# Calibration maps a model may be stored with (``retention.model.calibration``); "auto"
# in the settings chooses among them by comparison at each training.
CALIBRATION_METHODS: tuple[str, ...] = ("platt", "beta", "isotonic")

# Coded columns and the contract's codes for each: what ``[etl.codes]`` may map.
CODED_COLUMNS: dict[tuple[str, str], tuple[str, ...]] = {
    ("episodes", "program"): contract.PROGRAMS,
    ("episodes", "discharge_reason"): contract.DISCHARGE_REASONS,
    ("appointments", "status"): contract.APPOINTMENT_STATUSES,
    ("appointments", "service_type"): contract.SERVICE_TYPES,
    ("alliance_measures", "instrument"): contract.INSTRUMENTS,
    ("alliance_measures", "rater"): contract.RATERS,
    ("consents", "purpose"): contract.CONSENT_PURPOSES,
    ("client_contacts", "preferred_channel"): contract.CONTACT_CHANNELS,
}
# Coded columns whose codes are open: any code of this form is kept (the closed list in
# CODED_COLUMNS names the codes the contract knows by name).
OPEN_CODES: dict[tuple[str, str], re.Pattern[str]] = {
    ("alliance_measures", "instrument"): INSTRUMENT_CODE,
}


@dataclass(frozen=True)
class SourceMapping:
    """Per contract table, the query that produces it and the clinic's codes.

    A clinic whose EHR does not use the contract's table names, columns or codes
    maps it here instead of creating views (``docs/contract.md``).
    """

    queries: Mapping[str, str] = field(default_factory=dict)
    codes: Mapping[str, Mapping[str, Mapping[str, str]]] = field(default_factory=dict)

    def query(self, table: str) -> str:
        """The SQL that yields ``table`` in contract columns (the table itself by default)."""
        columns = ", ".join(c.name for c in contract.TABLES[table].columns)
        return self.queries.get(table) or f"SELECT {columns} FROM {table}"

    def is_mapped(self, table: str) -> bool:
        return table in self.queries

    def apply_codes(self, table: str, frame: pd.DataFrame) -> pd.DataFrame:
        """Replace the clinic's codes by the contract's; codes not listed pass unchanged."""
        maps = self.codes.get(table, {})
        if not maps or frame.empty:
            return frame
        out = frame.copy()
        for column, mapping in maps.items():
            out[column] = out[column].map(lambda v, m=mapping: m.get(v, v) if isinstance(v, str)
                                          else v)
        return out


@dataclass(frozen=True)
class EtlSettings:
    """``[etl]``: how the nightly run reads, checks and publishes."""

    mapping: SourceMapping = field(default_factory=SourceMapping)
    # A shipped mapping (config/mappings/openemr.toml) read before [etl.queries] and
    # [etl.codes], which override it entry by entry.
    mapping_file: Path | None = None
    # How a FHIR Bulk Data source (source_url "fhir-ndjson:<folder>") maps onto the contract:
    # questionnaires, code systems, extensions (config/mappings/fhir.toml by default).
    fhir_mapping_file: Path | None = None
    # Rows updated this long before the last watermark are read again: rows that share
    # the boundary, or whose transaction committed after a later one was read.
    overlap_minutes: int = 60
    # A run fails, publishing nothing, when more of the rows it read than a limit are bad
    # (``retention.etl.quarantine.limits_broken``): of all rows read; of one table's rows;
    # of one table's rows whose code in one coded column is neither a contract code nor
    # mapped; of one clinic's rows of one table. A mapping typo that drops a program is a
    # third of the episodes, however small a share of all rows (mostly items) it is.
    max_quarantine_share: float = 0.05
    max_table_quarantine_share: float = 0.05
    max_code_quarantine_share: float = 0.02
    max_clinic_quarantine_share: float = 0.05
    # A share for one table ("alliance_items") or coded column ("appointments.status")
    # in place of the one above.
    quarantine_limits: Mapping[str, float] = field(default_factory=dict)
    # Shares are judged from this many bad rows up: 3 bad of 20 rows changed on a quiet
    # night are not a broken mapping.
    quarantine_min_rows: int = 10
    # An appointment scheduled more than this many days after its row was last
    # written is a typing error ("2062" for "2026"), not a booking.
    max_days_ahead: int = 366
    # Incremental runs never see rows deleted at the source: a full reload (which
    # also reconciles deletions) runs when the last one is older than this.
    full_reload_after_days: int = 7
    # The nightly job retries a failed run this many times, waiting
    # retry_delay_seconds * retry_backoff ** (attempt - 1) before each retry.
    retry_attempts: int = 3
    retry_delay_seconds: float = 300.0
    retry_backoff: float = 3.0
    # Connections that read the clinic's PostgreSQL at once, all in one snapshot; processes
    # that validate a FHIR export's resources at once. MariaDB and MySQL: one connection.
    source_connections: int = 2
    # A full reload from PostgreSQL reads, checks and loads the large tables (slots,
    # measures with their items, notes) in key ranges of about this many rows, so the
    # job holds a range, not the network (``retention.etl.parts``); 0 reads them whole.
    reload_part_rows: int = 0
    # A PostgreSQL source role that is a superuser (or may read the server's files) is
    # refused: a mapping's query could copy any file or table into the store.
    allow_superuser_source: bool = False
    # Reasons cost far more than a risk (docs/performance.md), so they are worded where
    # a case manager reads them: the top of the whole list and of each caseload.
    reasons_top_n: int = 500
    reasons_per_caseload: int = 25
    # Processes that word reasons in parallel (one per 1,000 episodes to word).
    reasons_workers: int = 2
    # Days of history the scoped read keeps before the as-of date (features look 90 back).
    lookback_days: int = 91


@dataclass(frozen=True)
class EvaluationSettings:
    """``[evaluation]``: how a model is split, calibrated, judged and promoted."""

    # Share of snapshot dates held out for evaluation (latest) and calibration (before it).
    evaluate_share: float = 0.2
    calibrate_share: float = 0.15
    # "auto" compares Platt, beta and (with enough outcomes) isotonic calibration out of
    # time on the calibration slice and keeps the best; or name one of them.
    calibration_method: str = "auto"
    # Isotonic steps need many outcomes: fewer of either kind than this and it is not tried.
    isotonic_min_outcomes: int = 100
    # The calibration bound on the evaluation slice: expected calibration error (10
    # equal-width bins) at most max_ece, and no decile of predicted risk with at least
    # min_decile_rows rows off by more than max_decile_gap. The gate refuses a candidate
    # only when either is broken beyond chance (retention/evaluation/calibration.py); a
    # point estimate over the bound on a slice too small to tell is reported as a warning.
    calibration_max_ece: float = 0.02
    calibration_max_decile_gap: float = 0.08
    calibration_min_decile_rows: int = 30
    # A case manager's capacity: the top k episodes per clinic per snapshot date.
    capacity_k: int = 10
    # Bootstrap resamples of clients (clustered) for confidence intervals.
    bootstrap_samples: int = 200
    bootstrap_seed: int = 20260601
    # Subgroup metrics further than this from the whole population are flagged.
    fairness_tolerance: float = 0.05
    # Groups with fewer positives or negatives than this are reported, not judged.
    fairness_min_outcomes: int = 20
    # A candidate may be this much worse (AUROC, average precision) than the current model.
    promotion_tolerance: float = 0.01
    # Population stability index above which a feature or the score has drifted.
    drift_psi_threshold: float = 0.25
    # Below this many scored episodes PSI is mostly sampling noise: record it, flag nothing.
    drift_min_rows: int = 200
    # Cron for the weekly retrain job (minute hour day month weekday).
    retrain_cron: str = "0 4 * * 0"
    # Train on this many clients, drawn by clinic (retention/model/sampling.py), when the
    # network is larger: training memory then follows it, not the network. 0: every client.
    training_sample_clients: int = 0


ENGINE_KINDS = ("local", "dask")


@dataclass(frozen=True)
class EngineSettings:
    """``[engine]``: where the nightly run's features, scores and reasons are computed.

    "local" (the default) computes them in the job's own process. "dask" splits the open
    caseload into partitions of whole caseloads and computes each on a worker of the Dask
    cluster at ``scheduler`` (docs/network.md): memory per worker then follows the
    largest partition, not the network. Extract, check and load run in the job's process
    on either engine, except a full reload in parts (``EtlSettings.reload_part_rows``),
    whose key ranges the workers read and check on "dask" (``retention.engine.reload``).
    """

    kind: str = "local"
    # The Dask scheduler, "tcp://host:8786" or "tls://host:8786" (TLS: the three files).
    scheduler: str = ""
    # Open episodes a partition holds at most; a caseload (a case manager's clients, or a
    # clinic's clients with none) is never split, so one larger than this is a partition.
    partition_episodes: int = 20_000
    # TLS between this process, the scheduler and the workers (partitions carry patient
    # data): the certificate authority, and this process's certificate and key.
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None


@dataclass(frozen=True)
class Settings:
    """Everything the service needs to know about where it runs and how it behaves."""

    source_url: str
    store_url: str
    models_dir: Path = Path("models")
    reasons_file: Path = Path("config/reasons.toml")
    # The instrument registry (docs/contract.md): what each questionnaire a clinic sends
    # is, how it is scored and checked, and whether the model may read it.
    instruments_file: Path = SHIPPED_INSTRUMENTS_FILE
    # The store's owner, which runs migrations (`retention migrate`), so that store_url can
    # be an application role with only what it needs (`retention db roles`). Empty:
    # migrations run as store_url (with a warning on PostgreSQL).
    store_owner_url: str = ""
    # The key that signs model versions and the registry (retention/model/signing.py): a
    # file only its owner can read, outside models_dir; RETENTION_MODEL_KEY (the secret
    # itself, from the environment only) overrides it. Neither: the account's
    # ~/.config/retention/model-signing.key, created by the first training.
    model_key_file: Path | None = None
    model_key: str = field(default="", repr=False)
    horizon_days: int = 30
    # Training snapshots every this many days. 6 is coprime with 7, so the snapshots fall on
    # every weekday in turn: the list is scored every night, and days since the last session
    # or until the next one follow the week's timetable.
    snapshot_every_days: int = 6
    # Training uses snapshots no older than this before the training as-of date.
    training_window_days: int = 540
    # "Still engaged": attended a session within this many days before the as-of date.
    engaged_within_days: int = 14
    max_reasons: int = 3
    # A reason is shown only if it carries at least this share of the client's movement
    # from the starting point (an average client's risk), and at least this many points.
    min_reason_share: float = 0.1
    min_reason_points: float = 1.0
    seed: int = 42
    schedule_cron: str = "30 2 * * *"
    schedule_timezone: str = "UTC"
    misfire_grace_seconds: int = 6 * 3600
    api_max_limit: int = 500
    # /ready answers 503 when the served list is older than this (the API still serves it,
    # marked stale, to callers; a probe should route traffic elsewhere or page someone).
    max_list_age_days: int = 3
    # The publish guard (retention/publish_guard.py): a list whose open episodes or high
    # tier, in a clinic or in one of its programs, moved since the last published list by
    # more than this share and by at least publish_min_change is not published until an
    # operator accepts it (`retention score --accept-change "reason"`). On the synthetic
    # clinics (500 and 2,000 clients, 90 nights) no clinic moved by more than 6 open or 6
    # high-tier episodes (6.4 %) in a night, these limits stop none of the 90 nights nor a
    # list three nights after the last, and a weekly retrain moved a clinic's high tier by
    # at most 4; issue 16's incidents moved a clinic by 55 open (-40 %) and 13 high (+144 %).
    # The minimum keeps a small program's 3 becoming 5 from stopping a clinic.
    publish_max_change_share: float = 0.25
    publish_min_change: int = 8
    # Requests per minute per API key; the counter store is shared by every worker
    # ("redis://host:port/db"); "memory://" counts per process (dev server, tests).
    api_rate_limit_per_minute: int = 600
    api_rate_limit_storage: str = "memory://"
    # Access (issue 17). Requests that do not come from a key this worker already knows are
    # counted by client address before the key is looked at (sign-ins included); the address
    # is the socket's, or with trusted_proxies > 0 the one that many proxies forwarded
    # (X-Forwarded-For, werkzeug's ProxyFix). The first audit_denials_per_minute denials from
    # one address (or key) a minute are written one by one, the rest counted per minute.
    api_rate_limit_per_address_per_minute: int = 120
    trusted_proxies: int = 0
    audit_denials_per_minute: int = 30
    # The pages' sessions end after this long without a page, and this long after sign-in.
    web_session_idle_minutes: int = 30
    web_session_max_hours: int = 10
    # Every statement of an API request is cancelled after this long, and one waiting on
    # a lock after api_lock_timeout_seconds (PostgreSQL; on SQLite the wait for the write
    # lock): the caller gets 503 with Retry-After instead of a worker held until killed.
    api_statement_timeout_seconds: float = 5.0
    api_lock_timeout_seconds: float = 1.0
    # Where clients reach the API ("https://risk.clinic.example"): absolute URLs in FHIR
    # Bundles are built from it, never from the request's Host header; empty: relative.
    public_base_url: str = ""
    # SMART Backend Services (docs/smart-backend-services.md): an access token from
    # POST /oauth/token is a key that expires this many seconds after it is issued. The
    # specification recommends at most five minutes; an EHR asks for a new one as it needs.
    smart_token_seconds: int = 300
    # CDS Hooks (docs/cds-hooks.md): the identifier system under which the clinic's
    # client_identifiers table holds the EHR's FHIR Patient ids, so a patient-view hook's
    # context.patientId finds its client. Empty: the EHR's Patient ids are the client ids.
    cds_patient_id_system: str = ""
    # 42 CFR Part 2: an outside recipient (an ehr key, a SMART or CDS Hooks client) is given
    # a client's data only under a consent naming it, or a class of recipients the clinic
    # counts it in ("class:<name>" in the consents table), for this purpose.
    disclosure_purpose: str = "treatment"
    # The clinic database's time zone: the contract's timestamps carry none, so a consent
    # revoked at 14:00 there is compared with the time of a disclosure in that zone.
    clinic_timezone: str = "UTC"
    recipient_classes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # The pages' link into the clinic's EHR for a client (docs/web.md): an https URL with
    # {mrn} (the client's identifier under ehr_link_system) or {client_id}. Empty: no link.
    ehr_link_template: str = ""
    ehr_link_system: str = ""
    tiers: Mapping[str, float] = field(
        default_factory=lambda: {"high": 0.5, "medium": 0.25}
    )
    etl: EtlSettings = field(default_factory=EtlSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)

    @cached_property
    def instruments(self) -> Registry:
        """The instrument registry of ``instruments_file``, read and checked once (at
        start: ``_check`` reads it, so a broken registry fails there)."""
        if self.instruments_file == SHIPPED_INSTRUMENTS_FILE:
            return default_registry()
        return load_registry(self.instruments_file)

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests and CLI flags use this), checked again."""
        if isinstance(changes.get("etl"), Mapping):
            changes["etl"] = parse_etl(changes["etl"])
        if isinstance(changes.get("evaluation"), Mapping):
            changes["evaluation"] = parse_evaluation(changes["evaluation"])
        if isinstance(changes.get("engine"), Mapping):
            changes["engine"] = parse_engine(changes["engine"])
        if changes.get("instruments_file") is not None:
            changes["instruments_file"] = Path(changes["instruments_file"])
        settings = replace(self, **changes)
        _check(settings)
        return settings


def load_settings(
    path: Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read settings from a TOML file, then environment overrides.

    The source and store URLs have no defaults in code: a deployment without
    them fails here, at start, rather than later against the wrong database. The
    file may be missing only when the environment gives both URLs (a deployment
    configured by its environment alone); otherwise a missing file is the error.
    """
    environ = os.environ if environ is None else environ
    given = path is not None
    path = path or Path(environ.get("RETENTION_CONFIG", DEFAULT_CONFIG_FILE))
    from_environment = bool(environ.get("RETENTION_SOURCE_URL")
                            and environ.get("RETENTION_STORE_URL"))
    values: dict[str, Any] = {}
    if path.exists():
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
        values.update(_flatten(raw))
        if "model_key" in values:
            raise ConfigError(f"model_key is a secret and is not read from {path}: set "
                              "RETENTION_MODEL_KEY in the environment, or model_key_file")
    elif given and not from_environment:
        raise ConfigError(f"config file {path} does not exist")
    elif "RETENTION_CONFIG" in environ:
        raise ConfigError(f"config file {path} does not exist (set by RETENTION_CONFIG)")
    elif not from_environment:
        # Run from another folder, the relative default is not there: say so, rather than
        # name the settings it would have given. Both URLs in the environment need no file.
        raise ConfigError(f"config file {path} not found in {Path.cwd()}: run retention from "
                          "the repository folder, or set RETENTION_CONFIG to the config "
                          "file's path (or RETENTION_SOURCE_URL and RETENTION_STORE_URL)")
    for var, name in ENV_OVERRIDES.items():
        if environ.get(var):
            values[name] = environ[var]
    return settings_from_mapping(values, origin=str(path))


def settings_from_mapping(values: Mapping[str, Any], origin: str = "mapping") -> Settings:
    """Build and check ``Settings`` from plain values (sections ``etl`` and ``evaluation``
    as written in the file, or already parsed)."""
    _refuse_unknown(values, (f.name for f in fields(Settings)), origin)
    missing = [k for k in ("source_url", "store_url") if not values.get(k)]
    if missing:
        raise ConfigError(
            f"missing setting(s) {', '.join(missing)} in {origin}; "
            "set them in the config file or as RETENTION_SOURCE_URL / RETENTION_STORE_URL"
        )
    coerced = dict(values)
    for key in ("models_dir", "reasons_file", "instruments_file", "model_key_file"):
        if coerced.get(key) is not None:
            coerced[key] = Path(coerced[key])
    if isinstance(coerced.get("etl"), Mapping):
        coerced["etl"] = parse_etl(coerced["etl"])
    if isinstance(coerced.get("evaluation"), Mapping):
        coerced["evaluation"] = parse_evaluation(coerced["evaluation"])
    if isinstance(coerced.get("engine"), Mapping):
        coerced["engine"] = parse_engine(coerced["engine"])
    if isinstance(coerced.get("tiers"), Mapping):
        # The list, its pages and the publish guard know these tiers (and "low", the rest):
        # a misspelt one would be a tier nobody shows and a high tier that is empty.
        _refuse_unknown(coerced["tiers"], TIER_NAMES, "[list.tiers]")
    if isinstance(coerced.get("recipient_classes"), Mapping):
        coerced["recipient_classes"] = _recipient_classes(coerced["recipient_classes"])
    settings = Settings(**coerced)
    _check(settings)
    return settings


def _recipient_classes(raw: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """``[disclosure.recipient_classes]``: class name = [recipient ids]."""
    out = {}
    for name, members in raw.items():
        if not isinstance(members, list) or not all(isinstance(m, str) and m for m in members):
            raise ConfigError(f"[disclosure.recipient_classes] {name} must be a list of "
                              f"recipient ids, got {members!r}")
        out[str(name)] = tuple(members)
    return out


TIER_NAMES = ("high", "medium")
# Sections kept whole as one setting rather than flattened into their keys.
NESTED_SECTIONS = ("tiers", "etl", "evaluation", "engine", "recipient_classes")


def _flatten(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Sections in the file are for readers only; keys are unique across them."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, Mapping) and key not in NESTED_SECTIONS:
            flat.update(_flatten(value))
        else:
            flat[key] = value
    return flat


def _refuse_unknown(given: Iterable[str], known: Iterable[str], where: str) -> None:
    """Name every unknown key, with the known key it most likely meant."""
    named = unknown_keys(given, known)
    if named:
        raise ConfigError(f"unknown setting(s) in {where}: {', '.join(named)}")


def _check(s: Settings) -> None:
    if s.horizon_days < 1:
        raise ConfigError("horizon_days must be at least 1")
    if s.snapshot_every_days < 1:
        raise ConfigError("snapshot_every_days must be at least 1")
    if not 1 <= s.max_reasons <= 10:
        raise ConfigError("max_reasons must be between 1 and 10")
    if not 0 <= s.min_reason_share < 1 or s.min_reason_points < 0:
        raise ConfigError("min_reason_share must be in [0, 1) and min_reason_points >= 0")
    if any(not 0 < v < 1 for v in s.tiers.values()):
        raise ConfigError("tier thresholds must be probabilities between 0 and 1")
    if min(s.api_rate_limit_per_address_per_minute, s.audit_denials_per_minute,
           s.web_session_idle_minutes, s.web_session_max_hours) < 1 or s.trusted_proxies < 0:
        raise ConfigError("the address limit, audit_denials_per_minute and the session "
                          "timeouts must be at least 1, trusted_proxies at least 0")
    if s.publish_max_change_share <= 0 or s.publish_min_change < 1:
        raise ConfigError("publish_max_change_share must be positive and publish_min_change "
                          "at least 1")
    if not 0 < s.api_lock_timeout_seconds <= s.api_statement_timeout_seconds:
        raise ConfigError("api_lock_timeout_seconds must be positive and at most "
                          "api_statement_timeout_seconds")
    try:
        ZoneInfo(s.clinic_timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"clinic_timezone must be an IANA time zone name such as "
                          f"'America/New_York', got {s.clinic_timezone!r}") from None
    if s.disclosure_purpose not in contract.CONSENT_PURPOSES:
        raise ConfigError("disclosure_purpose must be one of "
                          f"{', '.join(contract.CONSENT_PURPOSES)}, "
                          f"got {s.disclosure_purpose!r}")
    if not 1 <= s.smart_token_seconds <= 3600:
        raise ConfigError("smart_token_seconds must be between 1 and 3600 (an hour), "
                          f"got {s.smart_token_seconds}")
    if s.cds_patient_id_system and not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*:\S+",
                                                    s.cds_patient_id_system):
        raise ConfigError("cds_patient_id_system must be a URI (an identifier system such as "
                          f"urn:oid:... or https://...), got {s.cds_patient_id_system!r}")
    if s.public_base_url and not re.fullmatch(r"https?://[^/?#\s]+(/[^?#\s]*)?",
                                              s.public_base_url):
        raise ConfigError("public_base_url must be an http(s) URL without query or fragment, "
                          f"got {s.public_base_url!r}")
    if s.engine.kind == "dask" and not s.store_url.startswith("postgresql"):
        raise ConfigError("[engine] kind = \"dask\" needs a PostgreSQL store: the workers "
                          "read the store's copy over the network (docs/network.md)")
    if s.etl.reload_part_rows and not (s.store_url.startswith("postgresql")
                                       and s.source_url.startswith("postgresql")):
        raise ConfigError("[etl] reload_part_rows needs a PostgreSQL source and store: the "
                          "ranges share the source's snapshot and load beside the store's "
                          "copy (docs/network.md); set it to 0 for this clinic")
    _check_ehr_link(s)
    _check_instrument_codes(s)


def _check_instrument_codes(s: Settings) -> None:
    """Read the instrument registry (a broken one fails here, at start), and refuse a
    mapping onto an instrument that is neither the contract's nor registered: a typo
    there would file every measure of the form under a code nothing reads."""
    registry = s.instruments
    known = set(contract.INSTRUMENTS) | set(registry.codes)
    mapped = s.etl.mapping.codes.get("alliance_measures", {}).get("instrument", {})
    bad = sorted({code for code in mapped.values() if code not in known})
    if bad:
        raise ConfigError(
            f"[etl.codes.alliance_measures.instrument] maps onto {', '.join(bad)}, neither "
            f"a contract instrument ({', '.join(contract.INSTRUMENTS)}) nor registered in "
            f"{s.instruments_file}: register the form there (docs/contract.md, \"The "
            "instrument registry\"), or correct the mapping")


EHR_LINK_FIELDS = ("mrn", "client_id")


def _check_ehr_link(s: Settings) -> None:
    """A link template is a fixed https URL with one client placeholder: no other braces,
    and {mrn} only with the identifier system that holds the MRNs."""
    template = s.ehr_link_template
    if not template:
        return
    fields_used = re.findall(r"\{([^{}]*)\}", template)
    if (not template.startswith("https://") or len(fields_used) != 1
            or fields_used[0] not in EHR_LINK_FIELDS
            or template.count("{") != 1 or template.count("}") != 1):
        raise ConfigError("ehr_link_template must be an https:// URL with exactly one of "
                          "{mrn} or {client_id}, e.g. 'https://ehr.example/patient/{mrn}', "
                          f"got {template!r}")
    if fields_used[0] == "mrn" and not s.ehr_link_system:
        raise ConfigError("ehr_link_template uses {mrn}: set ehr_link_system to the "
                          "identifier system of the MRNs in client_identifiers")


_ETL_SCALARS = [f.name for f in fields(EtlSettings) if f.name != "mapping"]
# The quarantine limits that are shares of rows read, by setting name.
# Smallest range of a full reload in parts: each costs a fixed ~0.1 s (a check's set-up,
# a read's connection) whatever it holds.
MIN_PART_ROWS = 10_000
QUARANTINE_SHARES = ("max_quarantine_share", "max_table_quarantine_share",
                     "max_code_quarantine_share", "max_clinic_quarantine_share")


def parse_etl(raw: Mapping[str, Any]) -> EtlSettings:
    """Check an ``[etl]`` section and build ``EtlSettings`` from it."""
    raw = dict(raw)
    mapping = _checked_mapping(raw.pop("queries", {}) or {}, raw.pop("codes", {}) or {})
    limits = _quarantine_limits(raw.pop("quarantine_limits", {}) or {})
    _refuse_unknown(raw, [*_ETL_SCALARS, "queries", "codes"], "[etl]")
    for name in ("mapping_file", "fhir_mapping_file"):
        if raw.get(name) is not None:
            raw[name] = Path(raw[name])
    if raw.get("mapping_file") is not None:
        # The clinic's own entries win over the shipped mapping's, table by table and code by
        # code: a clinic adjusts OpenEMR's mapping without copying all of it.
        shipped = load_mapping_file(raw["mapping_file"])
        codes = {t: dict(c) for t, c in shipped.codes.items()}
        for table, columns in mapping.codes.items():
            for column, own in columns.items():
                codes.setdefault(table, {})[column] = {**shipped.codes.get(table, {})
                                                       .get(column, {}), **own}
        mapping = SourceMapping(queries={**shipped.queries, **mapping.queries}, codes=codes)
    out = EtlSettings(mapping=mapping, quarantine_limits=limits, **raw)
    shares = {name: getattr(out, name) for name in QUARANTINE_SHARES}
    shares.update({f"quarantine_limits.{k}": v for k, v in limits.items()})
    for name, share in shares.items():
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
            raise ConfigError(f"[etl] {name} must be a share between 0 and 1, got {share!r}")
    if out.quarantine_min_rows < 0:
        raise ConfigError("[etl] quarantine_min_rows must be >= 0")
    if (out.overlap_minutes < 0 or out.retry_attempts < 1 or out.reasons_top_n < 1
            or out.reasons_per_caseload < 0 or out.reasons_workers < 1
            or out.source_connections < 1):
        raise ConfigError("[etl] overlap_minutes and reasons_per_caseload must be >= 0; "
                          "retry_attempts, reasons_top_n, reasons_workers and "
                          "source_connections >= 1")
    if out.lookback_days < 91:
        raise ConfigError("[etl] lookback_days must be at least 91 (features look 90 days back)")
    if (isinstance(out.reload_part_rows, bool) or not isinstance(out.reload_part_rows, int)
            or not (out.reload_part_rows == 0 or out.reload_part_rows >= MIN_PART_ROWS)):
        raise ConfigError(f"[etl] reload_part_rows must be 0 (read whole) or at least "
                          f"{MIN_PART_ROWS:,}, got {out.reload_part_rows!r}")
    if not isinstance(out.allow_superuser_source, bool):
        raise ConfigError("[etl] allow_superuser_source must be true or false")
    return out


def _checked_mapping(queries: Mapping[str, Any], codes: Mapping[str, Any],
                     origin: str = "[etl") -> SourceMapping:
    """Queries and codes checked: contract tables, SELECTs only, codes onto contract codes."""
    for table, sql in queries.items():
        if table not in contract.TABLES:
            raise ConfigError(f"{origin}.queries] {table!r} is not a contract table "
                              f"({', '.join(contract.TABLES)})")
        if not isinstance(sql, str) or not sql.strip().lower().startswith(("select", "with")):
            raise ConfigError(f"{origin}.queries] {table} must be a SELECT query")
    checked: dict[str, dict[str, dict[str, str]]] = {}
    for table, columns in codes.items():
        for column, mapping in (columns or {}).items():
            allowed = CODED_COLUMNS.get((table, column))
            if allowed is None:
                raise ConfigError(f"{origin}.codes.{table}.{column}]: not a coded contract "
                                  "column")
            pattern = OPEN_CODES.get((table, column))
            if pattern is not None:
                # Any well-formed code: which are registered is checked with the registry
                # (``_check_instrument_codes``).
                malformed = sorted(repr(v) for v in mapping.values()
                                   if not (isinstance(v, str) and pattern.fullmatch(v)))
                if malformed:
                    raise ConfigError(f"{origin}.codes.{table}.{column}] maps to "
                                      f"{', '.join(malformed)}, not a code of "
                                      f"{INSTRUMENT_CODE_RULE}")
                checked.setdefault(table, {})[column] = {str(k): str(v)
                                                         for k, v in mapping.items()}
                continue
            bad = sorted(str(v) for v in mapping.values() if v not in allowed)
            if bad:
                raise ConfigError(f"{origin}.codes.{table}.{column}] maps to unknown code(s) "
                                  f"{', '.join(bad)}; allowed: {', '.join(allowed)}")
            checked.setdefault(table, {})[column] = {str(k): str(v) for k, v in mapping.items()}
    return SourceMapping(queries=dict(queries), codes=checked)


def load_mapping_file(path: Path) -> SourceMapping:
    """A shipped or shared mapping (``config/mappings/openemr.toml``): ``[etl.queries]`` and
    ``[etl.codes]`` exactly as they would be written in the config file, nothing else."""
    try:
        with Path(path).open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"[etl] mapping_file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"[etl] mapping_file {path} is not valid TOML: {exc}") from None
    _refuse_unknown(raw, ["etl"], str(path))
    section = raw.get("etl") or {}
    _refuse_unknown(section, ["queries", "codes"], f"[etl] of {path}")
    return _checked_mapping(section.get("queries") or {}, section.get("codes") or {},
                            f"{path}: [etl")


def _quarantine_limits(raw: Mapping[str, Any]) -> dict[str, float]:
    """``[etl.quarantine_limits]`` by table or "table.column" (TOML reads an unquoted
    ``appointments.status`` as a nested table: both spellings are taken)."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}.{column}": v for column, v in value.items()})
        else:
            flat[str(key)] = value
    for scope in flat:
        table, _, column = scope.partition(".")
        if table not in contract.TABLES or (column and (table, column) not in CODED_COLUMNS):
            coded = ", ".join(f"{t}.{c}" for t, c in CODED_COLUMNS)
            raise ConfigError(f"[etl.quarantine_limits] {scope!r} is neither a contract table "
                              f"({', '.join(contract.TABLES)}) nor a coded column ({coded})")
    return flat


def parse_engine(raw: Mapping[str, Any]) -> EngineSettings:
    """Check an ``[engine]`` section and build ``EngineSettings`` from it."""
    _refuse_unknown(raw, (f.name for f in fields(EngineSettings)), "[engine]")
    values = dict(raw)
    for name in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
        values[name] = Path(values[name]) if values.get(name) else None
    out = EngineSettings(**values)
    if out.kind not in ENGINE_KINDS:
        raise ConfigError(f"[engine] kind must be one of {', '.join(ENGINE_KINDS)}, "
                          f"got {out.kind!r}")
    if out.kind == "dask" and not re.fullmatch(r"(tcp|tls)://[^\s/]+:\d+", out.scheduler):
        raise ConfigError("[engine] kind = \"dask\" needs scheduler, the Dask scheduler's "
                          f"address as tcp://host:port or tls://host:port, got "
                          f"{out.scheduler!r}")
    tls = (out.tls_ca_file, out.tls_cert_file, out.tls_key_file)
    if any(tls) and not all(tls):
        raise ConfigError("[engine] TLS needs all of tls_ca_file, tls_cert_file and "
                          "tls_key_file")
    if out.scheduler.startswith("tls://") and not all(tls):
        raise ConfigError("[engine] a tls:// scheduler needs tls_ca_file, tls_cert_file and "
                          "tls_key_file (docs/network.md)")
    if out.partition_episodes < 100:
        raise ConfigError("[engine] partition_episodes must be at least 100")
    if out.kind == "dask" and importlib.util.find_spec("distributed") is None:
        raise ConfigError("[engine] kind = \"dask\" needs Dask's distributed scheduler: "
                          "pip install 'retention[network]' (docs/network.md)")
    return out


def parse_evaluation(raw: Mapping[str, Any]) -> EvaluationSettings:
    """Check an ``[evaluation]`` section and build ``EvaluationSettings`` from it."""
    _refuse_unknown(raw, (f.name for f in fields(EvaluationSettings)), "[evaluation]")
    ev = EvaluationSettings(**raw)
    for name in ("evaluate_share", "calibrate_share"):
        if not 0 < getattr(ev, name) < 0.5:
            raise ConfigError(f"[evaluation] {name} must be between 0 and 0.5")
    if ev.calibration_method not in (*CALIBRATION_METHODS, "auto"):
        raise ConfigError("[evaluation] calibration_method must be auto or one of "
                          f"{', '.join(CALIBRATION_METHODS)}")
    if not (0 < ev.calibration_max_ece < 1 and 0 < ev.calibration_max_decile_gap < 1
            and ev.calibration_min_decile_rows >= 1 and ev.isotonic_min_outcomes >= 1):
        raise ConfigError("[evaluation] calibration bounds must be between 0 and 1, and "
                          "calibration_min_decile_rows and isotonic_min_outcomes at least 1")
    if ev.capacity_k < 1 or ev.bootstrap_samples < 10:
        raise ConfigError("[evaluation] capacity_k must be >= 1 and bootstrap_samples >= 10")
    for name in ("fairness_tolerance", "promotion_tolerance"):
        if not 0 <= getattr(ev, name) < 1:
            raise ConfigError(f"[evaluation] {name} must be between 0 and 1")
    if ev.drift_psi_threshold <= 0:
        raise ConfigError("[evaluation] drift_psi_threshold must be positive")
    if ev.training_sample_clients != 0 and ev.training_sample_clients < 100:
        raise ConfigError("[evaluation] training_sample_clients must be 0 (every client) or "
                          "at least 100")
    return ev
