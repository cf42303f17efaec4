"""disclosures: the recipient an ehr key acts for, and what each audit record disclosed

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

Issue 20: every record is a 42 CFR Part 2 record. An integration outside the clinic is
given a client's data only under a consent naming its recipient, so an ehr key names
one (``api_keys.recipient``), and each audit record keeps the recipient and, as JSON,
the consent each client was disclosed under or why it was withheld: the accounting of
disclosures a client may ask for. Columns are added, never rewritten: the audit log is
append-only (migration 0002's triggers).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("recipient", sa.String(128), nullable=True))
    op.add_column("audit_log", sa.Column("recipient", sa.String(128), nullable=True))
    op.add_column("audit_log", sa.Column("detail", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("detail")
        batch.drop_column("recipient")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("recipient")
