"""jobs/ablation.toml at tiny size, end to end: planned, run for real (synthetic CT, local executor), reported
by its axes and exported. The tiny variant keeps the ablation's sweep and interval and takes jobs/tiny.toml's
tiny model, data and schedule (one seed each: 6 pretrains, 6 fine-tunes, a baseline per crop)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ioussl.plan.study import load_study

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def tiny_ablation(root: Path) -> Path:
    """jobs/tiny.toml renamed, with jobs/ablation.toml's [sweep] (its interval is tiny's: checked)."""
    ablation = tomllib.loads((REPO / "jobs" / "ablation.toml").read_text())
    text = (REPO / "jobs" / "tiny.toml").read_text().replace('name = "tiny"', 'name = "ablation-tiny"')
    text = text.replace("../demo/", "work/").replace("../runs/tiny", "work/runs")
    text += "\n[sweep]\n" + "".join(f'"{key}" = {json.dumps(values)}\n' for key, values in ablation["sweep"].items())
    path = root / "ablation-tiny.toml"
    path.write_text(text)
    return path


def ioussl(root: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "ioussl", *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_the_ablation_runs_at_tiny_size_and_is_reported_by_its_axes(tmp_path):
    study = tiny_ablation(tmp_path)
    tiny, full = load_study(study), load_study(REPO / "jobs" / "ablation.toml")
    assert tiny.sweep == full.sweep and tiny.intervals == full.intervals

    ioussl(tmp_path, "demo", "--study", str(study), "--executor", "local", timeout=1500)
    db = str(tmp_path / "work" / "registry.db")
    runs = json.loads(ioussl(tmp_path, "status", "--db", db, "--json", "--no-sync").stdout)
    assert len(runs) == 14 and {r["status"] for r in runs} == {"COMPLETED"}, runs
    for run in runs:  # each job trained with its point's settings
        config = json.loads((Path(run["run_dir"]) / "config.json").read_text())
        assert config["data"]["crop"] in (64, 96)

    table = ioussl(tmp_path, "report", "--db", db, "--by", "data.crop,pretrain.base_lr,interval", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(table.stdout)))
    rates = (0.0125, 0.025, 0.05)
    assert [row["group"] for row in rows] == [
        "data.crop=64, no pretraining", *(f"data.crop=64, pretrain.base_lr={lr}, [0.3, 0.6]" for lr in rates),
        "data.crop=96, no pretraining", *(f"data.crop=96, pretrain.base_lr={lr}, [0.3, 0.6]" for lr in rates),
    ]
    assert all(row["n"] == row["planned"] == "1" and 0 <= float(row["mean"]) <= 1 for row in rows)
    assert all(row["delta_baseline"] != "" for row in rows if "no pretraining" not in row["group"])

    exported = list(csv.DictReader(io.StringIO(ioussl(tmp_path, "export", "runs", "--db", db).stdout)))
    assert len(exported) == 14 and {"data.crop", "pretrain.base_lr", "dsc_liver"} <= set(exported[0])
    tuned = [row for row in exported if row["stage"] == "finetune"]
    assert all(0 <= float(row["dsc"]) <= 1 and row["checkpoint_sha256"] for row in tuned)
    by_id = {row["run_id"]: row for row in exported}
    for row in tuned:
        if row["parent"]:
            parent = by_id[row["parent"]]
            assert (row["data.crop"], row["pretrain.base_lr"]) == (parent["data.crop"], parent["pretrain.base_lr"])
    series = list(csv.DictReader(io.StringIO(ioussl(tmp_path, "export", "metrics", "--db", db, "--metric", "loss",
                                                    "--stage", "pretrain").stdout)))
    assert {row["run_id"] for row in series} == {row["run_id"] for row in exported if row["stage"] == "pretrain"}
