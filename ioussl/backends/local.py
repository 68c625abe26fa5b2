"""The local backend: submitit's LocalExecutor runs each job as a process of this machine.

One controller process per run (job id = its pid), no dependencies and no arrays: ioussl starts a
fine-tune itself once its pretrain completed (submit/service.py's local loop). The controllers outlive
``ioussl submit``; a later process checks them through /proc. Each unit gets its own folder
``<runs>/_submitit/local/<job name>/<pid>``, so a crashed submit's process is found by its name.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ioussl.backends.base import JobInfo, JobState, QueryResult, StateTable, Unit
from ioussl.backends.controllerio import controller_output
from ioussl.errors import ConfigError, SubmissionError
from ioussl.status import RunStatus

# A live controller is all this backend can see; an ended one is not reported (its run directory tells).
STATES = StateTable("local", {"RUNNING": JobState(RunStatus.RUNNING, plain=True)})
PID = re.compile(r"[0-9]{1,20}")
JOB_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,127}")  # a folder name: never "." or ".."


class LocalBackend:
    """submitit's LocalExecutor on this machine (see the module docstring)."""

    name = "local"
    supports_dependencies = False
    supports_arrays = False
    runs_here = True
    uses_cluster_profile = False  # account, partition and sbatch options mean nothing here
    states = STATES

    def __init__(self, folder: Path) -> None:
        self.folder = folder / "local"
        self._jobs: dict[str, Any] = {}  # our own children, polled so they do not linger as zombies

    @classmethod
    def unavailable(cls) -> str | None:
        return None  # this machine can always run a process

    def check_can_submit(self) -> None:
        """Nothing to check: jobs run here."""

    def after(self, job_id: str) -> str:
        return f"the completion of {job_id} (ioussl starts it then)"

    def describe(self, unit: Unit, dependency: str | None) -> str:
        params = " ".join(f"{key}={value}" for key, value in self._parameters(unit).items())
        return f"local process: {params}, {unit.resources.cpus_per_task} CPU(s)"

    def submit(self, unit: Unit, calls: Sequence[Callable[[], Any]], dependency: str | None) -> list[str]:
        import submitit

        if dependency:
            raise SubmissionError("the local executor has no dependencies; ioussl starts fine-tunes itself")
        executor = submitit.LocalExecutor(
            folder=self.folder / unit.job_name / "%j", max_num_timeout=unit.resources.max_requeues
        )
        executor.update_parameters(**self._parameters(unit), stderr_to_stdout=True)
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

    @staticmethod
    def _parameters(unit: Unit) -> dict[str, Any]:
        """The resources LocalExecutor honours: a time limit, GPUs, processes (one per GPU: several train as
        one DDP process group), the warning before the limit."""
        return {
            "timeout_min": unit.resources.time_min,
            "gpus_per_node": unit.resources.gpus_per_node,
            "tasks_per_node": unit.resources.tasks(),
            "signal_delay_s": unit.resources.signal_delay_s,
        }

    def query(self, job_ids: Iterable[str]) -> QueryResult:
        """A live controller is RUNNING; an ended one is not reported (its run directory tells the rest)."""
        jobs = {}
        for job_id in job_ids:
            if self._alive(job_id):
                jobs[job_id] = JobInfo(job_id=job_id, state="RUNNING", raw_state="RUNNING", node="localhost")
        return QueryResult(jobs, "local", 0)

    def held_at_submit(self, info: JobInfo) -> bool:
        return False  # local jobs start at once

    def find_by_name(self, names: Iterable[str]) -> dict[str, list[str]]:
        found = {}
        for name in names:
            folder = self.folder / name
            pids = sorted(p.name for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []
            if pids:
                found[name] = pids
        return found

    def job_stored(self, job_id: str, job_name: str) -> bool:
        return _paths(self.folder / job_name, job_id).submitted_pickle.exists()

    def release(self, job_ids: Iterable[str]) -> None:
        """Local jobs start at once; nothing is held."""

    def cancel(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            if self._alive(job_id):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(job_id), signal.SIGINT)  # what LocalJob.cancel sends

    def log_paths(self, job_id: str, job_name: str | None) -> tuple[Path, ...]:
        """stdout only: local jobs send stderr there too (``stderr_to_stdout``)."""
        if not PID.fullmatch(job_id):
            raise ConfigError(f"job id {job_id[:40]!r} is not a local process id")
        if not (job_name and JOB_NAME.fullmatch(job_name)):
            raise ConfigError("the local job has no usable name recorded")
        return (_paths(self.folder / job_name, job_id).stdout,)

    def _alive(self, job_id: str) -> bool:
        job = self._jobs.get(job_id)
        if job is not None:
            return job.state == "RUNNING"  # polls (and reaps) our own child
        return _controller_alive(job_id)


def _paths(unit_folder: Path, job_id: str) -> Any:
    """submitit's names for one job's files (``<pid>/<pid>_0_log.out``, the submitted pickle)."""
    from submitit.core.utils import JobPaths

    return JobPaths(unit_folder / "%j", job_id=job_id)


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
