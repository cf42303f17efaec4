"""The quarantine: how much of a run it may hold, and what it holds.

Rows that break the contract are held back (``retention.etl.validation``) and the run
goes on. A few are typos; many in one place are a broken mapping or an EHR upgrade,
and a list built without them is thin where nobody looks. So a run stops, storing
and publishing nothing, when its rows break the contract beyond a limit where the
harm is (``limits_broken``): all rows read, one table, one coded column, one clinic's
rows of a table.

``report`` summarises the quarantine for `retention quality`: counts by table and
rule, keys as examples, and for coded columns the codes that are neither the
contract's nor mapped, with counts. Codes are not patient data; no other value is
ever shown. Rows are written by the ETL (``retention.etl.load.apply``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import numpy as np
import pandas as pd
from sqlalchemy import Connection, func, select

from retention.clinic import ids
from retention.etl.validation import ORDER, RULES, Outcome, rows_from_json
from retention.settings import CODED_COLUMNS, OPEN_CODES, EtlSettings
from retention.store import tables

MOST_CODES = 20  # distinct codes listed per column; the rest are counted together
# A record the source could not read as a row at all (``retention.etl.load.Extract``):
# held under its table like a row, counted by the limits as a row read of it.
MALFORMED_RESOURCE = "malformed_resource"
SOURCE_RULES = {MALFORMED_RESOURCE: "a FHIR resource that could not be read: not JSON, not "
                                    "its file's resource type, or not valid FHIR R4"}


@dataclass(frozen=True)
class Breach:
    """A quarantine limit the rows read went over, and what to look at or change."""

    kind: str  # "code", "table", "clinic" or "all"
    scope: str  # "episodes.program", "episodes", "episodes of clinic 'east'", "all tables"
    bad: int
    read: int
    limit: float
    setting: str
    rules: Mapping[str, int] = field(default_factory=dict)  # bad rows by rule
    codes: Mapping[str, int] = field(default_factory=dict)  # unmapped codes, most first
    mapped: tuple[str, ...] = ()  # the clinic's codes the mapping lists for the column

    @property
    def share(self) -> float:
        return self.bad / self.read if self.read else 0.0

    def describe(self) -> str:
        """One line: where, how many, the limit and its setting, and what was found."""
        what = ("have a code that is neither a contract code nor mapped" if self.kind == "code"
                else "break the contract")
        line = (f"{self.scope}: {self.bad:,} of {self.read:,} rows read ({self.share:.1%}) "
                f"{what}, over the limit of {self.limit:.1%} ({self.setting})")
        if self.kind == "code":
            line += f". Codes: {counted(self.codes)}"
            if self.mapped:
                line += f"; [etl.codes.{self.scope}] maps {', '.join(self.mapped)}"
        elif self.rules:
            line += f". By rule: {counted(self.rules)}"
        return line

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "share": round(self.share, 6), "mapped": list(self.mapped)}


@dataclass
class Tally:
    """What the quarantine limits judge of the rows read, in counts that add up.

    A run's tally is the sum (``+``) of the tallies of any split of its rows that checks
    each row as the whole would (every row of a key, and a client's rows, in one part):
    the key ranges of a reload in parts, checked apart (``retention.etl.parts``), are judged
    as one run. Clinics are the clients' ``clinic_id`` values.
    """

    rows: Counter[str] = field(default_factory=Counter)  # rows read, by table
    unreadable: Counter[str] = field(default_factory=Counter)  # records that were no rows
    bad: Counter[tuple[str, str]] = field(default_factory=Counter)  # (table, rule)
    code_rows: Counter[str] = field(default_factory=Counter)  # "table.column": unmapped
    codes: dict[str, Counter[str]] = field(default_factory=dict)  # those by shown code
    # Rows read of a known clinic by (table, clinic), bad ones by (table, clinic, rule);
    # None when not counted (no table had enough bad rows for a clinic to be judged).
    clinic_rows: Counter[tuple[str, Any]] | None = None
    clinic_bad: Counter[tuple[str, Any, str]] | None = None

    def __add__(self, other: Tally) -> Tally:
        codes = {scope: self.codes.get(scope, Counter()) + other.codes.get(scope, Counter())
                 for scope in {**self.codes, **other.codes}}
        counted = self.clinic_rows is not None and other.clinic_rows is not None
        return Tally(
            self.rows + other.rows, self.unreadable + other.unreadable, self.bad + other.bad,
            self.code_rows + other.code_rows, codes,
            _sum(self.clinic_rows, other.clinic_rows) if counted else None,
            _sum(self.clinic_bad, other.clinic_bad) if counted else None)

    def bad_rows(self, table: str) -> int:
        """Rows read of ``table`` that broke a rule (records that were no rows aside)."""
        return sum(n for (t, _), n in self.bad.items() if t == table)

    def unmapped_codes(self) -> dict[str, dict[str, int]]:
        """Per coded column ("table.column"), the codes read that are neither contract codes
        nor mapped, with their counts."""
        return {scope: most_codes(self.codes[scope]) for scope in self.code_scopes()}

    def code_scopes(self) -> list[str]:
        """The coded columns ("table.column") with codes not mapped, in the contract's order."""
        order = [f"{t}.{c}" for t, c in CODED_COLUMNS]
        return sorted((s for s, n in self.code_rows.items() if n), key=order.index)


def _sum(a: Counter[Any] | None, b: Counter[Any] | None) -> Counter[Any]:
    return (a or Counter()) + (b or Counter())


def count(outcome: Outcome, read: Mapping[str, int], unreadable: Mapping[str, int] | None = None,
          clinics_from: int = 0, clients: pd.DataFrame | None = None) -> Tally:
    """The tally of the rows read of ``outcome``.

    ``read``: per table, how many of the rows ``outcome`` checked were read in this run
    (they come first; rows carried over from the quarantine follow and are not judged).
    ``unreadable``: per table, records read that were no rows at all (held as
    ``malformed_resource``): bad rows read of their table, whose clinic is not known.
    Rows are counted by clinic when a table has ``clinics_from`` bad rows or more (the
    least a clinic's share is judged from): finding each row's clinic is most of the cost,
    and most nights need none. A part of a larger run counts them always (0), and a part
    of the tables that look clients up finds their clinics in ``clients``, the clients
    read (``client_id``, ``clinic_id``), rather than among its own rows.
    """
    tally = Tally(unreadable=Counter({t: n for t, n in (unreadable or {}).items() if n}))
    bad = {t: ~outcome.ok[t].to_numpy()[:read[t]] for t in ORDER}
    for table in ORDER:
        tally.rows[table] = read[table]
        if bad[table].any():
            rules = outcome.rules[table].iloc[:read[table]][bad[table]]
            tally.bad.update({(table, str(r)): int(n) for r, n in rules.value_counts().items()})
    for (table, column), mask in outcome.unmapped.items():
        hit = mask.to_numpy()[:read[table]]
        if hit.any():
            scope = f"{table}.{column}"
            tally.code_rows[scope] = int(hit.sum())
            tally.codes[scope] = shown_counts(
                outcome.checked[table][column].iloc[:read[table]][hit])
    if any(b.sum() >= clinics_from for b in bad.values()):
        tally.clinic_rows, tally.clinic_bad = Counter(), Counter()
        clinic_of, clinics = _clinics(outcome, clients)
        for table in ORDER:
            at = clinic_of[table][:read[table]]
            known = at >= 0
            rows = np.bincount(at[known], minlength=len(clinics))
            tally.clinic_rows.update({(table, clinics[k]): int(rows[k])
                                      for k in np.flatnonzero(rows)})
            held = known & bad[table]
            if held.any():
                pairs = pd.DataFrame({"k": at[held], "rule": np.asarray(
                    outcome.rules[table].iloc[:read[table]][held], dtype=object)})
                for key, n in pairs.value_counts(sort=False).items():
                    k, rule = cast(tuple[int, Any], key)
                    tally.clinic_bad[(table, clinics[k], str(rule))] = int(n)
    return tally


def clinics_judged_from(etl: EtlSettings) -> int:
    """The bad rows of a table from which its clinics' shares are judged (``count``'s
    ``clinics_from``): no clinic holds more of them than the table."""
    return max(etl.quarantine_min_rows, 1)


def judge(tally: Tally, etl: EtlSettings) -> list[Breach]:
    """The limits a run's ``tally`` went over, most specific first (codes, tables,
    clinics, all rows). A share is judged only from ``quarantine_min_rows`` bad rows up."""
    found: list[Breach] = []

    def keep(breach: Breach) -> None:
        if breach.read and breach.bad >= etl.quarantine_min_rows and (
                breach.bad > breach.limit * breach.read):
            found.append(breach)

    for scope in tally.code_scopes():
        table, column = scope.split(".", 1)
        limit, setting = _limit(etl, scope, "max_code_quarantine_share")
        keep(Breach("code", scope, tally.code_rows[scope], tally.rows[table], limit, setting,
                    codes=most_codes(tally.codes[scope]),
                    mapped=tuple(etl.mapping.codes.get(table, {}).get(column, {}))))

    for table in ORDER:
        limit, setting = _limit(etl, table, "max_table_quarantine_share")
        lost = tally.unreadable[table]
        keep(Breach("table", table, tally.bad_rows(table) + lost, tally.rows[table] + lost,
                    limit, setting, rules=_by_rule(tally.bad, table, lost)))

    judged = [t for t in ORDER if tally.bad_rows(t) >= clinics_judged_from(etl)]
    if judged and (tally.clinic_rows is None or tally.clinic_bad is None):
        raise ValueError("the tally did not count rows by clinic, and a clinic must be judged")
    clinic_rows, clinic_bad = tally.clinic_rows or Counter(), tally.clinic_bad or Counter()
    said = {(b.scope, b.bad, b.read) for b in found if b.kind == "table"}
    for table in judged:
        limit, setting = _limit(etl, table, "max_clinic_quarantine_share")
        by_clinic: dict[Any, Counter[str]] = {}
        for (t, clinic, rule), n in clinic_bad.items():
            if t == table:
                by_clinic.setdefault(clinic, Counter())[rule] += n
        for clinic in sorted(by_clinic, key=show_code):
            held, rows = sum(by_clinic[clinic].values()), clinic_rows[(table, clinic)]
            if (table, held, rows) in said:
                continue  # the clinic is all the table's rows read: said once already
            keep(Breach("clinic", f"{table} of clinic {show_code(clinic)}", held, rows, limit,
                        setting, rules=_ordered(by_clinic[clinic])))

    lost = sum(tally.unreadable.values())
    rules: Counter[str] = Counter()
    for (_, rule), n in tally.bad.items():
        rules[rule] += n
    rules[MALFORMED_RESOURCE] += lost
    keep(Breach("all", "all tables", sum(tally.bad.values()) + lost,
                sum(tally.rows.values()) + lost, etl.max_quarantine_share,
                "[etl] max_quarantine_share", rules=_ordered(rules)))
    return found


def limits_broken(outcome: Outcome, read: Mapping[str, int], etl: EtlSettings,
                  unreadable: Mapping[str, int] | None = None) -> list[Breach]:
    """The limits the rows read of ``outcome`` went over (``count``, then ``judge``)."""
    return judge(count(outcome, read, unreadable, clinics_judged_from(etl)), etl)


def _by_rule(bad: Counter[tuple[str, str]], table: str, lost: int) -> dict[str, int]:
    rules = Counter({rule: n for (t, rule), n in bad.items() if t == table})
    rules[MALFORMED_RESOURCE] += lost
    return _ordered(rules)


def _ordered(counts: Counter[str]) -> dict[str, int]:
    """Most first, then by name: the same order however the counts were added up."""
    return dict(sorted(((k, n) for k, n in counts.items() if n), key=lambda kv: (-kv[1], kv[0])))


def _limit(etl: EtlSettings, scope: str, default: str) -> tuple[float, str]:
    """The limit for a table or coded column, and the setting that sets it. A table's
    own limit holds for each clinic's rows of it too."""
    if scope in etl.quarantine_limits:
        return float(etl.quarantine_limits[scope]), f'"{scope}" in [etl.quarantine_limits]'
    setting = f"[etl] {default}"
    if default != "max_clinic_quarantine_share":
        setting += f', or "{scope}" in [etl.quarantine_limits]'
    return float(getattr(etl, default)), setting


def _clinics(outcome: Outcome, clients: pd.DataFrame | None = None
             ) -> tuple[dict[str, np.ndarray], list[Any]]:
    """Per table, each row's clinic (a position in the list returned, -1 if unknown):
    a client's own, a row's client's (in ``clients`` if given), an item's measure's
    client's."""
    own = clients is None
    clients = outcome.checked["clients"] if clients is None else clients
    codes, clinics = pd.factorize(clients["clinic_id"].astype(object))
    codes = np.asarray(codes, dtype=np.int64)

    def through(values: pd.Series, within: pd.Series, clinic: np.ndarray) -> np.ndarray:
        if not len(within):
            return np.full(len(values), -1, dtype=np.int64)
        at = _first_positions(values, within)
        return np.where(at >= 0, clinic[np.maximum(at, 0)], -1)

    out = {"clients": codes if own else through(outcome.checked["clients"]["client_id"],
                                                clients["client_id"], codes)}
    for table in ("episodes", "appointments", "alliance_measures", "session_observations",
                  "consents", "client_identifiers", "client_contacts"):
        out[table] = through(outcome.checked[table]["client_id"], clients["client_id"], codes)
    measures = outcome.checked["alliance_measures"]
    out["alliance_items"] = through(outcome.checked["alliance_items"]["measure_id"],
                                    measures["measure_id"], out["alliance_measures"])
    return out, list(clinics)


def _first_positions(values: pd.Series, within: pd.Series) -> np.ndarray:
    """Each value's first position in ``within`` (-1 if absent), whatever the types."""
    try:
        return ids.positions(values, within)
    except (TypeError, ValueError):  # ids that are not all text, with duplicates
        index = pd.Index(np.asarray(within, dtype=object))
        first = ~index.duplicated()
        at = index[first].get_indexer(np.asarray(values, dtype=object))
        return np.where(at >= 0, np.flatnonzero(first)[np.maximum(at, 0)], -1)


# --- how codes are shown ------------------------------------------------------------


def show_code(value: Any) -> str:
    """A code as shown: quoted, control characters escaped, at most 34 characters."""
    if isinstance(value, np.generic):
        value = value.item()
    text = repr(value)
    return text if len(text) <= 34 else text[:33] + "…"


def shown_counts(values: Iterable[Any]) -> Counter[str]:
    """Codes as shown, with their counts (codes shown alike counted together)."""
    counts = pd.Series(list(values) if not isinstance(values, pd.Series) else values,
                       dtype=object).value_counts(dropna=True)
    shown: Counter[str] = Counter()
    for value, n in counts.items():
        if n:
            shown[show_code(value)] += int(n)
    return shown


def most_codes(shown: Mapping[str, int]) -> dict[str, int]:
    """Shown codes most frequent first; beyond ``MOST_CODES`` the rest counted together."""
    ordered = sorted(((k, n) for k, n in shown.items() if n), key=lambda kv: (-kv[1], kv[0]))
    out = dict(ordered[:MOST_CODES])
    rest = ordered[MOST_CODES:]
    if rest:
        out[f"({len(rest)} more codes)"] = sum(n for _, n in rest)
    return out


def code_counts(values: Iterable[Any]) -> dict[str, int]:
    """Codes as shown, with their counts, most frequent first; beyond ``MOST_CODES``
    distinct codes the rest are counted together."""
    return most_codes(shown_counts(values))


def counted(counts: Mapping[str, int]) -> str:
    """``'OP' 303, 'OPX' 2`` (codes as ``show_code`` shows them) or ``unknown_code 303``."""
    return ", ".join(f"{k} {n:,}" for k, n in counts.items())


# --- the report for `retention quality` ---------------------------------------------


def report(connection: Connection, examples: int = 3) -> dict[str, Any]:
    """What the quarantine holds and which run left it; what the last ETL run found.

    The quarantine is written only by a run that succeeds: after a failed run it is
    still what the last successful one left, and the failed run's findings (counts by
    table and rule, codes not mapped, limits broken) come from its run record.
    """
    q = tables.quarantine
    rows = connection.execute(
        select(q.c.table_name, q.c.rule, func.count(), func.min(q.c.quarantined_at))
        .group_by(q.c.table_name, q.c.rule)
        .order_by(q.c.table_name, q.c.rule)
    ).fetchall()
    groups = []
    for table_name, rule, count, since in rows:
        keys = connection.execute(
            select(q.c.row_key).where(q.c.table_name == table_name, q.c.rule == rule)
            .order_by(q.c.row_key).limit(examples)
        ).scalars().all()
        meaning = RULES.get(rule) or SOURCE_RULES.get(rule, "")
        groups.append({"table": table_name, "rule": rule, "meaning": meaning,
                       "keys": int(count), "since": since, "examples": list(keys)})
    runs = tables.runs
    last = connection.execute(select(runs).where(runs.c.kind == "etl")
                              .order_by(runs.c.run_id.desc()).limit(1)).first()
    left_by = connection.execute(
        select(runs).where(runs.c.kind == "etl", runs.c.status == "succeeded")
        .order_by(runs.c.run_id.desc()).limit(1)).first()
    return {
        "total": sum(g["keys"] for g in groups),
        "groups": groups,
        "unmapped_codes": _held_codes(connection),
        "held_since_run": None if left_by is None else _run_summary(left_by),
        "last_etl": None if last is None else _run_summary(last),
    }


def _run_summary(run: Any) -> dict[str, Any]:
    detail = json.loads(run.detail) if run.detail else {}
    return {
        "run_id": run.run_id, "as_of": run.as_of, "status": run.status,
        "stored": run.status == "succeeded", "rows_read": run.rows_read,
        "rows_quarantined": run.rows_quarantined, "error": run.error,
        "quarantine_by_rule": detail.get("quarantine_by_rule", {}),
        "unmapped_codes": detail.get("unmapped_codes", {}),
        "over_limits": detail.get("over_limits", []),
    }


def _held_codes(connection: Connection) -> dict[str, dict[str, int]]:
    """Per coded column, the codes in held rows that are neither contract codes nor
    mapped (the rows keep the codes as the mapping left them), with counts. For a column
    of open codes (instruments), the codes that are not of its form: any other is kept."""
    q = tables.quarantine
    coded = sorted({t for t, _ in CODED_COLUMNS})
    found: dict[str, list[Any]] = {}
    for table_name, rows_json in connection.execute(
            select(q.c.table_name, q.c.rows_json).where(q.c.table_name.in_(coded))):
        for row in rows_from_json(rows_json):
            for (table, column), allowed in CODED_COLUMNS.items():
                value = row.get(column) if table == table_name else None
                pattern = OPEN_CODES.get((table, column))
                if value is None or (value in allowed if pattern is None else (
                        isinstance(value, str) and pattern.fullmatch(value))):
                    continue
                found.setdefault(f"{table}.{column}", []).append(value)
    return {scope: code_counts(values) for scope, values in sorted(found.items())}


def format_report(data: dict[str, Any]) -> list[str]:
    """The report as lines of text: the last run's findings first if it stored nothing,
    then the quarantine and the run that left it."""
    lines: list[str] = []
    last, left_by = data["last_etl"], data["held_since_run"]
    if last is None:
        return ["no ETL run yet: the quarantine is empty"]
    if not last["stored"]:
        lines.extend(_failed_run_lines(last))
    if left_by is None:
        lines.append("no ETL run has succeeded yet: the quarantine is empty")
        return lines
    held = f"{data['total']:,} keys ({left_by['rows_quarantined'] or 0:,} rows) held"
    where = "is still as" if not last["stored"] else "as"
    lines.append(f"the quarantine {where} ETL run {left_by['run_id']} "
                 f"(as of {left_by['as_of']}, succeeded) left it: "
                 + (held if data["groups"] else "empty, every row read passed the contract"))
    if not data["groups"]:
        return lines
    lines.append(f"  {'table':<18} {'rule':<28} {'keys':>7}  since (UTC)          examples")
    for g in data["groups"]:
        lines.append(f"  {g['table']:<18} {g['rule']:<28} {g['keys']:>7,}  "
                     f"{g['since']:%Y-%m-%d %H:%M:%S}  {', '.join(g['examples'])}")
    lines.extend(_code_lines("codes held that are neither contract codes nor mapped "
                             "(map them in [etl.codes.<table>.<column>]):",
                             data["unmapped_codes"]))
    lines.append("rules: " + "; ".join(
        f"{g['rule']} = {g['meaning']}" for g in {g['rule']: g for g in data["groups"]}.values()))
    return lines


def _failed_run_lines(run: Mapping[str, Any]) -> list[str]:
    """What a run that stored nothing found: the limits it broke, or its error."""
    head = f"the last ETL run, {run['run_id']} (as of {run['as_of']}), "
    if run["status"] == "running":
        return [head + "has not finished (still running, or killed): it stored nothing yet"]
    if not run["over_limits"]:
        return [head + f"failed and stored nothing: {run['error'] or 'no error recorded'}"]
    lines = [head + "failed over the quarantine limits and stored nothing; "
             f"of {run['rows_read'] or 0:,} rows read, {run['rows_quarantined'] or 0:,} "
             "would have been held:"]
    lines.extend(f"  - {_breach_line(b)}" for b in run["over_limits"])
    by_rule = [f"{t} {r} {n:,}" for t, rules in sorted(run["quarantine_by_rule"].items())
               for r, n in sorted(rules.items())]
    if by_rule:
        lines.append("  found, by table and rule: " + "; ".join(by_rule))
    lines.extend(_code_lines("  codes read that are neither contract codes nor mapped:",
                             run["unmapped_codes"], indent="    "))
    return lines


def _breach_line(breach: Mapping[str, Any]) -> str:
    fields = {k: breach[k] for k in ("kind", "scope", "bad", "read", "limit", "setting")}
    return Breach(**fields, rules=breach.get("rules", {}), codes=breach.get("codes", {}),
                  mapped=tuple(breach.get("mapped", ()))).describe()


def _code_lines(title: str, codes: Mapping[str, Mapping[str, int]],
                indent: str = "  ") -> list[str]:
    if not codes:
        return []
    return [title, *(f"{indent}{scope:<30} {counted(found)}"
                     for scope, found in sorted(codes.items()))]
