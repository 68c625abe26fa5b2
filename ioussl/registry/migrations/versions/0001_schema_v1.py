"""Schema v1: the registry as ioussl 0.1 created it (the baseline; a v1 file is stamped with this).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "schema_info",
        sa.Column("key", sa.String(32), primary_key=True),
        sa.Column("value", sa.String(255), nullable=False),
    )
    op.create_table(
        "studies",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("spec_path", sa.Text),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("runs_dir", sa.Text, nullable=False),
        sa.Column("base_dir", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("study_id", sa.Integer, sa.ForeignKey("studies.id", ondelete="CASCADE"), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("group", sa.String(64), nullable=False),
        sa.Column("i_min", sa.Float),
        sa.Column("i_max", sa.Float),
        sa.Column("random_crop", sa.Boolean, nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("pretrain_seed", sa.Integer),
        sa.Column("parent_id", sa.String(16), sa.ForeignKey("runs.id")),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("resources", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_reason", sa.Text),
        sa.Column("run_dir", sa.Text, nullable=False),
        sa.Column("imported", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("study_id", "config_hash", name="uq_run_identity"),
    )
    op.create_index("ix_runs_study_status", "runs", ["study_id", "status"])
    op.create_table(
        "attempts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.String(16), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("executor", sa.String(16), nullable=False),
        sa.Column("job_id", sa.String(64)),
        sa.Column("array_job_id", sa.String(64)),
        sa.Column("array_index", sa.Integer),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("scheduler_state", sa.String(64)),
        sa.Column("exit_code", sa.String(16)),
        sa.Column("node", sa.String(255)),
        sa.Column("depends_on", sa.String(64)),
        sa.Column("job_name", sa.String(128)),
        sa.Column("misses", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("submitted_at", sa.DateTime, nullable=False),
        sa.Column("started_at", sa.DateTime),
        sa.Column("ended_at", sa.DateTime),
    )
    op.create_index("ix_attempts_job", "attempts", ["job_id"])
    op.create_table(
        "results",
        sa.Column("run_id", sa.String(16), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("dsc", sa.Float),
        sa.Column("dsc_3d", sa.Float),
        sa.Column("per_case", sa.JSON),
        sa.Column("per_organ", sa.JSON),
        sa.Column("best_epoch", sa.Integer),
        sa.Column("checkpoint_path", sa.Text),
        sa.Column("checkpoint_sha256", sa.String(64)),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("imported", sa.Boolean, nullable=False),
        sa.Column("source", sa.Text),
        sa.Column("recorded_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "metrics",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.String(16), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("step", sa.Integer),
        sa.Column("value", sa.Float, nullable=False),
        sa.UniqueConstraint("run_id", "name", "epoch", name="uq_metric_point"),
    )
    op.create_index("ix_metrics_run_id", "metrics", ["run_id"])
    op.create_table(
        "provenance",
        sa.Column("run_id", sa.String(16), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("git_commit", sa.String(64)),
        sa.Column("git_dirty", sa.Boolean),
        sa.Column("packages", sa.JSON, nullable=False),
        sa.Column("host", sa.String(255)),
        sa.Column("device", sa.String(255)),
        sa.Column("recorded_at", sa.DateTime, nullable=False),
    )
    op.execute("INSERT INTO schema_info (key, value) VALUES ('version', '1')")


def downgrade() -> None:
    for table in ("provenance", "metrics", "results", "attempts", "runs", "studies", "schema_info"):
        op.drop_table(table)
