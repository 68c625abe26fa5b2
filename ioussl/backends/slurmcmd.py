"""The few SLURM commands ioussl runs itself (argv lists only, never a shell string).

Submission goes through submitit (``submission.py``); this module queries and cancels:
one ``sacct`` per sync for every active job, falling back to one ``scontrol show job`` (then ``squeue``)
when accounting is off, as on clusters without slurmdbd.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence

from ioussl.backends import slurmtext as slurm
from ioussl.backends.base import JobInfo, QueryResult
from ioussl.errors import SubmissionError

Runner = Callable[[Sequence[str]], str]
QUERY_TIMEOUT_S = 60


def run_command(argv: Sequence[str]) -> str:
    """Run one scheduler command; any failure becomes a SubmissionError naming the command and its message."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=QUERY_TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise SubmissionError(f"{argv[0]}: command not found (is this a SLURM login node?)") from None
    except subprocess.TimeoutExpired:
        raise SubmissionError(f"{argv[0]} did not answer within {QUERY_TIMEOUT_S}s") from None
    if done.returncode != 0:
        raise SubmissionError(f"{argv[0]} failed: {one_line(done.stderr or done.stdout)}")
    return done.stdout


def one_line(message: str) -> str:
    """SLURM's own message on one line ("sbatch: error: invalid partition specified: nope")."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return "; ".join(errors or lines[-1:]) or "no message"


def sbatch_available() -> bool:
    return shutil.which("sbatch") is not None


def query_jobs(job_ids: Iterable[str], runner: Runner = run_command) -> QueryResult:
    """Ask SLURM once about every job; without accounting, ask the controller instead.

    Raises:
        SubmissionError: neither sacct, scontrol nor squeue answered.
    """
    ids = sorted(set(job_ids))
    if not ids:
        return QueryResult({}, "none", 0)
    try:
        jobs = slurm.parse_sacct(runner(slurm.sacct_command(ids)))
    except SubmissionError as sacct_error:
        first = sacct_error
    else:
        return _confirm_missing(ids, jobs, runner)
    try:
        return QueryResult(slurm.parse_scontrol(runner(slurm.SCONTROL_COMMAND)), "scontrol", 2)
    except SubmissionError:
        pass
    try:
        return QueryResult(slurm.parse_squeue(runner(slurm.SQUEUE_COMMAND)), "squeue", 3)
    except SubmissionError as squeue_error:
        raise SubmissionError(f"cannot query SLURM: {first}; {squeue_error}") from None


def _confirm_missing(ids: list[str], jobs: dict[str, JobInfo], runner: Runner) -> QueryResult:
    """sacct trails the controller (seconds for a fresh job under load): a job it does not list yet is
    looked up in the controller before it may count as missing. Only then is a second command run."""
    missing = [job_id for job_id in ids if slurm.lookup(jobs, job_id) is None]
    if not missing:
        return QueryResult(jobs, "sacct", 1)
    try:
        held = slurm.parse_scontrol(runner(slurm.SCONTROL_COMMAND))
    except SubmissionError:
        return QueryResult(jobs, "sacct", 2)
    for job_id in missing:
        found = slurm.lookup(held, job_id)
        if found is not None:
            jobs[job_id] = found
    return QueryResult(jobs, "sacct+scontrol", 2)


def controller_jobs(runner: Runner = run_command) -> dict[str, JobInfo]:
    """Every job the controller holds (pending, running, recently ended), with names: used for adoption."""
    return slurm.parse_squeue(runner(slurm.SQUEUE_COMMAND))


def release_jobs(job_ids: Iterable[str], runner: Runner = run_command) -> None:
    """Release held jobs (ioussl submits held, see slurm.submitit_parameters) in one call."""
    ids = list(job_ids)
    if ids:
        runner(slurm.release_command(ids))


def cancel_jobs(job_ids: Iterable[str], runner: Runner = run_command) -> None:
    """``scancel`` the jobs (array tasks as "12_3") in one call; unknown or ended ids are not an error."""
    ids = sorted(set(job_ids))
    if not ids:
        return
    try:
        runner(["scancel", *ids])
    except SubmissionError as exc:
        if "Invalid job id" not in str(exc) and "already completing" not in str(exc):
            raise


PING_TIMEOUT_S = 5  # `scontrol ping` answers in milliseconds; a dead controller fails at once


def controller_answers() -> str | None:
    """None when a SLURM controller answers ``scontrol ping``, else why not (one line).

    ``sbatch`` on PATH is not enough: a workstation with the client installed, or a stopped test
    cluster, has it too. ``sinfo`` would retry for MessageTimeout seconds; ``scontrol ping`` does not.
    """
    if not sbatch_available():
        return "no sbatch on PATH"
    try:
        done = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=PING_TIMEOUT_S,
                              check=False)
    except FileNotFoundError:
        return "sbatch is on PATH but scontrol is not"
    except subprocess.TimeoutExpired:
        return f"the SLURM controller did not answer `scontrol ping` within {PING_TIMEOUT_S}s"
    if "is UP" in done.stdout:  # a backup controller may be up while the primary is down
        return None
    said = [line.strip() for line in (done.stdout + "\n" + done.stderr).splitlines() if line.strip(" *\n")]
    return f"the SLURM controller does not answer (scontrol ping: {said[0] if said else 'no output'})"
