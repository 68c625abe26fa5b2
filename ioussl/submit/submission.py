"""Submitting planned runs: one job per pretrain, the fine-tunes of a pretrain as one dependent job array.

Crash safety (issue 3, point 6): for every unit the intent is committed first (runs SUBMITTING, attempt
rows with the job name but no job id), then sbatch runs, then the job ids are committed. A submit killed
between the two commits leaves SUBMITTING attempts without a job id; the next submit or status finds
their job by name (``ioussl-<first run id>``) and adopts it, or, when no job reached the scheduler, puts
the runs back to PLANNED. So a rerun never duplicates a job and never loses a job id.
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from ioussl import jobtext as jobscript
from ioussl import runfiles
from ioussl.backends.base import Backend, Unit
from ioussl.errors import ConfigError, SubmissionError
from ioussl.plan.expand import job_config_json
from ioussl.registry import repo
from ioussl.registry.models import Attempt, Run, Study, utcnow
from ioussl.resources import resources_for_run
from ioussl.status import RunStatus

S = RunStatus
JobFactory = Callable[[str, str | None], Callable[[], Any]]
ENV_JOB_FACTORY = "IOUSSL_JOB_FACTORY"
ADOPT_GRACE_S = 5.0  # an intent younger than this may still be inside a live sbatch call
PARENT_OK = frozenset({S.PLANNED, S.SUBMITTING, S.PENDING, S.RUNNING, S.COMPLETED})
ENCODER = Path(runfiles.CHECKPOINTS) / "encoder.pt"


@dataclass(frozen=True)
class RunFilter:
    """Which planned runs to submit (all of the study when empty)."""

    stage: str | None = None
    group: str | None = None
    run_ids: tuple[str, ...] = ()

    def matches(self, run: Run, wanted_ids: set[str]) -> bool:
        return (
            (self.stage is None or run.stage == self.stage)
            and (self.group is None or run.group == self.group)
            and (not wanted_ids or run.id in wanted_ids)
        )


@dataclass
class SubmitOutcome:
    study: str
    executor: str
    units: list[Unit] = field(default_factory=list)
    job_ids: dict[str, str] = field(default_factory=dict)  # run id -> job id
    dependencies: dict[str, str | None] = field(default_factory=dict)  # unit job name -> "afterok:<job>"
    commands: dict[str, str] = field(default_factory=dict)  # --dry-run: unit job name -> what the backend would get
    skipped: list[tuple[str, str]] = field(default_factory=list)  # run id, why
    adopted: list[str] = field(default_factory=list)
    reverted: list[str] = field(default_factory=list)
    sbatch_calls: int = 0
    dry_run: bool = False
    fell_back: str | None = None  # why --executor auto runs on this machine (no sbatch, no controller)
    warnings: list[str] = field(default_factory=list)  # e.g. a webhook alert the local loop could not deliver
    resumed: list[str] = field(default_factory=list)  # interrupted runs this submit starts again
    # Runs this (local) submit ran that ended without a result: run id -> status (the exit code says so).
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def gpu_hours(self) -> float:
        return sum(unit.resources.gpu_hours() * len(unit.run_ids) for unit in self.units)


def default_job_factory() -> JobFactory:
    """``RunJob`` of the training entry point, or the factory named by $IOUSSL_JOB_FACTORY (module:attr)."""
    name = os.environ.get(ENV_JOB_FACTORY)
    if name:
        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"${ENV_JOB_FACTORY}={name!r} cannot be loaded: {exc}") from None
    try:
        from ioussl.submit.entrypoint import RunJob
    except ImportError:
        raise SubmissionError(
            "the training entry point (ioussl.submit.entrypoint.RunJob) is not "
            f"installed; set ${ENV_JOB_FACTORY} to submit another job"
        ) from None
    return RunJob


def find_submit_study(session: Session, name: str | None) -> Study:
    """The named study, or the only one; an empty study is an error."""
    if name is not None:
        study = repo.find_study(session, name)
    else:
        studies = repo.list_studies(session)
        if len(studies) != 1:
            known = ", ".join(s.name for s in studies) or "none: plan one with ioussl plan grid STUDY.toml"
            raise ConfigError(f"name the study to submit with --study (studies: {known})")
        study = studies[0]
    if not repo.study_has_runs(session, study):
        raise ConfigError(f"study {study.name!r} has no runs: plan it first (ioussl plan grid STUDY.toml)")
    return study


def plan_units(runs: Sequence[Run], run_filter: RunFilter, wanted_ids: set[str], outcome: SubmitOutcome) -> list[Unit]:
    """Group the planned runs into submissions: pretrains one by one, each followed by its fine-tune array;
    fine-tunes of pretrains submitted earlier or completed, then the no-pretraining baseline, as arrays."""
    selected = [r for r in runs if r.status == S.PLANNED and run_filter.matches(r, wanted_ids)]
    chosen = {r.id for r in selected}
    groups: dict[tuple[str | None, str], list[Run]] = {}
    for run in selected:
        if run.stage == "finetune" and run.parent is not None:
            parent = run.parent
            if parent.status not in PARENT_OK or (parent.status == S.PLANNED and parent.id not in chosen):
                outcome.skipped.append((run.id, f"its pretrain {parent.id} is {parent.status}"))
                continue
        if run.stage == "finetune":
            groups.setdefault((run.parent_id, canonical(run.resources)), []).append(run)
    units: list[Unit] = []
    for run in (r for r in selected if r.stage == "pretrain"):
        units.append(unit_for([run], None))
        units += [unit_for(g, run.id) for (p, _), g in sorted(groups.items(), key=_key) if p == run.id]
    units += [unit_for(g, p) for (p, _), g in sorted(groups.items(), key=_key) if p not in chosen]
    return units


def canonical(resources: dict[str, Any]) -> str:
    import json

    return json.dumps(resources, sort_keys=True, default=str)


def _key(item: tuple[tuple[str | None, str], list[Run]]) -> tuple[bool, str, str]:
    (parent, res), _ = item
    return (parent is None, parent or "", res)


def unit_for(runs: list[Run], parent_id: str | None) -> Unit:
    runs = sorted(runs, key=lambda r: (r.seed, r.id))
    resources = resources_for_run(runs[0].resources, where=f"run {runs[0].id} resources")
    return Unit(
        run_ids=tuple(r.id for r in runs),
        stage=runs[0].stage,
        parent_id=parent_id,
        resources=resources,
        job_name=f"ioussl-{runs[0].id}",
    )


def waits_for(session: Session, unit: Unit) -> tuple[str | None, bool]:
    """(job id, ready): a fine-tune array waits for its pretrain's current job; for none when that is done.
    Not ready: the pretrain has no job id yet. The backend words the dependency (``Backend.after``)."""
    if unit.parent_id is None:
        return None, True
    parent = repo.run_or_none(session, unit.parent_id)
    if parent is None or parent.status == S.COMPLETED:
        return None, True
    attempt = parent.attempts[-1] if parent.attempts else None
    if parent.status in (S.PENDING, S.RUNNING, S.SUBMITTING) and attempt is not None and attempt.job_id:
        return attempt.job_id, True
    return None, False


def record_intent(session: Session, unit: Unit, executor: str, parent_job: str | None, *,
                  arrays: bool = True) -> None:
    """Runs -> SUBMITTING with one attempt each (job name, array index, no job id yet). Before sbatch.

    ``arrays``: the backend submits a unit of several runs as one job array (SLURM), so each attempt
    records its array index.
    """
    array = len(unit.run_ids) > 1 and arrays
    for index, run_id in enumerate(unit.run_ids):
        run = repo.get_run(session, run_id)
        repo.set_status(session, run, S.SUBMITTING, reason="submitting")
        repo.add_attempt(
            session,
            run_id=run_id,
            executor=executor,
            job_name=unit.job_name,
            status=S.SUBMITTING,
            array_index=index if array else None,
            depends_on=parent_job,
        )
    session.flush()


def record_jobs(session: Session, unit: Unit, job_ids: Sequence[str]) -> dict[str, str]:
    """The intent's attempts get their job ids; the runs are PENDING until the next sync says more."""
    recorded = {}
    for run_id, job_id in zip(unit.run_ids, job_ids, strict=True):
        run = repo.get_run(session, run_id)
        attempt = _open_intent(run)
        if attempt is None:
            continue
        repo.set_attempt_job(attempt, job_id, S.PENDING)
        repo.set_status(session, run, S.PENDING, reason=f"submitted as job {job_id}")
        recorded[run_id] = job_id
    return recorded


def record_rejection(session: Session, unit: Unit, message: str) -> None:
    """sbatch said no (bad partition, account, ...): the runs stay PLANNED, the attempt keeps the message."""
    for run_id in unit.run_ids:
        run = repo.get_run(session, run_id)
        attempt = _open_intent(run)
        if attempt is not None:
            repo.set_attempt_status(attempt, S.PLANNED, reason=message)
        repo.set_status(session, run, S.PLANNED, reason=message)


def _open_intent(run: Run) -> Attempt | None:
    attempt = run.attempts[-1] if run.attempts else None
    return attempt if attempt is not None and attempt.job_id is None and attempt.status == S.SUBMITTING else None


def check_job_strings(unit: Unit, runs: Sequence[Run], parent_job: str | None) -> None:
    """Every string that reaches the job script, checked again right before it is built (see jobscript);
    the backend checks its own dependency syntax as the last gate."""
    jobscript.check_text(unit.job_name, "job name")
    if parent_job is not None:
        jobscript.check_text(parent_job, "job dependency")
    for run in runs:
        jobscript.check_path(run.run_dir, f"run {run.id} run directory")
        jobscript.check_path(run.study.runs_dir, f"study {run.study.name} runs_dir")


def set_aside_result(run: Run) -> Path | None:
    """Move an INVALID run's result.json out of the way (kept beside it) so a retry computes a new one."""
    path = Path(run.run_dir) / runfiles.RESULT
    if not path.is_file() or path.is_symlink():
        return None
    target = path.with_name(f"{runfiles.RESULT}.rejected-{utcnow():%Y%m%dT%H%M%S}")
    os.replace(path, target)
    return target


def write_run_files(runs: Iterable[Run]) -> None:
    """The frozen config goes into each run directory before its job exists (the job reads only files).

    Run directories are created without group/world write (they hold what the job reads)."""
    for run in runs:
        runfiles.make_private_dir(Path(run.run_dir))
        path = Path(run.run_dir) / runfiles.CONFIG
        text = job_config_json(run.config, run.study.base_dir)
        if not path.exists() or path.read_text() != text:
            with runfiles.private_dirs():  # what the job reads: never group or world writable, whatever the umask
                runfiles.atomic_write_text(path, text)


def job_calls(session: Session, unit: Unit, factory: JobFactory) -> list[Callable[[], Any]]:
    calls = []
    for run_id in unit.run_ids:
        run = repo.get_run(session, run_id)
        encoder = str(Path(run.parent.run_dir) / ENCODER) if run.parent is not None else None
        calls.append(factory(str(Path(run.run_dir).resolve()), encoder))
    return calls


def adopt_orphans(
    session: Session,
    backend_for: Callable[[str], Backend],
    grace_s: float = ADOPT_GRACE_S,
    now: dt.datetime | None = None,
) -> tuple[list[str], list[str], int]:
    """Resolve intents left by a killed submit: adopt their job by name, or put the runs back to PLANNED.

    Returns (adopted run ids, reverted run ids, intents still too young to judge).
    """
    now = now or utcnow()
    intents = repo.open_intents(session)
    by_unit: dict[tuple[str, str], list[Attempt]] = {}
    for attempt in intents:
        by_unit.setdefault((attempt.executor, attempt.job_name or ""), []).append(attempt)
    adopted, reverted, young = [], [], 0
    known = repo.known_job_ids(session)
    for (executor, name), attempts in by_unit.items():
        backend = backend_for(executor)
        named = backend.find_by_name([name]).get(name, []) if name else []
        found = [job_id for job_id in named if job_id not in known]
        is_young = (now - min(a.submitted_at for a in attempts)).total_seconds() < grace_s
        job_ids = _job_ids(attempts, found) if found else None
        if job_ids and all(backend.job_stored(j, name) for j in job_ids.values()):
            adopted += _adopt(session, attempts, job_ids)
            backend.release(list(job_ids.values()))
        elif is_young:
            young += 1  # the submit that wrote this intent may still be inside sbatch or submitit
        elif job_ids:
            backend.cancel(list(job_ids.values()))  # sbatch ran but submitit never stored the job: unusable
            reverted += _revert(session, attempts, job_ids)
        else:
            reverted += _revert(session, attempts, None)
    return adopted, reverted, young


def _job_ids(attempts: list[Attempt], found: list[str]) -> dict[int, str]:
    """Attempt id -> job id ("12" or "12_<array index>") of the newest job with the unit's name."""
    base = max({j.split("_")[0] for j in found}, key=int)
    return {a.id: base if a.array_index is None else f"{base}_{a.array_index}" for a in attempts}


def _adopt(session: Session, attempts: list[Attempt], job_ids: dict[int, str]) -> list[str]:
    for attempt in attempts:
        job_id = job_ids[attempt.id]
        repo.set_attempt_job(attempt, job_id, S.PENDING, reason="adopted after an interrupted submit")
        repo.set_status(session, attempt.run, S.PENDING, reason=f"adopted job {job_id}")
    return [a.run_id for a in attempts]


def _revert(session: Session, attempts: list[Attempt], job_ids: dict[int, str] | None) -> list[str]:
    """Back to PLANNED; an unusable orphan job keeps its id in the attempt (cancelled), so none is lost."""
    for attempt in attempts:
        if job_ids:
            repo.set_attempt_job(attempt, job_ids[attempt.id], S.CANCELLED,
                                 reason="submit interrupted before submitit stored the job: orphan job cancelled")
        else:
            repo.set_attempt_status(attempt, S.PLANNED,
                                    reason="no job reached the scheduler (submit interrupted before sbatch)")
        repo.set_status(session, attempt.run, S.PLANNED, reason="previous submit was interrupted")
    return [a.run_id for a in attempts]


def wait_for_young_intents(adopt: Callable[[], int], grace_s: float = ADOPT_GRACE_S) -> None:
    """Adopt once; while intents are too young to judge, wait out the grace period and adopt again."""
    deadline = time.monotonic() + grace_s + 1
    while adopt() and time.monotonic() < deadline:
        time.sleep(0.5)
