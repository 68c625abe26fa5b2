"""The SLURM backend: sbatch through submitit's SlurmExecutor; one sacct (or scontrol/squeue) per query; scancel.

What SLURM prints and expects is in ``slurmtext.py`` (pure: parameters, parsers, the state table); the
commands ioussl runs itself are in ``slurmcmd.py``. This class puts them behind the Backend protocol.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ioussl.backends import slurmcmd as scheduler
from ioussl.backends import slurmtext as slurm
from ioussl.backends.base import JobInfo, QueryResult, Unit
from ioussl.backends.slurmcmd import Runner
from ioussl.errors import ConfigError, SubmissionError


class SlurmBackend:
    """A SLURM cluster, reached from a login node (see the module docstring)."""

    name = "slurm"
    supports_dependencies = True
    supports_arrays = True
    runs_here = False
    uses_cluster_profile = True
    states = slurm.STATES

    def __init__(self, folder: Path, runner: Runner = scheduler.run_command) -> None:
        self.folder = folder
        self.runner = runner

    @classmethod
    def unavailable(cls) -> str | None:
        """``sbatch`` on PATH is not enough for ``auto``: a controller must answer (``scontrol ping``)."""
        return scheduler.controller_answers()

    def check_can_submit(self) -> None:
        if not scheduler.sbatch_available():
            raise SubmissionError(
                "--executor slurm: sbatch is not on PATH (not a SLURM login node?); "
                "use --executor local to run on this machine"
            )

    def after(self, job_id: str) -> str:
        return f"afterok:{job_id}"

    def describe(self, unit: Unit, dependency: str | None) -> str:
        array = len(unit.run_ids) if len(unit.run_ids) > 1 else None
        return "sbatch " + " ".join(slurm.sbatch_flags(self._parameters(unit, dependency), array))

    def submit(self, unit: Unit, calls: Sequence[Callable[[], Any]], dependency: str | None) -> list[str]:
        import submitit

        if dependency is not None:
            slurm.check_dependency(dependency)
        try:
            executor = submitit.SlurmExecutor(folder=self.folder / "%j", max_num_timeout=unit.resources.max_requeues)
        except RuntimeError as exc:  # submitit's "Could not detect srun": sbatch exists, srun does not
            raise SubmissionError(f"cannot submit {unit.job_name}: {scheduler.one_line(str(exc))} (is srun on PATH "
                                  "on this login node? --executor local runs on this machine)") from None
        executor.update_parameters(**self._parameters(unit, dependency))
        try:
            # submitit prints sbatch's stderr itself on failure; we report it once, on one line.
            with contextlib.redirect_stderr(io.StringIO()), executor.batch():
                jobs = [executor.submit(call) for call in calls]
        except submitit.core.utils.FailedJobError as exc:
            raise SubmissionError(f"sbatch rejected {unit.job_name}: {scheduler.one_line(str(exc))}") from None
        return [job.job_id for job in jobs]

    @staticmethod
    def _parameters(unit: Unit, dependency: str | None) -> dict[str, Any]:
        return slurm.submitit_parameters(
            unit.resources, job_name=unit.job_name, comment=unit.comment, dependency=dependency
        )

    def query(self, job_ids: Iterable[str]) -> QueryResult:
        """One sacct for every job; an array task is answered under its own id even when SLURM reports
        the whole array (cancelled before it split) by its bare id."""
        ids = list(job_ids)
        result = scheduler.query_jobs(ids, self.runner)
        tasks = {job_id: found for job_id in ids if (found := slurm.lookup(result.jobs, job_id)) is not None}
        return QueryResult({**result.jobs, **tasks}, result.source, result.calls)

    def held_at_submit(self, info: JobInfo) -> bool:
        """ioussl submits every job held (``--hold``) and releases it once recorded (slurmtext)."""
        return info.state == "PENDING" and info.reason == slurm.HELD_REASON

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
        return self._paths(job_id).submitted_pickle.exists()

    def release(self, job_ids: Iterable[str]) -> None:
        scheduler.release_jobs(job_ids, self.runner)

    def cancel(self, job_ids: Iterable[str]) -> None:
        scheduler.cancel_jobs(job_ids, self.runner)

    def log_paths(self, job_id: str, job_name: str | None) -> tuple[Path, ...]:
        """stdout and stderr of the job or array task (``<job id>/<job id>_0_log.out|.err``)."""
        if not slurm.JOB_ID.fullmatch(job_id):
            raise ConfigError(f"job id {job_id[:40]!r} is not a SLURM job id")
        paths = self._paths(job_id)
        return paths.stdout, paths.stderr

    def _paths(self, job_id: str) -> Any:
        from submitit.core.utils import JobPaths

        return JobPaths(self.folder / "%j", job_id=job_id)
