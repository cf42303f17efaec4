"""Commands for EHRs that authenticate with SMART Backend Services.

An EHR registers its public keys (a JWKS file: it keeps the private key), the recipient
its clients' consents name and the clinics it may see; it then gets short-lived access
tokens at the token URL printed here (docs/smart-backend-services.md). Revoking a client
refuses its assertions and revokes the tokens it holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from sqlalchemy import Engine

from retention.access.ehr_clients import ClientError, list_clients, register_client, revoke_client
from retention.api.oauth import token_url
from retention.db.engines import store_engine
from retention.pipelines.commands.common import Context, say
from retention.store import schema


def _store(obj: Context) -> Engine:
    """The store, migrated (the client tables are part of its schema)."""
    engine = store_engine(obj.settings().store_url)
    with engine.begin() as conn:
        schema.upgrade(conn)
    return engine


@click.group("ehr-clients")
def ehr_clients() -> None:
    """Register, list and revoke EHRs that sign in with SMART Backend Services."""


@ehr_clients.command("register")
@click.option("--jwks", "jwks_file", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The EHR's public keys, a JWKS JSON file (RS384 or ES384 keys, each "
              "with a kid; no private key).")
@click.option("--recipient", required=True,
              help="The recipient id the clients' consents name for this EHR.")
@click.option("--clinic", "clinics", multiple=True, required=True,
              help="Clinic id the EHR may see (repeat for several).")
@click.option("--label", default=None, help="Who or what the EHR is (no client data).")
@click.pass_obj
def register(obj: Context, jwks_file: Path, recipient: str, clinics: tuple[str, ...],
             label: str | None) -> None:
    """Register an EHR by its public keys and print its client id."""
    try:
        jwks = json.loads(jwks_file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{jwks_file} is not JSON: {exc}") from exc
    url = token_url(obj.settings().public_base_url)
    engine = _store(obj)
    try:
        with engine.begin() as conn:
            client_id = register_client(conn, jwks=jwks, recipient=recipient, clinics=clinics,
                                        label=label, now=obj.clock.now())
    except ClientError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        engine.dispose()
    click.echo(client_id)
    say(f"ehr-clients: registered {client_id} for {recipient}, clinic(s) "
        f"{', '.join(sorted(set(clinics)))}; its assertions use iss = sub = {client_id}")
    if url is not None:
        say(f"ehr-clients: token URL (the assertion's aud): {url}")
    else:
        say("ehr-clients: warning: public_base_url is not set, so the token endpoint is off; "
            "set it to the URL EHRs reach this API at")


@ehr_clients.command("list")
@click.pass_obj
def list_(obj: Context) -> None:
    """Every registered EHR, newest first."""
    engine = _store(obj)
    try:
        with engine.connect() as conn:
            found = list_clients(conn)
    finally:
        engine.dispose()
    click.echo(f"{'client_id':<12} {'status':<8} {'created (UTC)':<16} {'recipient':<20} "
               "clinics / keys / label")
    for c in found:
        status = "active" if c.active else "revoked"
        kids = ",".join(str(k.get("kid")) for k in c.jwks.get("keys", []))
        click.echo(f"{c.client_id:<12} {status:<8} {c.created_at:%Y-%m-%d %H:%M} "
                   f"{c.recipient:<20} {','.join(c.clinics)} / {kids} / {c.label or ''}")
    say(f"ehr-clients: {len(found)} client(s), {sum(c.active for c in found)} active")


@ehr_clients.command("revoke")
@click.argument("client_id")
@click.pass_obj
def revoke(obj: Context, client_id: str) -> None:
    """Refuse an EHR's assertions from now on and revoke its live access tokens."""
    engine = _store(obj)
    try:
        with engine.begin() as conn:
            tokens = revoke_client(conn, client_id, now=obj.clock.now())
    except ClientError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        engine.dispose()
    say(f"ehr-clients: revoked {client_id} and {tokens} live access token(s)")
