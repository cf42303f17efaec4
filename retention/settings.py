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

import difflib
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retention.clinic import contract

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_CONFIG_FILE = Path("config/retention.toml")

# Environment variables that override the file, and the field each sets.
ENV_OVERRIDES = {
    "RETENTION_SOURCE_URL": "source_url",
    "RETENTION_STORE_URL": "store_url",
    "RETENTION_MODELS_DIR": "models_dir",
    "RETENTION_REASONS_FILE": "reasons_file",
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
}


class ConfigError(ValueError):
    """The configuration is missing a value or holds one that cannot work."""


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
    # Rows updated this long before the last watermark are read again: rows that share
    # the boundary, or whose transaction committed after a later one was read.
    overlap_minutes: int = 60
    # A run fails, publishing nothing, when more of the rows it read than this are bad.
    max_quarantine_share: float = 0.05
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
    # Connections that read the clinic's PostgreSQL at once, all in one snapshot.
    source_connections: int = 2
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


@dataclass(frozen=True)
class Settings:
    """Everything the service needs to know about where it runs and how it behaves."""

    source_url: str
    store_url: str
    models_dir: Path = Path("models")
    reasons_file: Path = Path("config/reasons.toml")
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
    # Requests per minute per API key; the counter store is shared by every worker
    # ("redis://host:port/db"); "memory://" counts per process (dev server, tests).
    api_rate_limit_per_minute: int = 600
    api_rate_limit_storage: str = "memory://"
    tiers: Mapping[str, float] = field(
        default_factory=lambda: {"high": 0.5, "medium": 0.25}
    )
    etl: EtlSettings = field(default_factory=EtlSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests and CLI flags use this), checked again."""
        if isinstance(changes.get("etl"), Mapping):
            changes["etl"] = parse_etl(changes["etl"])
        if isinstance(changes.get("evaluation"), Mapping):
            changes["evaluation"] = parse_evaluation(changes["evaluation"])
        settings = replace(self, **changes)
        _check(settings)
        return settings


def load_settings(
    path: Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read settings from a TOML file (if present), then environment overrides.

    The source and store URLs have no defaults in code: a deployment without
    them fails here, at start, rather than later against the wrong database.
    """
    environ = os.environ if environ is None else environ
    path = path or Path(environ.get("RETENTION_CONFIG", DEFAULT_CONFIG_FILE))
    values: dict[str, Any] = {}
    if path.exists():
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
        values.update(_flatten(raw))
    elif "RETENTION_CONFIG" in environ:
        raise ConfigError(f"config file {path} does not exist (set by RETENTION_CONFIG)")
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
    for key in ("models_dir", "reasons_file"):
        if key in coerced:
            coerced[key] = Path(coerced[key])
    if isinstance(coerced.get("etl"), Mapping):
        coerced["etl"] = parse_etl(coerced["etl"])
    if isinstance(coerced.get("evaluation"), Mapping):
        coerced["evaluation"] = parse_evaluation(coerced["evaluation"])
    settings = Settings(**coerced)
    _check(settings)
    return settings


# Sections kept whole as one setting rather than flattened into their keys.
NESTED_SECTIONS = ("tiers", "etl", "evaluation")


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
    known = list(known)
    unknown = sorted(set(given) - set(known))
    if not unknown:
        return
    named = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        named.append(f"{key} (did you mean {close[0]}?)" if close else key)
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


_ETL_SCALARS = [f.name for f in fields(EtlSettings) if f.name != "mapping"]


def parse_etl(raw: Mapping[str, Any]) -> EtlSettings:
    """Check an ``[etl]`` section and build ``EtlSettings`` from it."""
    raw = dict(raw)
    queries = dict(raw.pop("queries", {}) or {})
    codes = raw.pop("codes", {}) or {}
    _refuse_unknown(raw, [*_ETL_SCALARS, "queries", "codes"], "[etl]")
    for table, sql in queries.items():
        if table not in contract.TABLES:
            raise ConfigError(f"[etl.queries] {table!r} is not a contract table "
                              f"({', '.join(contract.TABLES)})")
        if not isinstance(sql, str) or not sql.strip().lower().startswith(("select", "with")):
            raise ConfigError(f"[etl.queries] {table} must be a SELECT query")
    checked_codes: dict[str, dict[str, dict[str, str]]] = {}
    for table, columns in codes.items():
        for column, mapping in (columns or {}).items():
            allowed = CODED_COLUMNS.get((table, column))
            if allowed is None:
                raise ConfigError(f"[etl.codes.{table}.{column}]: not a coded contract column")
            bad = sorted(v for v in mapping.values() if v not in allowed)
            if bad:
                raise ConfigError(f"[etl.codes.{table}.{column}] maps to unknown code(s) "
                                  f"{', '.join(bad)}; allowed: {', '.join(allowed)}")
            checked_codes.setdefault(table, {})[column] = {str(k): str(v)
                                                            for k, v in mapping.items()}
    out = EtlSettings(mapping=SourceMapping(queries=queries, codes=checked_codes), **raw)
    if not 0 <= out.max_quarantine_share <= 1:
        raise ConfigError("[etl] max_quarantine_share must be between 0 and 1")
    if (out.overlap_minutes < 0 or out.retry_attempts < 1 or out.reasons_top_n < 1
            or out.reasons_per_caseload < 0 or out.reasons_workers < 1
            or out.source_connections < 1):
        raise ConfigError("[etl] overlap_minutes and reasons_per_caseload must be >= 0; "
                          "retry_attempts, reasons_top_n, reasons_workers and "
                          "source_connections >= 1")
    if out.lookback_days < 91:
        raise ConfigError("[etl] lookback_days must be at least 91 (features look 90 days back)")
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
    return ev
