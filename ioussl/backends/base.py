"""Executor adapters: SLURM through submitit's SlurmExecutor, or submitit's LocalExecutor on this machine.

Both submit the same callables (RunJob, or the synthetic test workload) and answer the same four
questions: submit a unit, query jobs, find orphaned jobs by name, cancel jobs. Only this module imports
submitit's executors (lazily), so planning and status stay light.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ioussl.backends import slurmcmd as scheduler
from ioussl.backends import slurmtext as slurm
from ioussl.backends.controllerio import controller_output
from ioussl.backends.slurmcmd import QueryResult, Runner
from ioussl.backends.slurmtext import JobInfo, Resources
from ioussl.errors import ConfigError, SubmissionError

EXECUTORS = ("auto", "slurm", "local")


@dataclass(frozen=True)
class Unit:
    """One submission: a pretrain, or the fine-tunes of one pretrain (or the baseline) as one job array."""

    run_ids: tuple[str, ...]
    stage: str
    parent_id: str | None  # the pretrain run these fine-tunes wait for
    resources: Resources
    job_name: str  # "ioussl-<first run id>": how a crashed submit's job is found again

    @property
    def comment(self) -> str:
        return "ioussl runs=" + ",".join(self.run_ids)


class Backend(Protocol):
    """What the engine asks of an executor. Callers branch on the capabilities, never on ``name``
    (which is only recorded in attempts): ``supports_dependencies`` (the scheduler holds fine-tunes until
    their pretrain succeeded; otherwise ioussl sequences them itself), ``supports_arrays`` (a unit of
    several runs is one submission, array task ids "12_3"), ``runs_here`` (jobs run on this machine)."""

    name: str
    supports_dependencies: bool
    supports_arrays: bool
    runs_here: bool

    def submit(self, unit: Unit, calls: Sequence[Callable[[], Any]], dependency: str | None) -> list[str]: ...

    def query(self, job_ids: Iterable[str]) -> QueryResult: ...

    def find_by_name(self, names: Iterable[str]) -> dict[str, list[str]]: ...

    def job_stored(self, job_id: str, job_name: str) -> bool: ...

    def release(self, job_ids: Iterable[str]) -> None: ...

    def cancel(self, job_ids: Iterable[str]) -> None: ...


def resolve_executor(executor: str) -> tuple[str, str | None]:
    """The concrete executor for a requested one, and why ``auto`` chose local (None otherwise).

    ``auto`` is SLURM only where a controller answers (``scheduler.controller_answers``), else local.

    Raises:
        ConfigError: an unknown executor name.
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if executor != "auto":
        return executor, None
    why_not = scheduler.controller_answers()
    return ("local", why_not) if why_not else ("slurm", None)


def choose_backend(executor: str, folder: Path, runner: Runner = scheduler.run_command) -> Backend:
    """The backend for a concrete or ``auto`` executor (see :func:`resolve_executor`).

    Raises:
        ConfigError: an unknown executor name.
        SubmissionError: ``slurm`` asked for where there is no ``sbatch``.
    """
    executor, _ = resolve_executor(executor)
    if executor == "slurm" and not scheduler.sbatch_available():
        raise SubmissionError(
            "--executor slurm: sbatch is not on PATH (not a SLURM login node?); "
            "use --executor local to run on this machine"
        )
    return SlurmBackend(folder, runner) if executor == "slurm" else LocalBackend(folder)


def backend_for_attempts(executor: str, folder: Path, runner: Runner = scheduler.run_command) -> Backend:
    """The backend that can answer for existing attempts of this executor (no sbatch check)."""
    return SlurmBackend(folder, runner) if executor == "slurm" else LocalBackend(folder)


class SlurmBackend:
    """sbatch through submitit; one sacct (or scontrol/squeue) per query; scancel."""

    name = "slurm"
    supports_dependencies = True
    supports_arrays = True
    runs_here = False

    def __init__(self, folder: Path, runner: Runner = scheduler.run_command) -> None:
        self.folder = folder
        self.runner = runner

    def submit(self, unit: Unit, calls: Sequence[Callable[[], Any]], dependency: str | None) -> list[str]:
        import submitit

        try:
            executor = submitit.SlurmExecutor(folder=self.folder / "%j", max_num_timeout=unit.resources.max_requeues)
        except RuntimeError as exc:  # submitit's "Could not detect srun": sbatch exists, srun does not
            raise SubmissionError(f"cannot submit {unit.job_name}: {scheduler.one_line(str(exc))} (is srun on PATH "
                                  "on this login node? --executor local runs on this machine)") from None
        executor.update_parameters(
            **slurm.submitit_parameters(
                unit.resources, job_name=unit.job_name, comment=unit.comment, dependency=dependency
            )
        )
        try:
            # submitit prints sbatch's stderr itself on failure; we report it once, on one line.
            with contextlib.redirect_stderr(io.StringIO()), executor.batch():
                jobs = [executor.submit(call) for call in calls]
        except submitit.core.utils.FailedJobError as exc:
            raise SubmissionError(f"sbatch rejected {unit.job_name}: {scheduler.one_line(str(exc))}") from None
        return [job.job_id for job in jobs]

    def query(self, job_ids: Iterable[str]) -> QueryResult:
        return scheduler.query_jobs(job_ids, self.runner)

    def find_by_name(self, names: Iterable[str]) -> dict[str, list[str]]:
        wanted = set(names)
        if not wanted:
            return {}
        found: dict[str, list[str]] = {}
        for info in scheduler.controller_jobs(self.runner).values():
            if info.name in wanted:
                found.setdefault(info.name, []).append(info.job_id)
        return found

    def job_stored(self, job_id: str, job_name: str) -> bool:
        """Whether submitit finished its side of the submission (it stores the job after sbatch answers)."""
        return _pickle_stored(self.folder / "%j", job_id)

    def release(self, job_ids: Iterable[str]) -> None:
        scheduler.release_jobs(job_ids, self.runner)

    def cancel(self, job_ids: Iterable[str]) -> None:
        scheduler.cancel_jobs(job_ids, self.runner)


class LocalBackend:
    """submitit's LocalExecutor: one controller process per run (job id = its pid), no dependencies.

    The controllers outlive ``ioussl submit``; a later process checks them through /proc. Each unit gets
    its own folder ``<runs>/_submitit/local/<job name>/<pid>``, so a crashed submit's process is found.
    """

    name = "local"
    supports_dependencies = False
    supports_arrays = False
    runs_here = True

    def __init__(self, folder: Path) -> None:
        self.folder = folder / "local"
        self._jobs: dict[str, Any] = {}  # our own children, polled so they do not linger as zombies

    def submit(self, unit: Unit, calls: Sequence[Callable[[], Any]], dependency: str | None) -> list[str]:
        import submitit

        if dependency:
            raise SubmissionError("the local executor has no dependencies; ioussl starts fine-tunes itself")
        executor = submitit.LocalExecutor(
            folder=self.folder / unit.job_name / "%j", max_num_timeout=unit.resources.max_requeues
        )
        executor.update_parameters(
            timeout_min=unit.resources.time_min,
            gpus_per_node=unit.resources.gpus_per_node,
            signal_delay_s=unit.resources.signal_delay_s,
            stderr_to_stdout=True,
        )
        ids = []
        # The controller copies this process's environment: tell the job how many CPUs it was given, as
        # SLURM would (SLURM_CPUS_PER_TASK), so that several local jobs do not each use every core.
        with _environment(IOUSSL_CPUS_PER_TASK=str(unit.resources.cpus_per_task)), \
                controller_output(self.folder / unit.job_name):
            for call in calls:
                job = executor.submit(call)
                self._jobs[job.job_id] = job
                ids.append(job.job_id)
        return ids

    def query(self, job_ids: Iterable[str]) -> QueryResult:
        """A live controller is RUNNING; an ended one is not reported (its run directory tells the rest)."""
        jobs = {}
        for job_id in job_ids:
            if self._alive(job_id):
                jobs[job_id] = JobInfo(job_id=job_id, state="RUNNING", raw_state="RUNNING", node="localhost")
        return QueryResult(jobs, "local", 0)

    def find_by_name(self, names: Iterable[str]) -> dict[str, list[str]]:
        found = {}
        for name in names:
            folder = self.folder / name
            pids = sorted(p.name for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []
            if pids:
                found[name] = pids
        return found

    def job_stored(self, job_id: str, job_name: str) -> bool:
        return _pickle_stored(self.folder / job_name / "%j", job_id)

    def release(self, job_ids: Iterable[str]) -> None:
        """Local jobs start at once; nothing is held."""

    def cancel(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            if self._alive(job_id):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(job_id), signal.SIGINT)  # what LocalJob.cancel sends

    def _alive(self, job_id: str) -> bool:
        job = self._jobs.get(job_id)
        if job is not None:
            return job.state == "RUNNING"  # polls (and reaps) our own child
        return _controller_alive(job_id)


def _pickle_stored(folder: Path, job_id: str) -> bool:
    from submitit.core.utils import JobPaths

    return JobPaths(folder, job_id=job_id).submitted_pickle.exists()


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _controller_alive(pid: str) -> bool:
    """A pid from an earlier session: alive, not a zombie, and still a submitit controller (pids wrap)."""
    proc = Path("/proc") / pid
    try:
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        status = (proc / "status").read_text()
    except OSError:
        return False
    state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "Z")
    return b"submitit" in cmdline and state not in ("Z", "X")
