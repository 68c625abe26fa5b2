"""A tiny 3D study end to end on CPU (issue 20.6): jobs/tiny.toml with ``model.spatial_dims = 3`` and the
smallest schedule, run by ``ioussl demo`` (synthetic CT preprocessed with its depth padded to the cube, plan,
submit on the local executor with the afterok chain, status, report)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def tiny_3d(root: Path) -> Path:
    """jobs/tiny.toml on volumes: 64³ cubes, one step per epoch, one cube per volume, windows without overlap."""
    text = (REPO / "jobs" / "tiny.toml").read_text().replace('name = "tiny"', 'name = "tiny-3d"')
    text = text.replace("../demo/", "work/").replace("../runs/tiny", "work/runs")
    text = text.replace("feature_size = 12", "feature_size = 12\nspatial_dims = 3")
    pretrain, finetune = text.split("[finetune]")
    for old, new in (("batch_size = 8", "batch_size = 2"), ("epochs = 2", "epochs = 1"),
                     ("steps_per_epoch = 3", "steps_per_epoch = 1")):  # fmt: skip
        pretrain = pretrain.replace(old, new)
    for old, new in (("batch_size = 4", "batch_size = 1\ncrops_per_slice = 1"), ("epochs = 2", "epochs = 1"),
                     ("warmup_epochs = 1", "warmup_epochs = 0"), ("steps_per_epoch = 3", "steps_per_epoch = 1"),
                     ("sw_batch_size = 8", "sw_batch_size = 2\nsw_overlap = 0.0"),
                     ("time_min = 10", "time_min = 60")):  # fmt: skip
        finetune = finetune.replace(old, new)
    text = pretrain + "[finetune]" + finetune
    path = root / "tiny-3d.toml"
    path.write_text(text)
    return path


def ioussl(root: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "ioussl", *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_a_tiny_3d_study_runs_end_to_end_on_cpu(tmp_path):
    from ioussl.plan.study import load_study

    study = tiny_3d(tmp_path)
    spec = load_study(study)
    assert spec.model.spatial_dims == 3 and spec.data.crop == 64
    ioussl(tmp_path, "demo", "--study", str(study), "--executor", "local", "--max-parallel", "1", timeout=2400)
    db = str(tmp_path / "work" / "registry.db")
    runs = json.loads(ioussl(tmp_path, "status", "--db", db, "--json", "--no-sync").stdout)
    assert len(runs) == 3 and {r["status"] for r in runs} == {"COMPLETED"}, runs
    for run in runs:
        config = json.loads((Path(run["run_dir"]) / "config.json").read_text())
        assert config["model"]["spatial_dims"] == 3
        result = json.loads((Path(run["run_dir"]) / "result.json").read_text())
        if config["stage"] == "finetune":
            assert result["dsc_metric"] == "dsc_3d" and 0 <= result["dsc"] <= 1  # scored on whole volumes
            assert "flare" in result  # FLARE 2022's DSC and NSD on the original grid, from 3D predictions
    report = ioussl(tmp_path, "report", "--db", db, "--table").stdout
    assert "no pretraining" in report and "the 3D DSC per case on the preprocessed grid" in report
