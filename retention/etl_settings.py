"""The ``[etl]`` settings: how the clinic's schema maps onto the contract, and run limits.

A clinic whose EHR does not use the contract's table names, columns or codes maps
it here instead of creating views: each contract table may be replaced by a SQL
query against the clinic's own schema, and each coded column by a table of codes.

    [etl.queries]
    appointments = "SELECT visit_id AS appointment_id, ... FROM ehr.visits"

    [etl.codes.appointments.status]
    NS = "no_show"
    ATT = "attended"
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import pandas as pd

from retention import contract
from retention.config import ConfigError, Settings

# Coded columns and the contract's codes for each.
CODED_COLUMNS: dict[tuple[str, str], tuple[str, ...]] = {
    ("episodes", "program"): contract.PROGRAMS,
    ("episodes", "discharge_reason"): contract.DISCHARGE_REASONS,
    ("appointments", "status"): contract.APPOINTMENT_STATUSES,
    ("appointments", "service_type"): contract.SERVICE_TYPES,
    ("alliance_measures", "instrument"): contract.INSTRUMENTS,
    ("alliance_measures", "rater"): contract.RATERS,
}


@dataclass(frozen=True)
class SourceMapping:
    """Per contract table, the query that produces it and the clinic's codes."""

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
    """How the nightly run reads, checks and publishes."""

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
    # Connections that read the clinic's PostgreSQL at once, all in one snapshot: the
    # server writes two tables' COPY on two cores. 1 reads one table after another.
    source_connections: int = 2
    # Reasons (per-feature contributions, about 100 times the cost of a prediction, and
    # about 0.6 ms of wording per episode) are computed where a case manager reads them:
    # the top of the whole list and the top of each case manager's caseload.
    reasons_top_n: int = 500
    reasons_per_caseload: int = 25
    # Processes that word reasons in parallel (the nightly machine has 2 cores); a
    # process is forked only per 1,000 episodes to word, below which forking costs more.
    reasons_workers: int = 2
    # Days of history the scoped read keeps before the as-of date (features look 90 back).
    lookback_days: int = 91


_SCALARS = {f.name for f in fields(EtlSettings)} - {"mapping"}


def etl_settings(settings: Settings) -> EtlSettings:
    """Parse and check the ``[etl]`` section of the settings."""
    return parse_etl(settings.etl)


def parse_etl(raw: Mapping[str, Any]) -> EtlSettings:
    """Check an ``[etl]`` mapping and build ``EtlSettings`` from it."""
    raw = dict(raw)
    queries = dict(raw.pop("queries", {}) or {})
    codes = raw.pop("codes", {}) or {}
    unknown = sorted(set(raw) - _SCALARS)
    if unknown:
        raise ConfigError(f"unknown setting(s) in [etl]: {', '.join(unknown)}")
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
