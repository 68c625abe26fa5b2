"""Why a job is being requeued, as the job itself notes it in a ``requeued`` event.

SLURM sends the job's warning signal (``--signal=USR2@<signal_delay_s>``) before its time limit, and, with
``PreemptParameters=send_user_signal``, when a higher-priority job preempts it; submitit then calls the
job's ``checkpoint()``, which records the event and requeues the same job. The two look alike from inside the
handler, so the controller is asked: a preempted job has a ``PreemptTime``. Outside SLURM (the local
executor signals only at its time limit) the reason is the time limit.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ioussl import runfiles

PREEMPTED = "preempted"
TIME_LIMIT = "time limit"
UNKNOWN = "unknown"
REASONS = (PREEMPTED, TIME_LIMIT, UNKNOWN)

Runner = Callable[[list[str]], str]


def _scontrol(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=15, check=True).stdout


def requeue_reason(environ: dict[str, str] | None = None, runner: Runner = _scontrol) -> str:
    """``preempted`` or ``time limit`` for the job this process runs in; ``unknown`` if SLURM cannot say."""
    env = os.environ if environ is None else environ
    job_id = env.get("SLURM_JOB_ID", "")
    if not job_id:
        return TIME_LIMIT  # submitit's local executor sends USR2 only at the job's time limit
    if not job_id.isdigit():
        return UNKNOWN
    try:
        text = runner(["scontrol", "-o", "show", "job", job_id])
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    found = re.search(r"(?:^|\s)PreemptTime=(\S+)", text)
    if found is None:
        return UNKNOWN
    return TIME_LIMIT if found.group(1) in ("None", "Unknown", "(null)") else PREEMPTED


def record_requeue(run_dir: str | Path, **extra: Any) -> str:
    """Note a ``requeued`` event (with its reason and SLURM job id) in ``run_dir``; return the reason."""
    reason = requeue_reason()
    job = os.environ.get("SLURM_JOB_ID")
    runfiles.record_event(Path(run_dir), "requeued", reason=reason, **({"job_id": job} if job else {}), **extra)
    return reason
