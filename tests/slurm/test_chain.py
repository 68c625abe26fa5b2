"""One pretrain and two fine-tunes: the fine-tunes wait (afterok) and start only after the pretrain."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.slurm.helpers import all_status

pytestmark = pytest.mark.slurm


def _iso(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def test_finetunes_are_held_by_the_dependency_and_start_after_the_pretrain(rig):
    rig.plan()
    pretrain, *finetunes = rig.runs()
    assert pretrain["stage"] == "pretrain" and len(finetunes) == 2
    rig.set_workload(pretrain, steps=8, step_s=0.25)
    for run in finetunes:
        rig.set_workload(run, steps=1, step_s=0.05)

    out = rig.ioussl("submit", "--study", rig.name).stdout
    assert "1 sbatch call" not in out and "2 sbatch call(s)" in out  # one pretrain job, one array

    jobs = {row[1]: row for row in rig.squeue()}
    held = [row for row in rig.squeue() if row[1] == f"ioussl-{finetunes[0]['id']}"]
    assert f"ioussl-{pretrain['id']}" in jobs
    pretrain_job = jobs[f"ioussl-{pretrain['id']}"][0]
    # Right after the release the scheduler may not have looked at the array yet (reason "None" rather than
    # "Dependency"); what the controller holds as its dependency is there from the submission on.
    dependencies = rig.dependencies()
    assert len(held) == 2 and all(state == "PENDING" for _, _, state, _ in held)
    assert all(dependencies[job_id].startswith(f"afterok:{pretrain_job}") for job_id, *_ in held), dependencies

    rows = rig.wait_for(all_status("COMPLETED"), timeout=60)
    assert rows[pretrain["id"]]["dsc"] is None  # a pretrain's result has a loss, not a DSC
    assert sorted(rows[r["id"]]["dsc"] for r in finetunes) == pytest.approx([0.815, 0.825])
    assert {rows[r["id"]]["job_id"] for r in finetunes} == {f"{held[0][0].split('_')[0]}_{i}" for i in (0, 1)}
    pretrain_end = max(e["t"] for e in rig.events(pretrain) if e["event"] == "finished")
    starts = [e["t"] for r in finetunes for e in rig.events(r) if e["event"] == "started"]
    assert min(starts) >= pretrain_end
    task = rows[finetunes[1]["id"]]["job_id"]  # an array task: submitit's files live under <job>_<index>/
    logs = rig.ioussl("logs", finetunes[1]["id"]).stdout
    assert f"attempt 1: slurm job {task}" in logs and f"/_submitit/{task}/{task}_0_log.out ---" in logs
    assert "submitit INFO" in logs and "Job completed successfully" in logs and "  finished  " in logs
    assert f"/_submitit/{task}/{task}_0_log.err" in logs
    print(
        f"pretrain end -> fine-tune start: {min(starts) - pretrain_end:.2f} s (first), "
        f"{max(starts) - pretrain_end:.2f} s (last)"
    )


def test_names_with_shell_metacharacters_are_never_run_by_a_shell(rig):
    unique, rig.name = rig.name, "evil; touch PWNED1 $(touch PWNED2) `touch PWNED3`"
    rig.write_study()
    refused = rig.ioussl("plan", "grid", "study.toml", "--no-check-data", check=False)
    assert refused.returncode == 1 and "[study] name must be 1-128 letters" in refused.stderr
    rig.name = unique
    rig.runs_dir = "runs dir/$(touch PWNED4);x `touch PWNED3`"
    rig.plan()
    for run in rig.runs():
        rig.set_workload(run, steps=1, step_s=0.05)
    rig.ioussl("submit", "--study", rig.name)
    rows = rig.wait_for(all_status("COMPLETED"), timeout=60)
    assert all("runs dir/$(touch PWNED4)" in row["run_dir"] for row in rows.values())
    assert not list(rig.root.rglob("PWNED*")) and not list(rig.root.parent.glob("PWNED*"))
