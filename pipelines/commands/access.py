"""Commands for API keys and the audit trail.

Keys may expire (``keys create --expires``) and are replaced with ``keys rotate``, which
makes a new key with the same role and scope and lets the old one live on for an
overlap, so an integration can switch without an outage. ``keys list`` warns about
keys that expire within ``EXPIRY_WARNING`` (on standard error, so scripts see it too).
"""

from __future__ import annotations

import csv
import json
import sys
from datetime import datetime, timedelta
from typing import Any

import click
from sqlalchemy import Engine

from retention.access import consent
from retention.access.audit import read_audit, read_denials
from retention.access.ehr_clients import TOKEN_LABEL_PREFIX
from retention.access.keys import (
    ROLES,
    AccessError,
    create_key,
    list_keys,
    revoke_key,
    rotate_key,
)
from retention.db.engines import store_engine
from retention.pipelines.commands.common import Context
from retention.store import schema


def _store(obj: Context) -> Engine:
    """The store, migrated (the key and audit tables are part of its schema)."""
    engine = store_engine(obj.settings().store_url)
    with engine.begin() as conn:
        schema.upgrade(conn)
    return engine


# ``keys list`` warns about keys that expire sooner than this.
EXPIRY_WARNING = timedelta(days=14)
_DURATION_UNITS = {"h": "hours", "d": "days", "w": "weeks"}


def parse_expiry(value: str, now: datetime) -> datetime:
    """``--expires``: a date (YYYY-MM-DD, the key lasts until that day's 00:00 UTC) or a
    duration from now (90d, 12w, 36h)."""
    text = value.strip().lower()
    unit = _DURATION_UNITS.get(text[-1:]) if text[:-1].isdigit() and text[:-1].isascii() \
        else None
    if unit is not None:
        return now + timedelta(**{unit: int(text[:-1])})
    try:
        return datetime.strptime(text, "%Y-%m-%d")
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither a date (YYYY-MM-DD) nor a duration "
                                 "(90d, 12w, 36h)", param_hint="--expires") from None


def parse_duration(value: str, name: str) -> timedelta:
    """A duration such as 7d, 2w or 36h (0h for none)."""
    text = value.strip().lower()
    unit = _DURATION_UNITS.get(text[-1:])
    if unit is None or not (text[:-1].isascii() and text[:-1].isdigit()):
        raise click.BadParameter(f"{value!r} is not a duration (7d, 2w, 36h)", param_hint=name)
    return timedelta(**{unit: int(text[:-1])})


@click.group()
def keys() -> None:
    """Create, list, rotate and revoke API keys (stored only as hashes)."""


@keys.command("create")
@click.option("--role", required=True, type=click.Choice(ROLES), help="What the key may do.")
@click.option("--clinic", "clinics", multiple=True,
              help="Clinic id the key may see (repeat for several; not for admin).")
@click.option("--case-manager", "case_manager_id", default=None,
              help="Limit a case_manager key to this case manager's own caseload.")
@click.option("--grant", "grants", multiple=True, type=click.Choice(["client_data"]),
              help="Extra permission: client_data lets an analyst read client lists.")
@click.option("--label", default=None, help="Who or what holds the key (no client data).")
@click.option("--recipient", default=None, metavar="ID",
              help="For an ehr key: the outside recipient it acts for, as the clients' "
              "consents name it (42 CFR Part 2); required for ehr keys.")
@click.option("--expires", default=None, metavar="DATE|DURATION",
              help="When the key stops working: a date (YYYY-MM-DD, UTC) or a duration "
              "from now (90d, 12w, 36h). Default: never.")
@click.pass_obj
def create(obj: Context, role: str, clinics: tuple[str, ...], case_manager_id: str | None,
           grants: tuple[str, ...], label: str | None, recipient: str | None,
           expires: str | None) -> None:
    """Create a key and print it once; only its hash is kept."""
    now = obj.clock.now()
    expires_at = parse_expiry(expires, now) if expires is not None else None
    engine = _store(obj)
    try:
        with engine.begin() as conn:
            key_id, token = create_key(conn, role, clinics, case_manager_id=case_manager_id,
                                       grants=grants, label=label, expires_at=expires_at,
                                       now=now, recipient=recipient)
    except AccessError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        engine.dispose()
    click.echo(token)
    scope = ", ".join(clinics) if clinics else "every clinic"
    until = f", expiring {expires_at:%Y-%m-%d %H:%M} UTC" if expires_at else ""
    click.echo(f"keys: created {role} key {key_id} for {scope}"
               f"{f' (caseload {case_manager_id})' if case_manager_id else ''}"
               f"{f', acting for {recipient} (consent required)' if recipient else ''}{until}; "
               "the key above is shown only this once, store it now", err=True)


@keys.command("rotate")
@click.argument("key_id")
@click.option("--overlap", default="7d", show_default=True, metavar="DURATION",
              help="How long the old key keeps working beside the new one (0h: not at all).")
@click.option("--expires", default=None, metavar="DATE|DURATION",
              help="When the new key stops working (default: after as long a life as the "
              "old key was given; never, if the old key does not expire).")
@click.pass_obj
def rotate(obj: Context, key_id: str, overlap: str, expires: str | None) -> None:
    """Replace a key: a new one with the same role, scope and label, printed once; the old
    one expires when the overlap ends."""
    now = obj.clock.now()
    window = parse_duration(overlap, "--overlap")
    expires_at = parse_expiry(expires, now) if expires is not None else None
    engine = _store(obj)
    try:
        with engine.begin() as conn:
            new_id, token = rotate_key(conn, key_id, window, expires_at=expires_at, now=now)
    except AccessError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        engine.dispose()
    click.echo(token)
    click.echo(f"keys: {new_id} replaces {key_id}, which stops working at "
               f"{now + window:%Y-%m-%d %H:%M} UTC or its own expiry if sooner; the key above "
               "is shown only this once, store it now", err=True)


def key_status(row: dict[str, Any], now: datetime) -> str:
    """"revoked", "expired", "expiring" (within ``EXPIRY_WARNING``) or "active"."""
    expires = row["expires_at"]
    if row["revoked_at"]:
        return "revoked"
    if expires is not None and expires <= now:
        return "expired"
    if expires is not None and expires - now <= EXPIRY_WARNING:
        return "expiring"
    return "active"


@keys.command("list")
@click.option("--tokens", is_flag=True,
              help="Also list SMART access tokens (keys the token endpoint issued to "
              "registered EHRs; each lives minutes).")
@click.pass_obj
def list_(obj: Context, tokens: bool) -> None:
    """Every key: id, role, status, created and expiry times, scope (never the key itself).

    Keys that expire within two weeks are named in a warning: rotate them
    (`retention keys rotate KEY_ID`) before their holders are locked out. SMART access
    tokens are short-lived by design: they are counted, listed only with --tokens, and
    never warned about (`retention ehr-clients` manages the EHRs that get them).
    """
    now = obj.clock.now()
    engine = _store(obj)
    with engine.connect() as conn:
        every = list_keys(conn)
    engine.dispose()
    issued = [r for r in every if is_access_token(r)]
    rows = every if tokens else [r for r in every if not is_access_token(r)]
    click.echo(f"{'key_id':<12} {'role':<12} {'status':<8} {'created (UTC)':<19} "
               f"{'expires (UTC)':<16} clinics / caseload / recipient / grants / label")
    statuses = [key_status(r, now) for r in rows]
    for r, status in zip(rows, statuses, strict=True):
        clinics = ",".join(json.loads(r["clinics_json"])) if r["clinics_json"] else "*"
        extra = " ".join(x for x in (r["case_manager_id"],
                                     r["recipient"] and f"for {r['recipient']}",
                                     r["grants_json"] != "[]" and r["grants_json"], r["label"],
                                     r["rotated_from"] and f"(replaces {r['rotated_from']})")
                         if x)
        expires = f"{r['expires_at']:%Y-%m-%d %H:%M}" if r["expires_at"] else "never"
        click.echo(f"{r['key_id']:<12} {r['role']:<12} {status:<8} "
                   f"{r['created_at']:%Y-%m-%d %H:%M:%S} {expires:<16} {clinics} {extra}"
                   .rstrip())
    for r, status in zip(rows, statuses, strict=True):
        if status == "expiring" and not is_access_token(r):
            left = r["expires_at"] - now
            click.echo(f"keys: warning: key {r['key_id']} ({r['role']}"
                       f"{', ' + r['label'] if r['label'] else ''}) expires in "
                       f"{_words(left)}, at {r['expires_at']:%Y-%m-%d %H:%M} UTC; rotate it "
                       f"with `retention keys rotate {r['key_id']}`", err=True)
    keys_only = [s for r, s in zip(rows, statuses, strict=True) if not is_access_token(r)]
    usable = sum(1 for s in keys_only if s in ("active", "expiring"))
    live = sum(1 for r in issued if key_status(r, now) in ("active", "expiring"))
    shown = "listed above" if tokens else "not listed; --tokens lists them"
    click.echo(f"keys: {len(keys_only)} key(s), {usable} usable, "
               f"{keys_only.count('expiring')} expiring within {EXPIRY_WARNING.days} days; "
               f"{len(issued)} SMART access token(s), {live} live ({shown})", err=True)


def is_access_token(row: dict[str, Any]) -> bool:
    """A key the SMART token endpoint minted for a registered EHR (short-lived by design)."""
    return str(row.get("label") or "").startswith(TOKEN_LABEL_PREFIX)


def _words(left: timedelta) -> str:
    if left >= timedelta(days=2):
        return f"{left.days} days"
    return f"{max(1, int(left.total_seconds() // 3600))} hour(s)"


@keys.command("revoke")
@click.argument("key_id")
@click.pass_obj
def revoke(obj: Context, key_id: str) -> None:
    """Revoke a key at once: every later request with it gets 401."""
    engine = _store(obj)
    try:
        with engine.begin() as conn:
            revoke_key(conn, key_id, obj.clock.now())
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
@click.option("--denials", is_flag=True,
              help="Export the denials counted per minute (floods past the first few a "
              "minute from one address or key) instead of the records.")
@click.pass_obj
def export(obj: Context, start: datetime, end: datetime, fmt: str, output: str | None,
           denials: bool) -> None:
    """Export the audit records between two dates for compliance review."""
    if end < start:
        raise click.ClickException("--to is before --from")
    engine = _store(obj)
    with engine.connect() as conn:
        rows = read_audit(conn, start, end + timedelta(days=1))
        counted = read_denials(conn, start, end + timedelta(days=1))
    engine.dispose()
    if denials:
        rows = counted
        fields = ["window_start", "source", "key_id", "action", "outcome", "status",
                  "denials", "first_at", "last_at", "last_request_id"]
        times: tuple[str, ...] = ("window_start", "first_at", "last_at")
    else:
        fields = ["audit_id", "at", "key_id", "role", "action", "outcome", "status",
                  "client_ids", "request_id", "source", "recipient", "detail"]
        times = ("at",)
    with (open(output, "w", newline="") if output else _stdout()) as fh:
        if fmt == "csv":
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
        for r in rows:
            record = {k: r[k] for k in fields}
            record.update({k: r[k].isoformat() + "Z" for k in times})
            if fmt == "csv":
                ids = {"client_ids": " ".join(r["client_ids"]),
                       "detail": json.dumps(r["detail"]) if r["detail"] else ""
                       } if not denials else {}
                writer.writerow({**record, **ids})
            else:
                fh.write(json.dumps(record) + "\n")
    n_counted = sum(r["denials"] for r in counted)
    if denials:
        click.echo(f"audit: exported {len(rows):,} minute row(s) counting {n_counted:,} "
                   f"denial(s) from {start:%Y-%m-%d} to {end:%Y-%m-%d} to "
                   f"{output or 'stdout'}", err=True)
        return
    denied = sum(1 for r in rows if r["outcome"] != "ok")
    click.echo(f"audit: exported {len(rows):,} record(s) from {start:%Y-%m-%d} to "
               f"{end:%Y-%m-%d} ({denied:,} not ok) to {output or 'stdout'}", err=True)
    if n_counted:
        click.echo(f"audit: {n_counted:,} more denial(s) in these days were counted, not "
                   "written one by one; `retention audit export --denials` exports them",
                   err=True)


@audit.command("disclosures")
@click.option("--client", "client_id", required=True, help="The client's id in this service.")
@click.option("--from", "start", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="First day (UTC), inclusive (default: three years back, what 42 CFR "
              "2.25 gives a client).")
@click.option("--to", "end", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="Last day (UTC), inclusive (default: today).")
@click.option("--withheld", is_flag=True,
              help="Also list requests for the client that were refused, and why.")
@click.option("--format", "fmt", type=click.Choice(["text", "jsonl"]), default="text",
              show_default=True)
@click.pass_obj
def disclosures_command(obj: Context, client_id: str, start: datetime | None,
                        end: datetime | None, withheld: bool, fmt: str) -> None:
    """The accounting of disclosures of one client's records to outside recipients.

    Who received what, when, and under which consent (42 CFR 2.25): the answer to a
    client who asks. Use inside the clinic is not a disclosure and is not listed here
    (`retention audit export` has every record).
    """
    today = obj.clock.now().replace(hour=0, minute=0, second=0, microsecond=0)
    end = end or today
    start = start or end - timedelta(days=3 * 365)
    if end < start:
        raise click.ClickException("--to is before --from")
    engine = _store(obj)
    try:
        with engine.connect() as conn:
            rows = consent.disclosures(conn, client_id, start, end + timedelta(days=1),
                                       withheld=withheld)
    finally:
        engine.dispose()
    for r in rows:
        if fmt == "jsonl":
            click.echo(json.dumps({**r, "at": r["at"].isoformat() + "Z"}))
            continue
        basis = (f"under consent {r['consent_id']}" if r["disclosed"]
                 else f"WITHHELD ({r['withheld_because']})")
        click.echo(f"{r['at']:%Y-%m-%d %H:%M} UTC  to {r['recipient']} "
                   f"(credential {r['credential']}): {r['what']}; {basis}")
    given = sum(1 for r in rows if r["disclosed"])
    refused = f", {len(rows) - given:,} refused" if withheld else ""
    recipients = sorted({r["recipient"] for r in rows if r["disclosed"]})
    click.echo(f"audit: client {client_id}: {given:,} disclosure(s){refused} from "
               f"{start:%Y-%m-%d} to {end:%Y-%m-%d}"
               f"{' to ' + ', '.join(recipients) if recipients else ''}", err=True)


class _stdout:
    """Standard output as a context manager that is not closed on exit."""

    def __enter__(self) -> Any:
        return sys.stdout

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()
