"""access: key expiry and rotation, server-side page sessions, counted denials, signing keys

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

Issue 17. ``api_keys`` gains ``expires_at`` and ``rotated_from``; ``web_sessions`` holds the
SHA-256 of each page session's id, so signing out (or revoking the key) ends it on the
server; ``audit_denials`` counts a flood's denials past the first few a minute, and its
triggers let a count only grow (no DELETE, no TRUNCATE, no UPDATE that lowers a count or
moves a row); ``signing_keys`` holds the key the API signs paging cursors with, made here.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MESSAGE = "audit_denials only counts up"
# What identifies a counted row: an UPDATE may not change any of it.
IDENTITY = ("window_start", "source", "key_id", "action", "outcome", "status", "first_at")


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("expires_at", sa.DateTime(), nullable=True))
    op.add_column("api_keys", sa.Column("rotated_from", sa.String(length=12), nullable=True))
    op.create_table(
        "audit_denials",
        sa.Column("window_start", sa.DateTime(), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=12), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("status", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("denials", sa.Integer(), nullable=False),
        sa.Column("first_at", sa.DateTime(), nullable=False),
        sa.Column("last_at", sa.DateTime(), nullable=False),
        sa.Column("last_request_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("window_start", "source", "key_id", "action", "outcome",
                                "status"),
    )
    op.create_table(
        "web_sessions",
        sa.Column("session_sha256", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=12), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("end_reason", sa.String(length=16), nullable=True),
        sa.PrimaryKeyConstraint("session_sha256"),
    )
    op.create_index("ix_web_sessions_key", "web_sessions", ["key_id"], unique=False)
    signing_keys = op.create_table(
        "signing_keys",
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("secret", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("purpose"),
    )
    op.bulk_insert(signing_keys, [{
        "purpose": "cursor", "secret": secrets.token_urlsafe(32),
        "created_at": datetime.now(UTC).replace(tzinfo=None)}])
    moved = " OR ".join(f"NEW.{c} IS DISTINCT FROM OLD.{c}" for c in IDENTITY)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE OR REPLACE FUNCTION audit_denials_count_up() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ BEGIN "
            f"IF TG_OP <> 'UPDATE' OR NEW.denials <= OLD.denials OR {moved} THEN "
            f"RAISE EXCEPTION '{MESSAGE}'; END IF; RETURN NEW; END $$")
        op.execute("CREATE TRIGGER audit_denials_no_change BEFORE UPDATE OR DELETE "
                   "ON audit_denials FOR EACH ROW EXECUTE FUNCTION audit_denials_count_up()")
        op.execute("CREATE TRIGGER audit_denials_no_truncate BEFORE TRUNCATE ON audit_denials "
                   "FOR EACH STATEMENT EXECUTE FUNCTION audit_denials_count_up()")
    else:
        moved = moved.replace("IS DISTINCT FROM", "IS NOT")
        op.execute("CREATE TRIGGER audit_denials_no_delete BEFORE DELETE ON audit_denials "
                   f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END")
        op.execute("CREATE TRIGGER audit_denials_count_up BEFORE UPDATE ON audit_denials "
                   f"WHEN NEW.denials <= OLD.denials OR {moved} "
                   f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_denials_no_truncate ON audit_denials")
        op.execute("DROP TRIGGER IF EXISTS audit_denials_no_change ON audit_denials")
        op.execute("DROP FUNCTION IF EXISTS audit_denials_count_up()")
    op.drop_table("signing_keys")
    op.drop_index("ix_web_sessions_key", table_name="web_sessions")
    op.drop_table("web_sessions")
    op.drop_table("audit_denials")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("rotated_from")
        batch.drop_column("expires_at")
