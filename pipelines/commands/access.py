"""Commands for API keys and the audit trail."""

from __future__ import annotations

import csv
import json
import sys
from datetime import datetime, timedelta
from typing import Any

import click
from sqlalchemy import Engine

from retention.access.audit import read_audit
from retention.access.keys import ROLES, AccessError, create_key, list_keys, revoke_key
from retention.db.engines import store_engine
from retention.pipelines.commands.common import Context
from retention.store import schema


def _store(obj: Context) -> Engine:
    """The store, migrated (the key and audit tables are part of its schema)."""
    engine = store_engine(obj.settings().store_url)
    with engine.begin() as conn:
        schema.upgrade(conn)
    return engine


@click.group()
def keys() -> None:
    """Create, list and revoke API keys (stored only as hashes)."""


@keys.command("create")
@click.option("--role", required=True, type=click.Choice(ROLES), help="What the key may do.")
@click.option("--clinic", "clinics", multiple=True,
              help="Clinic id the key may see (repeat for several; not for admin).")
@click.option("--case-manager", "case_manager_id", default=None,
              help="Limit a case_manager key to this case manager's own caseload.")
@click.option("--grant", "grants", multiple=True, type=click.Choice(["client_data"]),
              help="Extra permission: client_data lets an analyst read client lists.")
@click.option("--label", default=None, help="Who or what holds the key (no client data).")
@click.pass_obj
def create(obj: Context, role: str, clinics: tuple[str, ...], case_manager_id: str | None,
           grants: tuple[str, ...], label: str | None) -> None:
    """Create a key and print it once; only its hash is kept."""
    engine = _store(obj)
    try:
        with engine.begin() as conn:
            key_id, token = create_key(conn, role, clinics, case_manager_id=case_manager_id,
                                       grants=grants, label=label)
    except AccessError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        engine.dispose()
    click.echo(token)
    scope = ", ".join(clinics) if clinics else "every clinic"
    click.echo(f"keys: created {role} key {key_id} for {scope}"
               f"{f' (caseload {case_manager_id})' if case_manager_id else ''}; "
               "the key above is shown only this once, store it now", err=True)


@keys.command("list")
@click.pass_obj
def list_(obj: Context) -> None:
    """Every key: id, role, scope, created and revoked times (never the key itself)."""
    engine = _store(obj)
    with engine.connect() as conn:
        rows = list_keys(conn)
    engine.dispose()
    click.echo(f"{'key_id':<12} {'role':<12} {'status':<8} {'created (UTC)':<19} "
               "clinics / caseload / grants / label")
    for r in rows:
        status = "revoked" if r["revoked_at"] else "active"
        clinics = ",".join(json.loads(r["clinics_json"])) if r["clinics_json"] else "*"
        extra = " ".join(x for x in (r["case_manager_id"], r["grants_json"] != "[]"
                                     and r["grants_json"], r["label"]) if x)
        click.echo(f"{r['key_id']:<12} {r['role']:<12} {status:<8} "
                   f"{r['created_at']:%Y-%m-%d %H:%M:%S} {clinics} {extra}".rstrip())
    click.echo(f"keys: {len(rows)} key(s), "
               f"{sum(1 for r in rows if not r['revoked_at'])} active", err=True)


@keys.command("revoke")
@click.argument("key_id")
@click.pass_obj
def revoke(obj: Context, key_id: str) -> None:
    """Revoke a key at once: every later request with it gets 401."""
    engine = _store(obj)
    try:
        with engine.begin() as conn:
            revoke_key(conn, key_id)
    except AccessError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        engine.dispose()
    click.echo(f"keys: revoked {key_id}", err=True)


@click.group()
def audit() -> None:
    """The audit trail of reads of client data and denials."""


@audit.command("export")
@click.option("--from", "start", required=True, type=click.DateTime(["%Y-%m-%d"]),
              help="First day (UTC), inclusive.")
@click.option("--to", "end", required=True, type=click.DateTime(["%Y-%m-%d"]),
              help="Last day (UTC), inclusive.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl",
              show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="File to write (default: standard output).")
@click.pass_obj
def export(obj: Context, start: datetime, end: datetime, fmt: str, output: str | None) -> None:
    """Export the audit records between two dates for compliance review."""
    if end < start:
        raise click.ClickException("--to is before --from")
    engine = _store(obj)
    with engine.connect() as conn:
        rows = read_audit(conn, start, end + timedelta(days=1))
    engine.dispose()
    fields = ["audit_id", "at", "key_id", "role", "action", "outcome", "status",
              "client_ids", "request_id", "source"]
    with (open(output, "w", newline="") if output else _stdout()) as fh:
        if fmt == "csv":
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
        for r in rows:
            record = {k: r[k] for k in fields}
            record["at"] = r["at"].isoformat() + "Z"
            if fmt == "csv":
                writer.writerow({**record, "client_ids": " ".join(r["client_ids"])})
            else:
                fh.write(json.dumps(record) + "\n")
    denied = sum(1 for r in rows if r["outcome"] != "ok")
    click.echo(f"audit: exported {len(rows):,} record(s) from {start:%Y-%m-%d} to "
               f"{end:%Y-%m-%d} ({denied:,} not ok) to {output or 'stdout'}", err=True)


class _stdout:
    """Standard output as a context manager that is not closed on exit."""

    def __enter__(self) -> Any:
        return sys.stdout

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()
