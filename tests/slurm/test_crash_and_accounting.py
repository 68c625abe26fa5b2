"""Crash safety and life without accounting, on the real cluster.

kill -9 of `ioussl submit` at any moment, then a rerun: every unit has exactly one job and every job id
is recorded. Without sacct (a failing `sacct` first on PATH, as on a cluster without slurmdbd), status
falls back to scontrol and still tells completed from failed.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections import Counter

import pytest

from tests.slurm.helpers import all_status

pytestmark = pytest.mark.slurm


SLOW_SBATCH = {
    # sbatch answers late (a busy controller): the job exists, submit has only its intent when killed.
    "slow-answer": '#!/bin/sh\n{real} "$@"; rc=$?; sleep 2; exit $rc\n',
    # sbatch starts late: killed before the job exists; the orphaned sbatch then submits it anyway.
    "slow-start": '#!/bin/sh\nsleep 1.5; exec {real} "$@"\n',
}


@pytest.mark.parametrize("mode, kill_at", [("none", 0), ("slow-answer", 4), ("slow-start", 3)])
def test_kill_9_of_submit_then_rerun_gives_no_duplicate_and_loses_no_job_id(rig, tmp_path, mode, kill_at):
    rig.plan(intervals=4)  # 4 pretrains + 4 fine-tune arrays: 8 sbatch calls
    for run in rig.runs():
        rig.set_workload(run, steps=400, step_s=0.5)  # keep them in the queue while we look
    env = dict(rig.env)
    if mode != "none":
        (tmp_path / "bin").mkdir()
        fake = tmp_path / "bin" / "sbatch"
        fake.write_text(SLOW_SBATCH[mode].format(real=shutil.which("sbatch")))
        fake.chmod(stat.S_IRWXU)
        env["PATH"] = f"{fake.parent}{os.pathsep}{env['PATH']}"
    first = subprocess.Popen(
        [sys.executable, "-m", "ioussl", "submit", "--study", rig.name],
        cwd=rig.root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while kill_at and _intents(rig) < kill_at:  # the kill_at-th unit's intent is committed
        assert time.monotonic() < deadline and first.poll() is None, "submit finished before the kill"
        time.sleep(0.05)
    time.sleep(0.2 if mode != "none" else 0.6)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = rig.runs()

    rerun = rig.ioussl("submit", "--study", rig.name).stdout
    runs = rig.runs()
    queue = rig.squeue()
    live = [(job, name) for job, name, state, _ in queue if state in ("PENDING", "RUNNING")]
    per_name = Counter(name for job, name in live if "_" not in job or job.endswith("_0"))
    assert len(per_name) == 8 and set(per_name.values()) == {1}, (
        queue,
        [(r["id"], r["status"], r["job_id"], r["reason"]) for r in runs],
        rerun,
    )  # one live job per unit
    latest = {run["job_id"] for run in runs}
    assert None not in latest and latest == {job for job, _ in live}
    assert all(run["status"] in ("PENDING", "RUNNING") for run in runs)
    # Every job SLURM holds for the study is in some attempt, an orphan's included (a pending array that was
    # cancelled before it split is listed by its bare id).
    assert {job.split("_")[0] for job, *_ in queue} <= {j.split("_")[0] for j in _all_attempt_job_ids(rig)}
    orphans = sum(1 for run in before if run["status"] == "SUBMITTING" and run["job_id"] is None)
    if mode != "none":
        assert orphans >= 1, "the kill did not land between intent and job id"
    print(
        f"{mode}, killed at unit {kill_at}: {orphans} run(s) SUBMITTING without a job id; "
        f"rerun adopted {rerun.count('adopted the job')}, resubmitted {rerun.count('resubmitting')}"
    )


def _all_attempt_job_ids(rig) -> set[str]:
    from sqlalchemy import select

    from ioussl.registry import open_registry
    from ioussl.registry.models import Attempt

    registry = open_registry(rig.db, create=False)
    try:
        with registry.session() as session:
            return set(session.scalars(select(Attempt.job_id).where(Attempt.job_id.is_not(None))))
    finally:
        registry.dispose()


def _intents(rig) -> int:
    return sum(1 for run in rig.runs() if run["status"] != "PLANNED")


def test_status_without_sacct_falls_back_to_scontrol(rig, tmp_path):
    rig.plan()
    pretrain, *finetunes = rig.runs()
    rig.set_workload(pretrain, steps=1, step_s=0.05)
    rig.set_workload(finetunes[0], steps=1, step_s=0.05)
    rig.set_workload(finetunes[1], steps=1, step_s=0.05, fail_attempts=1)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sacct").write_text("#!/bin/sh\necho 'sacct: error: Slurm accounting storage is disabled' >&2\nexit 1\n")
    (fake / "sacct").chmod(stat.S_IRWXU)
    env = {**rig.env, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}

    rig.ioussl("submit", "--study", rig.name, env=env)
    rows = rig.wait_for(all_status("COMPLETED", "FAILED"), timeout=60, env=env)
    assert rows[pretrain["id"]]["status"] == "COMPLETED"
    assert rows[finetunes[0]["id"]]["status"] == "COMPLETED"
    assert rows[finetunes[1]["id"]]["status"] == "FAILED"
    assert "synthetic failure" in rows[finetunes[1]["id"]]["reason"]
