"""Failures on the real cluster: a failing pretrain blocks its fine-tunes (no job left pending) and a retry
completes the chain; cancel; a timeout signal requeues the job and it resumes from its checkpoint."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.slurm.helpers import all_status

pytestmark = pytest.mark.slurm


def test_failed_pretrain_blocks_finetunes_and_retry_completes_the_chain(rig):
    rig.plan()
    pretrain, *finetunes = rig.runs()
    rig.set_workload(pretrain, steps=2, step_s=0.1, fail_attempts=1)
    for run in finetunes:
        rig.set_workload(run, steps=1, step_s=0.05)
    rig.ioussl("submit", "--study", rig.name)

    rows = rig.wait_for(
        lambda rows: (
            rows[pretrain["id"]]["status"] == "FAILED" and all(rows[r["id"]]["status"] == "BLOCKED" for r in finetunes)
        ),
        timeout=60,
    )
    assert "synthetic failure on start 1" in rows[pretrain["id"]]["reason"]
    assert all("pretrain ended FAILED" in rows[r["id"]]["reason"] for r in finetunes)
    assert not [row for row in rig.squeue() if row[2] == "PENDING"], "a blocked fine-tune was left pending"

    out = rig.ioussl("retry", "--study", rig.name).stdout
    assert "submitted 3 run(s) in 2 job(s)" in out
    rows = rig.wait_for(all_status("COMPLETED"), timeout=60)
    assert rows[pretrain["id"]]["attempts"] == 2
    assert all(rows[r["id"]]["attempts"] == 2 for r in finetunes)  # the killed array and the re-chained one


def test_cancel_by_study_scancels_running_and_waiting_jobs(rig):
    rig.plan()
    pretrain, *finetunes = rig.runs()
    rig.set_workload(pretrain, steps=600, step_s=0.5)
    rig.ioussl("submit", "--study", rig.name)
    rig.wait_for(lambda rows: rows[pretrain["id"]]["status"] == "RUNNING", timeout=30)

    out = rig.ioussl("cancel", "--study", rig.name).stdout
    states = [(r["status"], r["job_id"], r["reason"]) for r in rig.status(sync=False).values()]
    assert "cancelled 3 run(s)" in out, states
    rows = rig.status()
    assert {row["status"] for row in rows.values()} == {"CANCELLED"}
    deadline = time.monotonic() + 20
    while [row for row in rig.squeue() if row[2] in ("PENDING", "RUNNING", "COMPLETING")]:
        assert time.monotonic() < deadline, f"jobs survived the cancel: {rig.squeue()}"
        time.sleep(0.3)
    later = rig.status()  # a later sync leaves cancelled runs alone
    assert {k: (r["status"], r["reason"]) for k, r in later.items()} == {
        k: ("CANCELLED", "cancelled by user") for k in rows
    }


def test_timeout_signal_requeues_the_job_and_training_resumes(rig):
    rig.plan()
    pretrain = rig.runs("pretrain")[0]
    rig.set_workload(pretrain, steps=24, step_s=0.5)
    rig.ioussl("submit", "--study", rig.name, "--stage", "pretrain")
    rows = rig.wait_for(lambda rows: rows[pretrain["id"]]["status"] == "RUNNING", timeout=30)
    job_id = rows[pretrain["id"]]["job_id"]
    time.sleep(2)  # let it write a few checkpoints
    # What SLURM sends --signal=USR2@<delay> seconds before the time limit (submitit's _interrupt(timeout=True)).
    tries = []
    for _ in range(20):  # scancel refuses to signal while the job's step is still starting
        signal = subprocess.run(["scancel", "--signal=USR2", job_id], capture_output=True, text=True)
        queue = subprocess.run(["squeue", "-h", "-s", "-j", job_id], capture_output=True, text=True).stdout
        tries.append((signal.stderr.strip(), queue.strip()))
        if signal.returncode == 0:
            break
        time.sleep(0.5)
    assert signal.returncode == 0, tries

    rows = rig.wait_for(lambda rows: rows[pretrain["id"]]["status"] == "COMPLETED", timeout=150, poll=1)
    events = [e["event"] for e in rig.events(pretrain)]
    assert events.count("requeued") == 1 and events.count("started") == 2, events
    resumed = [e["resume_step"] for e in rig.events(pretrain) if e["event"] == "started"]
    assert resumed[0] == 0 and resumed[1] > 0, resumed
    assert rows[pretrain["id"]]["job_id"] == job_id and rows[pretrain["id"]]["attempts"] == 1


def test_unknown_partition_is_sbatch_s_message_on_one_line_and_runs_stay_planned(rig):
    rig.plan()
    study = rig.root / "study.toml"
    study.write_text(study.read_text().replace('partition = "gpu"', 'partition = "nope"'))
    rig.ioussl("plan", "grid", "study.toml", "--no-check-data")  # the edited profile reaches planned runs
    done = rig.ioussl("submit", "--study", rig.name, check=False)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: sbatch rejected ioussl-")
    assert "invalid partition specified: nope" in done.stderr
    rows = rig.status()
    assert {row["status"] for row in rows.values()} == {"PLANNED"}
    assert not rig.squeue()
