"""Schema v4: runs can be archived (hidden from status, report and submit; kept; restorable).

- ``runs.archived_at`` (DateTime, NULL): when a user archived the run (``ioussl archive``,
  ``ioussl plan grid --prune``); NULL for every existing run, so nothing is hidden by the upgrade.
- The new run status INTERRUPTED needs no DDL (statuses are VARCHAR(16) without a CHECK).

One ALTER that SQLite and PostgreSQL both do in place, inside the upgrade's one transaction.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("archived_at", sa.DateTime))
    op.execute("UPDATE schema_info SET value = '4' WHERE key = 'version'")


def downgrade() -> None:
    op.execute("UPDATE schema_info SET value = '3' WHERE key = 'version'")
    op.drop_column("runs", "archived_at")
