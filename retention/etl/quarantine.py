"""Reading the quarantine: what is held back from the copy, by table and rule.

Rows are written by the ETL (``retention.etl.load.apply``); here they are summarised for
`retention quality`. Reports show keys and counts, never row values: quarantined
rows are clinic data like any other.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, select

from retention.etl.validation import RULES
from retention.store import tables


def report(connection: Connection, examples: int = 3) -> dict[str, Any]:
    """Quarantined keys by table and rule, with the last ETL run's share of bad rows."""
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
        groups.append({"table": table_name, "rule": rule, "meaning": RULES.get(rule, ""),
                       "keys": int(count), "since": since, "examples": list(keys)})
    last = connection.execute(
        select(tables.runs).where(tables.runs.c.kind == "etl")
        .order_by(tables.runs.c.run_id.desc()).limit(1)
    ).first()
    return {
        "total": sum(g["keys"] for g in groups),
        "groups": groups,
        "last_etl": None if last is None else {
            "run_id": last.run_id, "as_of": last.as_of, "status": last.status,
            "rows_read": last.rows_read, "rows_quarantined": last.rows_quarantined,
            "error": last.error,
        },
    }


def format_report(data: dict[str, Any]) -> list[str]:
    """The report as lines of text."""
    lines = []
    last = data["last_etl"]
    if last is not None:
        lines.append(f"last ETL run {last['run_id']} ({last['as_of']}, {last['status']}): "
                     f"{last['rows_read'] or 0:,} rows read, "
                     f"{last['rows_quarantined'] or 0:,} held in quarantine")
        if last["error"]:
            lines.append(f"  error: {last['error']}")
    if not data["groups"]:
        lines.append("quarantine is empty: every row read passed the contract")
        return lines
    lines.append(f"{data['total']:,} keys in quarantine:")
    lines.append(f"  {'table':<18} {'rule':<28} {'keys':>7}  since (UTC)          examples")
    for g in data["groups"]:
        lines.append(f"  {g['table']:<18} {g['rule']:<28} {g['keys']:>7,}  "
                     f"{g['since']:%Y-%m-%d %H:%M:%S}  {', '.join(g['examples'])}")
    lines.append("rules: " + "; ".join(
        f"{g['rule']} = {g['meaning']}" for g in {g['rule']: g for g in data["groups"]}.values()))
    return lines
