"""A two-task job on the real test cluster: ``tasks_per_node = 2`` gives ``--ntasks-per-node=2``, srun starts
two processes, the job bridge joins them into one torch.distributed (gloo) process group, real training runs
DDP on the CPU, rank 0 alone writes, and the registry records a world size of 2 for the attempt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.slurm.helpers import REPO

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

STUDY = """
[study]
name = "ddp"
runs_dir = "runs"

[data]
store = "store"
split = "split.json"
crop = 64
num_workers = 0

[model]
feature_size = 12

[runtime]
device = "cpu"
precision = "fp32"
channels_last = false
cudnn_benchmark = false

[pretrain]
seeds = [1]
batch_size = 8
epochs = 2
steps_per_epoch = 2
proj_dim = 256
pred_hidden_dim = 64
amp = false

[finetune]
seeds = [1]
batch_size = 2
epochs = 2
steps_per_epoch = 2
warmup_epochs = 1
eval_every = 1
eval_every_epoch_from = 0
sw_batch_size = 8
max_val_slices = 4
amp = false

[[intervals]]
random_crop = true
i_min = 0.0
i_max = 1.0

[slurm]
partition = "gpu"

[resources.pretrain]
gpus = 0
tasks_per_node = 2
cpus_per_task = 1
mem_gb = 4
time_min = 10

[resources.finetune]
gpus = 0
tasks_per_node = 2
cpus_per_task = 1
mem_gb = 4
time_min = 10
"""


def _ioussl(root: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "ioussl", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, f"ioussl {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done.stdout


def _data(root: Path) -> None:
    from ioussl.science.data.preprocess import PreprocessSettings, preprocess_dataset
    from ioussl.science.data.synth import synth_dataset

    synth_dataset(root / "raw", 2, 1, seed=0, size=40, slices=16, spacing_mm=1.0)
    assert preprocess_dataset(root / "raw", root / "store", PreprocessSettings(min_size=64)).failed == []
    (root / "split.json").write_text(json.dumps({"train": ["SYN_Tr_0001"], "val": ["SYN_Tr_0002"]}))


def test_a_two_task_job_trains_as_one_ddp_process_group_and_records_world_size_two(tmp_path):
    env = {**os.environ, "IOUSSL_DB": str(tmp_path / "registry.db"),
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}  # fmt: skip
    env.pop("IOUSSL_JOB_FACTORY", None)  # the real entry point, real training
    _data(tmp_path)
    (tmp_path / "ddp.toml").write_text(STUDY)
    _ioussl(tmp_path, env, "plan", "grid", "ddp.toml")
    dry = _ioussl(tmp_path, env, "submit", "--study", "ddp", "--executor", "slurm", "--dry-run")
    assert dry.count("--ntasks-per-node=2") == 2
    _ioussl(tmp_path, env, "submit", "--study", "ddp", "--executor", "slurm")
    deadline = time.monotonic() + 600
    while True:
        rows = json.loads(_ioussl(tmp_path, env, "status", "--json", "--study", "ddp"))
        if {row["status"] for row in rows} <= {"COMPLETED", "FAILED", "CANCELLED", "BLOCKED", "LOST", "TIMEOUT"}:
            break
        assert time.monotonic() < deadline, rows
        time.sleep(3)
    rows.sort(key=lambda row: row["stage"] != "pretrain")
    assert [(row["stage"], row["status"], row["world_size"]) for row in rows] == [
        ("pretrain", "COMPLETED", 2), ("finetune", "COMPLETED", 2)]  # fmt: skip
    for row in rows:
        run_dir = Path(row["run_dir"])
        events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
        assert [e["event"] for e in events] == ["started", "finished"]  # rank 0 alone writes
        assert events[0]["world_size"] == 2
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [m["epoch"] for m in metrics] == [0, 1]
        result = json.loads((run_dir / "result.json").read_text())
        assert result["provenance"]["world_size"] == 2
        logs = sorted((tmp_path / "runs" / "_submitit" / row["job_id"]).glob("*_log.out"))
        assert [log.name for log in logs] == [f"{row['job_id']}_0_log.out", f"{row['job_id']}_1_log.out"]
        assert f"[ioussl {row['stage']}] epoch 2/2" in logs[0].read_text()
        assert "[ioussl" not in logs[1].read_text()  # the follower trained in step and said nothing


def _interrupted_pretrain(tmp_path: Path, monkeypatch, interrupt, partition: str = "gpu") -> tuple[dict, list[dict]]:
    """Plan the study's pretraining with 8 steps per epoch on ``partition``, submit it, call ``interrupt(job_id)``
    once epoch 0 is done, wait for the run to end; check that it resumed inside epoch 1 and ends bit for bit as
    a straight two-process run of its config (submitit's local executor, one CPU per task as here). Returns
    the run's status row and events."""
    from ioussl.config import RunConfig
    from tests.science.test_ddp import run_job

    env = {**os.environ, "IOUSSL_DB": str(tmp_path / "registry.db"),
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}  # fmt: skip
    env.pop("IOUSSL_JOB_FACTORY", None)  # the real entry point, real training
    _data(tmp_path)
    study = STUDY.replace("steps_per_epoch = 2\nproj_dim", "steps_per_epoch = 8\nproj_dim")
    study = study.replace('partition = "gpu"', f'partition = "{partition}"')
    assert study.count("steps_per_epoch = 8") == 1 and f'partition = "{partition}"' in study
    (tmp_path / "ddp.toml").write_text(study)
    _ioussl(tmp_path, env, "plan", "grid", "ddp.toml")
    _ioussl(tmp_path, env, "submit", "--study", "ddp", "--executor", "slurm", "--stage", "pretrain")

    def row() -> dict:
        return json.loads(_ioussl(tmp_path, env, "status", "--json", "--study", "ddp", "--stage", "pretrain"))[0]

    first = row()
    run_dir = Path(first["run_dir"])
    deadline = time.monotonic() + 420
    while not (run_dir / "metrics.jsonl").is_file() or not (run_dir / "metrics.jsonl").read_text():
        assert time.monotonic() < deadline, "the job never finished its first epoch"
        time.sleep(0.1)
    interrupt(first["job_id"])
    while (last := row())["status"] not in ("COMPLETED", "FAILED", "CANCELLED", "LOST", "TIMEOUT"):
        assert time.monotonic() < deadline, last
        time.sleep(2)
    assert (last["status"], last["job_id"], last["attempts"]) == ("COMPLETED", first["job_id"], 1), last
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    resumed = next(e for e in events if e["event"] == "resumed")
    assert resumed["epoch"] == 1 and 0 < resumed["epoch_steps_done"] < 8, resumed  # inside epoch 1
    monkeypatch.setenv("IOUSSL_CPUS_PER_TASK", "1")  # as each SLURM task (cpus_per_task = 1)
    run_job(tmp_path / "straight", RunConfig.from_json((run_dir / "config.json").read_text()), tasks=2)
    timing = {"time", "elapsed_s", "items_per_s", "pairs_per_s", "seconds"}
    curves = [[{k: v for k, v in json.loads(line).items() if k not in timing}
               for line in (path / "metrics.jsonl").read_text().splitlines()]
              for path in (tmp_path / "straight", run_dir)]  # fmt: skip
    assert curves[0] == curves[1]
    return last, events


def test_a_warned_two_task_job_stops_at_a_step_is_requeued_and_ends_as_a_straight_run(tmp_path, monkeypatch):
    """SLURM's warning (what --signal=USR2@<delay> sends before the time limit, here by scancel) reaches both
    tasks inside an epoch: they stop after one step, rank 0 writes that step's last.pt and requeues the job,
    the follower exits cleanly (srun's --kill-on-bad-exit must not end rank 0 first), the same job id and
    attempt resume inside the epoch, and the result is bit for bit that of a straight two-process run."""

    def warn(job_id: str) -> None:
        signalled = subprocess.run(["scancel", "--signal=USR2", job_id], capture_output=True, text=True)
        assert signalled.returncode == 0, signalled.stderr

    row, events = _interrupted_pretrain(tmp_path, monkeypatch, warn)
    assert row["requeues"] == 1 and row["requeue_reasons"] == ["time limit"], row
    assert [e["event"] for e in events] == ["started", "requeued", "interrupted", "started", "resumed", "finished"]


def test_a_preempted_two_task_job_of_real_training_stops_at_a_step_and_ends_as_a_straight_run(tmp_path, monkeypatch):
    """A job of a higher-tier partition preempts the pretraining (PreemptMode=REQUEUE, GraceTime 20 s): SLURM
    22.05 sends its tasks SIGTERM, they stop after one step and write it, SLURM kills and requeues the job, and
    the same job id and attempt resume inside the epoch to a result equal to a straight run's."""

    def preempt(job_id: str) -> None:
        # a job that needs every CPU of the node (8), on the partition that preempts "preemptible"
        urgent = ["sbatch", "--parsable", "-p", "urgent", "-c", "8", "--job-name", "urgent", "--output=/dev/null"]
        subprocess.run([*urgent, "--wrap", "sleep 2"], capture_output=True, text=True, check=True)

    row, events = _interrupted_pretrain(tmp_path, monkeypatch, preempt, partition="preemptible")
    assert row["requeues"] >= 1 and set(row["requeue_reasons"]) <= {"preempted", "unknown"}, row
    assert [e["event"] for e in events].count("finished") == 1
