"""Settings: read once at the entry point from a TOML file, then the environment.

Every other module receives a ``Settings`` object; nothing reads the
environment or the file system for configuration on its own.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_FILE = Path("config/retention.toml")

# Environment variables that override the file, and the field each sets.
ENV_OVERRIDES = {
    "RETENTION_SOURCE_URL": "source_url",
    "RETENTION_STORE_URL": "store_url",
    "RETENTION_MODELS_DIR": "models_dir",
    "RETENTION_REASONS_FILE": "reasons_file",
}


class ConfigError(ValueError):
    """The configuration is missing a value or holds one that cannot work."""


@dataclass(frozen=True)
class Settings:
    """Everything the service needs to know about where it runs and how it behaves."""

    source_url: str
    store_url: str
    models_dir: Path = Path("models")
    reasons_file: Path = Path("config/reasons.toml")
    horizon_days: int = 30
    snapshot_every_days: int = 7
    # Training uses snapshots no older than this before the training as-of date.
    training_window_days: int = 540
    # "Still engaged": attended a session within this many days before the as-of date.
    engaged_within_days: int = 14
    max_reasons: int = 3
    seed: int = 42
    schedule_cron: str = "30 2 * * *"
    schedule_timezone: str = "UTC"
    misfire_grace_seconds: int = 6 * 3600
    api_max_limit: int = 500
    # Requests per minute per API key; the counter store is shared by every worker
    # ("redis://host:port/db"); "memory://" counts per process (dev server, tests).
    api_rate_limit_per_minute: int = 600
    api_rate_limit_storage: str = "memory://"
    tiers: Mapping[str, float] = field(
        default_factory=lambda: {"high": 0.5, "medium": 0.25}
    )
    # The [etl] section as written: source mapping, quarantine limit, overlap, retries.
    # Parsed and checked by ``retention.etl_settings.etl_settings``.
    etl: Mapping[str, Any] = field(default_factory=dict)
    # The [evaluation] section: split shares, capacity k, bootstrap, calibration,
    # fairness and promotion tolerances, drift. Parsed by ``retention.model_settings``.
    evaluation: Mapping[str, Any] = field(default_factory=dict)

    def with_overrides(self, **changes: Any) -> Settings:
        """Return a copy with some fields changed (tests and CLI flags use this)."""
        return replace(self, **changes)


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
    """Build and validate ``Settings`` from plain values."""
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) in {origin}: {', '.join(unknown)}")
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
    settings = Settings(**coerced)
    _validate(settings)
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


def _validate(s: Settings) -> None:
    if s.horizon_days < 1:
        raise ConfigError("horizon_days must be at least 1")
    if s.snapshot_every_days < 1:
        raise ConfigError("snapshot_every_days must be at least 1")
    if not 1 <= s.max_reasons <= 10:
        raise ConfigError("max_reasons must be between 1 and 10")
    if any(not 0 < v < 1 for v in s.tiers.values()):
        raise ConfigError("tier thresholds must be probabilities between 0 and 1")
