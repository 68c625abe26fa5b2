"""Multi-GPU and multi-node resources from a study file to what a dry run says each backend gets."""

from __future__ import annotations

from studyfiles import tiny_study
from typer.testing import CliRunner

from ioussl.cli import app


def invoke(*args: str):  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output
    return result


def _plan(tmp_path, pretrain: str, finetune: str) -> str:
    text = tiny_study("mg").replace("[resources.pretrain]\ngpus = 0", f"[resources.pretrain]\n{pretrain}")
    text = text.replace("[resources.finetune]\ngpus = 0", f"[resources.finetune]\n{finetune}")
    (tmp_path / "study.toml").write_text(text)
    db = str(tmp_path / "registry.db")
    result = invoke("plan", "grid", str(tmp_path / "study.toml"), "--db", db, "--no-check-data")
    assert result.exit_code == 0, result.output
    return db


def test_dry_runs_show_one_process_per_gpu_and_gpu_hours_count_gpus(tmp_path):
    db = _plan(tmp_path, "gpus = 2\nnodes = 2", "gpus = 0\ntasks_per_node = 2")
    slurm = invoke("submit", "--db", db, "--executor", "slurm", "--dry-run")
    assert slurm.exit_code == 0, slurm.output
    pretrain, finetune = [line for line in slurm.stdout.splitlines() if line.strip().startswith("sbatch")]
    assert "--nodes=2 --ntasks-per-node=2" in pretrain and "--gpus-per-node=2" in pretrain
    assert "--ntasks-per-node=2" in finetune and "--gpus-per-node" not in finetune  # two CPU processes
    assert "0.3 GPU-hours requested" in slurm.stdout  # 2 x 2 GPUs x 5 minutes: GPUs, not processes
    local = invoke("submit", "--db", db, "--executor", "local", "--dry-run")
    assert local.exit_code == 0, local.output
    assert "gpus_per_node=0 tasks_per_node=2" in local.stdout


def test_more_processes_than_gpus_is_refused_at_plan_time_in_one_line(tmp_path):
    pretrain = "[resources.pretrain]\ngpus = 2\ntasks_per_node = 4"
    text = tiny_study("mg").replace("[resources.pretrain]\ngpus = 0", pretrain)
    (tmp_path / "study.toml").write_text(text)
    result = invoke("plan", "grid", str(tmp_path / "study.toml"), "--db", str(tmp_path / "r.db"), "--no-check-data")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1
    assert "[resources.pretrain].tasks_per_node: 4 processes per node but 2 GPU(s) per node" in lines[0]
