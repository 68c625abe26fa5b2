"""The registry's tables (SQLAlchemy 2.0 typed models), schema version 3.

A study holds runs; a run (pretrain or fine-tune) has a canonical config whose hash, with its parent's
identity, is its identity (``run_hash``); every scheduler job of a run is an attempt that is never
overwritten; a finished run has one result, metric series and provenance; alerts about runs and studies
are queued as notifications. Changes to these tables ship as Alembic migrations (``migrations/``).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from ioussl.status import RunStatus

SCHEMA_VERSION = 4  # also kept in schema_info, so an ioussl of schema 1 refuses this registry


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class SchemaInfo(Base):
    __tablename__ = "schema_info"

    key: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    spec_path: Mapped[str | None] = mapped_column(Text)
    spec: Mapped[dict] = mapped_column(JSON)  # the parsed study file, for provenance
    runs_dir: Mapped[str] = mapped_column(Text)
    base_dir: Mapped[str] = mapped_column(Text, default=".")  # relative data paths in run configs start here
    # Sweep axis names (dotted settings, file order); [] for a study without a [sweep].
    axes: Mapped[list] = mapped_column(JSON, default=list, server_default=text("'[]'"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    runs: Mapped[list[Run]] = relationship(back_populates="study", cascade="all, delete-orphan")


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("study_id", "run_hash", name="uq_run_identity"),
        Index("ix_runs_study_status", "study_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # short hash of (study, run_hash)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    stage: Mapped[str] = mapped_column(String(16))  # pretrain | finetune
    group: Mapped[str] = mapped_column(String(64))  # report row: "[0.3, 0.6]", "random crop [0, 1]", "no pretraining"
    i_min: Mapped[float | None] = mapped_column(Float)  # None for the no-pretraining baseline
    i_max: Mapped[float | None] = mapped_column(Float)
    random_crop: Mapped[bool] = mapped_column(Boolean, default=False)
    seed: Mapped[int] = mapped_column(BigInteger)  # [0, 2**32): wider than PostgreSQL's INTEGER
    pretrain_seed: Mapped[int | None] = mapped_column(BigInteger)  # the parent's seed, for fine-tunes
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id"))
    config: Mapped[str] = mapped_column(Text)  # canonical JSON of the RunConfig
    run_hash: Mapped[str] = mapped_column(String(64))  # sha256 of config + parent identity (config.run_hash)
    # The run's sweep point, dotted setting -> value ({} without a [sweep]); written at plan time.
    point: Mapped[dict] = mapped_column(JSON, default=dict, server_default=text("'{}'"))
    resources: Mapped[dict] = mapped_column(JSON, default=dict)  # per-stage sbatch resources
    status: Mapped[RunStatus] = mapped_column(Enum(RunStatus, native_enum=False, length=16),
                                              default=RunStatus.PLANNED)
    status_reason: Mapped[str | None] = mapped_column(Text)
    run_dir: Mapped[str] = mapped_column(Text)
    imported: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    # Set when a user archived the run (`ioussl archive`, `plan grid --prune`): hidden from status, report and
    # submit, kept with its attempts and results, restorable (`ioussl archive --restore`). Schema v3.
    archived_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    study: Mapped[Study] = relationship(back_populates="runs")
    parent: Mapped[Run | None] = relationship(remote_side=[id])
    attempts: Mapped[list[Attempt]] = relationship(
        back_populates="run", cascade="all, delete-orphan", order_by="Attempt.id"
    )
    result: Mapped[Result | None] = relationship(back_populates="run", cascade="all, delete-orphan")


IMPORTED = "import"  # attempts.executor of a result imported from elsewhere: no backend, no job


class Attempt(Base):
    """One scheduler job (or array task) for a run. Rows are appended, never replaced."""

    __tablename__ = "attempts"
    __table_args__ = (Index("ix_attempts_job", "job_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    executor: Mapped[str] = mapped_column(String(16))  # a backend's name (slurm, local), or IMPORTED
    job_id: Mapped[str | None] = mapped_column(String(64))  # "123" or "123_4" for an array task
    array_job_id: Mapped[str | None] = mapped_column(String(64))
    array_index: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[RunStatus] = mapped_column(Enum(RunStatus, native_enum=False, length=16),
                                              default=RunStatus.SUBMITTING)
    scheduler_state: Mapped[str | None] = mapped_column(String(64))  # raw, e.g. "CANCELLED by 0"
    exit_code: Mapped[str | None] = mapped_column(String(16))
    node: Mapped[str | None] = mapped_column(String(255))
    depends_on: Mapped[str | None] = mapped_column(String(64))  # the pretrain job id it waits for
    job_name: Mapped[str | None] = mapped_column(String(128))  # recorded before sbatch: finds an orphaned job
    misses: Mapped[int] = mapped_column(Integer, default=0)  # syncs in which the scheduler did not know it
    reason: Mapped[str | None] = mapped_column(Text)
    submitted_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    # One entry per requeue of this job (preemption or time limit): {"reason", "t", "step"}; the job and the
    # attempt stay the same (schema v3).
    requeues: Mapped[list] = mapped_column(JSON, default=list, server_default=text("'[]'"))
    world_size: Mapped[int | None] = mapped_column(Integer)  # processes (one per GPU), from the job itself
    hosts: Mapped[str | None] = mapped_column(Text)  # its nodes, comma separated

    run: Mapped[Run] = relationship(back_populates="attempts")


class Result(Base):
    __tablename__ = "results"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    dsc: Mapped[float | None] = mapped_column(Float)  # the thesis' per-slice DSC (Table 4.2's number)
    dsc_3d: Mapped[float | None] = mapped_column(Float)  # 3D DSC on the preprocessed grid, validation cases
    test_dsc: Mapped[float | None] = mapped_column(Float)  # the same two on the held-out test cases
    test_dsc_3d: Mapped[float | None] = mapped_column(Float)
    flare_dsc: Mapped[float | None] = mapped_column(Float)  # FLARE 2022 evaluation: mean over organs, cases
    flare_nsd: Mapped[float | None] = mapped_column(Float)
    flare_part: Mapped[str | None] = mapped_column(String(8))  # "val" or "test": the cases FLARE scored
    per_case: Mapped[dict | None] = mapped_column(JSON)
    per_organ: Mapped[dict | None] = mapped_column(JSON)
    best_epoch: Mapped[int | None] = mapped_column(Integer)
    checkpoint_path: Mapped[str | None] = mapped_column(Text)
    checkpoint_sha256: Mapped[str | None] = mapped_column(String(64))
    payload: Mapped[dict] = mapped_column(JSON, default=dict)  # the whole result.json
    imported: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str | None] = mapped_column(Text)
    recorded_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    run: Mapped[Run] = relationship(back_populates="result")


class Metric(Base):
    """One point of a per-epoch series (loss, lr, collapse, fallback_rate, val_dsc, ...)."""

    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("run_id", "name", "epoch", name="uq_metric_point"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    epoch: Mapped[int] = mapped_column(Integer)
    step: Mapped[int | None] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)


class Provenance(Base):
    """Where a run's result came from: code version, packages, host."""

    __tablename__ = "provenance"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    git_commit: Mapped[str | None] = mapped_column(String(64))
    git_dirty: Mapped[bool | None] = mapped_column(Boolean)
    packages: Mapped[dict] = mapped_column(JSON, default=dict)
    host: Mapped[str | None] = mapped_column(String(255))
    device: Mapped[str | None] = mapped_column(String(255))
    recorded_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Notification(Base):
    """One alert to send (a run failed, a study completed), keyed so that it is queued exactly once."""

    __tablename__ = "notifications"
    __table_args__ = (UniqueConstraint("study_id", "key", name="uq_notification_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(160))  # "run:<run>:attempt:<attempt>:FAILED", "study:COMPLETED"
    event: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    tries: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
