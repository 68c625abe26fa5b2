"""Schema v2: run identity named for what it is, sweep points and axes, INVALID runs, test and FLARE
scores in results, and the notifications queue.

- ``runs.config_hash`` -> ``runs.run_hash`` (it holds config + parent identity); still unique per study.
- ``runs.point`` (JSON, ``{}``) and ``studies.axes`` (JSON, ``[]``): a run's sweep point, a study's axes.
- ``runs.seed`` and ``runs.pretrain_seed`` become BIGINT on PostgreSQL (seeds lie in [0, 2**32)); SQLite
  stores 64-bit integers whatever the declared type, so its table is left as it is.
- ``results``: ``test_dsc``, ``test_dsc_3d``, ``flare_dsc``, ``flare_nsd``, ``flare_part``.
- ``notifications``: alerts keyed per study, queued once, sent by the webhook task.
- The new run status INVALID needs no DDL (statuses are VARCHAR(16) without a CHECK).

No table is rebuilt: every step is an ALTER both SQLite (>= 3.25) and PostgreSQL do in place, inside the
upgrade's one transaction.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

RESULT_COLUMNS = (
    ("test_dsc", sa.Float), ("test_dsc_3d", sa.Float), ("flare_dsc", sa.Float), ("flare_nsd", sa.Float),
    ("flare_part", sa.String(8)),
)


def upgrade() -> None:
    op.execute("ALTER TABLE runs RENAME COLUMN config_hash TO run_hash")
    op.add_column("runs", sa.Column("point", sa.JSON, nullable=False, server_default=sa.text("'{}'")))
    op.add_column("studies", sa.Column("axes", sa.JSON, nullable=False, server_default=sa.text("'[]'")))
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("runs", "seed", type_=sa.BigInteger, existing_nullable=False)
        op.alter_column("runs", "pretrain_seed", type_=sa.BigInteger, existing_nullable=True)
    for name, kind in RESULT_COLUMNS:
        op.add_column("results", sa.Column(name, kind))
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("study_id", sa.Integer, sa.ForeignKey("studies.id", ondelete="CASCADE"), nullable=False),
        sa.Column("run_id", sa.String(16), sa.ForeignKey("runs.id", ondelete="CASCADE")),
        sa.Column("key", sa.String(160), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("sent_at", sa.DateTime),
        sa.Column("tries", sa.Integer, nullable=False),
        sa.Column("error", sa.Text),
        sa.UniqueConstraint("study_id", "key", name="uq_notification_key"),
    )
    op.create_index("ix_notifications_study_id", "notifications", ["study_id"])
    op.execute("UPDATE schema_info SET value = '2' WHERE key = 'version'")


def downgrade() -> None:
    op.execute("UPDATE schema_info SET value = '1' WHERE key = 'version'")
    op.drop_index("ix_notifications_study_id", table_name="notifications")
    op.drop_table("notifications")
    for name, _ in reversed(RESULT_COLUMNS):
        op.drop_column("results", name)
    op.drop_column("studies", "axes")
    op.drop_column("runs", "point")
    op.execute("ALTER TABLE runs RENAME COLUMN run_hash TO config_hash")
