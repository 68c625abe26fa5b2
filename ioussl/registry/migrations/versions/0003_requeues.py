"""Schema v3: what an attempt went through on the cluster.

- ``attempts.requeues`` (JSON list, ``[]``): one entry per requeue of the attempt's job (same job id, same
  attempt), each ``{"reason": "preempted" | "time limit" | "unknown", "t": unix seconds, "step": ...}``,
  read from the job's ``requeued`` events at sync.
- ``attempts.world_size`` (processes of the job, one per GPU) and ``attempts.hosts`` (the nodes, comma
  separated), from the job's ``started`` event; NULL for jobs that did not say (older ioussl, imports).

Only ADD COLUMN, which SQLite and PostgreSQL do in place inside the upgrade's one transaction.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("attempts", sa.Column("requeues", sa.JSON, nullable=False, server_default=sa.text("'[]'")))
    op.add_column("attempts", sa.Column("world_size", sa.Integer))
    op.add_column("attempts", sa.Column("hosts", sa.Text))
    op.execute("UPDATE schema_info SET value = '3' WHERE key = 'version'")


def downgrade() -> None:
    for name in ("hosts", "world_size", "requeues"):
        op.drop_column("attempts", name)
    op.execute("UPDATE schema_info SET value = '2' WHERE key = 'version'")
