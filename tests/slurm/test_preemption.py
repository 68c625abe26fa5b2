"""Preemption and time limits on the real test cluster: a job is requeued with the same job id and attempt,
resumes from its checkpoint, completes once, and its fine-tunes' afterok holds (scripts/slurm-local-up.sh:
partition "preemptible" is requeued for partition "urgent"; preempt_send_user_signal gives it USR2 first)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm


def _plan_on(rig, partition: str, **stage: int) -> None:
    study = rig.write_study()
    text = study.read_text().replace('partition = "gpu"', f'partition = "{partition}"')
    head, rest = text.split("[resources.pretrain]\n")
    section, tail = rest.split("[resources.finetune]\n")
    lines = [line for line in section.splitlines() if line.split(" = ")[0] not in stage]
    lines += [f"{key} = {value}" for key, value in stage.items()]
    section = "\n".join(lines) + "\n"
    study.write_text(f"{head}[resources.pretrain]\n{section}[resources.finetune]\n{tail}")
    rig.ioussl("plan", "grid", "study.toml", "--no-check-data")


def _steps(run: dict) -> list[int]:
    path = Path(run["run_dir"]) / "metrics.jsonl"
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()]


def _assert_one_complete_result(rig, pretrain: dict, steps: int) -> None:
    assert _steps(pretrain) == list(range(steps))  # every step once: nothing lost, nothing done twice
    result = json.loads((Path(pretrain["run_dir"]) / "result.json").read_text())
    assert result["steps"] == steps and result["resumed_from"] > 0


def test_a_preempted_pretrain_is_requeued_resumes_and_its_fine_tunes_still_run(rig):
    _plan_on(rig, "preemptible")
    pretrain, *finetunes = rig.runs()
    # 80 s of work: the preemption (a scheduler pass, then the partition's 20 s GraceTime before the kill) must
    # land while the pretrain still runs, also on a loaded CI machine (with 40 s it once landed after the end)
    rig.set_workload(pretrain, steps=160, step_s=0.5)
    for run in finetunes:
        rig.set_workload(run, steps=1, step_s=0.05)
    rig.ioussl("submit", "--study", rig.name)
    rows = rig.wait_for(lambda rows: rows[pretrain["id"]]["status"] == "RUNNING", timeout=60)
    job_id = rows[pretrain["id"]]["job_id"]
    time.sleep(3)  # a few checkpoints
    # A job of the higher-tier partition that needs every CPU of the node preempts the pretrain.
    urgent = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "-p",
            "urgent",
            "-c",
            "8",
            "--job-name",
            "urgent",
            "--output=/dev/null",
            "--wrap",
            "sleep 2",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    seen = set()

    def done(rows):
        seen.update(row["status"] for row in rows.values())
        return all(row["status"] == "COMPLETED" for row in rows.values())

    rows = rig.wait_for(done, timeout=300, poll=1)
    assert not seen & {"FAILED", "LOST", "TIMEOUT", "BLOCKED"}, seen
    row = rows[pretrain["id"]]
    assert row["job_id"] == job_id and row["attempts"] == 1  # the same job and attempt, requeued
    # "preempted" when the job caught its USR2 and asked for the requeue itself; "unknown" when SLURM killed and
    # requeued it after the grace time without the signal reaching the job's task.
    assert row["requeues"] >= 1 and set(row["requeue_reasons"]) <= {"preempted", "unknown"}, row
    events = [e["event"] for e in rig.events(pretrain)]
    assert events.count("finished") == 1 and events.count("started") == 1 + row["requeues"], events
    _assert_one_complete_result(rig, pretrain, 160)
    state = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "State", "-j", urgent], capture_output=True, text=True)
    assert state.stdout.strip().startswith("COMPLETED"), state.stdout


def test_a_run_longer_than_its_time_limit_completes_after_requeues(rig):
    # 2-minute jobs warned 30 s before their end. SLURM checks signal times about once a minute, so it may
    # warn up to a minute early: a 1-minute job would get USR2 while Python is still starting (and die of it).
    # The warning comes 30-90 s into a job, never later: 110 s of work needs at least one requeue; each
    # resumes from the last step.
    _plan_on(rig, "gpu", time_min=2, signal_delay_s=30, max_requeues=8)
    pretrain = rig.runs("pretrain")[0]
    rig.set_workload(pretrain, steps=220, step_s=0.5)
    rig.ioussl("submit", "--study", rig.name, "--stage", "pretrain")
    rows = rig.wait_for(lambda rows: rows[pretrain["id"]]["status"] in ("COMPLETED", "FAILED", "TIMEOUT"),
                        timeout=540, poll=2)  # fmt: skip
    row = rows[pretrain["id"]]
    assert row["status"] == "COMPLETED", row
    assert row["attempts"] == 1 and row["requeues"] >= 1 and set(row["requeue_reasons"]) == {"time limit"}, row
    _assert_one_complete_result(rig, pretrain, 220)


def test_scontrol_requeue_by_hand_resumes_the_same_run(rig):
    _plan_on(rig, "gpu")
    pretrain = rig.runs("pretrain")[0]
    rig.set_workload(pretrain, steps=24, step_s=0.5)
    rig.ioussl("submit", "--study", rig.name, "--stage", "pretrain")
    rows = rig.wait_for(lambda rows: rows[pretrain["id"]]["status"] == "RUNNING", timeout=60)
    job_id = rows[pretrain["id"]]["job_id"]
    time.sleep(3)
    subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, check=True)
    rows = rig.wait_for(lambda rows: rows[pretrain["id"]]["status"] in ("COMPLETED", "FAILED"), timeout=180, poll=1)
    row = rows[pretrain["id"]]
    assert row["status"] == "COMPLETED", row
    assert row["job_id"] == job_id and row["attempts"] == 1 and row["requeue_reasons"] == ["unknown"], row
    _assert_one_complete_result(rig, pretrain, 24)
