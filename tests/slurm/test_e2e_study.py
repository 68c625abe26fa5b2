"""The scaled-down thesis study, end to end through real SLURM: sbatch, job arrays, afterok, real training.

Synthetic CT is preprocessed into a store, jobs/demo.toml (3 pretraining settings x 2 pretrain seeds, one
fine-tune each, + a 2-run baseline) is planned against it and submitted to the local test cluster with the
real job entry point (no synthetic workload). The test checks the chaining SLURM did and that every number
in the report comes from the jobs' own result files: none of it needs the demo's schedule (8 pretraining and
40 fine-tuning epochs, made for a network that learns), so the jobs train on jobs/tiny.toml's few steps.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.slurm.helpers import REPO

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TIMEOUT_S = 1800


def _ioussl(root: Path, env: dict[str, str], *args: str, timeout: float = 300) -> str:
    done = subprocess.run([sys.executable, "-m", "ioussl", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"ioussl {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done.stdout


# jobs/tiny.toml's schedule (its [pretrain] and [finetune] but the seeds) in place of the demo's
SCHEDULE = {stage: {key: value for key, value in section.items() if "seeds" not in key}
            for stage, section in tomllib.loads((REPO / "jobs" / "tiny.toml").read_text()).items()
            if stage in ("pretrain", "finetune")}  # fmt: skip


def _study(root: Path) -> Path:
    """jobs/demo.toml with its data and runs in root, on the test cluster's gpu partition, on a tiny schedule."""
    text = (REPO / "jobs" / "demo.toml").read_text()
    text = text.replace('"../demo/store"', '"store"').replace('"../demo/split.json"', '"split.json"')
    text = text.replace('"../demo/runs"', '"runs"').replace('name = "demo"', 'name = "e2e"')
    text = text.replace("[resources.pretrain]", '[slurm]\npartition = "gpu"\n\n[resources.pretrain]\ngpus = 1')
    text = text.replace("[resources.finetune]", "[resources.finetune]\ngpus = 1")
    for stage, settings in SCHEDULE.items():
        head, section = text.split(f"[{stage}]\n")
        section, tail = section.split("\n\n", 1)
        lines = [line for line in section.splitlines() if line.split(" = ")[0] not in settings]
        lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
        text = f"{head}[{stage}]\n" + "\n".join(lines) + f"\n\n{tail}"
    path = root / "e2e.toml"
    path.write_text(text)
    ours, demo = tomllib.loads(text), tomllib.loads((REPO / "jobs" / "demo.toml").read_text())
    assert (ours["intervals"], ours["model"], ours["runtime"]) == (demo["intervals"], demo["model"], demo["runtime"])
    for stage in ("pretrain", "finetune"):  # the demo's grid (its seeds), the tiny schedule
        assert {k: v for k, v in ours[stage].items() if "seeds" in k} == {
            k: v for k, v in demo[stage].items() if "seeds" in k}  # fmt: skip
        assert SCHEDULE[stage].items() <= ours[stage].items()
    return path


def _data(root: Path) -> None:
    from ioussl.science.data.preprocess import PreprocessSettings, preprocess_dataset
    from ioussl.science.data.splits import make_split, split_to_json
    from ioussl.science.data.store import SliceStore
    from ioussl.science.data.synth import synth_dataset

    synth_dataset(root / "raw", 4, 2, seed=5, size=160, slices=12)
    assert preprocess_dataset(root / "raw", root / "store", PreprocessSettings(min_size=64)).failed == []
    cases = SliceStore(root / "store").labelled_cases()
    (root / "split.json").write_text(split_to_json(make_split(cases, 2, 1, 1, seed=0)))


def _wait_all_done(root: Path, env: dict[str, str]) -> list[dict]:
    import time

    deadline = time.monotonic() + TIMEOUT_S
    while True:
        rows = json.loads(_ioussl(root, env, "status", "--json", "--study", "e2e"))
        states = {row["status"] for row in rows}
        if states <= {"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "BLOCKED", "LOST"}:
            return rows
        assert time.monotonic() < deadline, f"not done after {TIMEOUT_S} s: {sorted(states)}"
        time.sleep(5)


def test_scaled_down_study_runs_through_slurm_and_reports_its_own_results(tmp_path):
    import os

    env = {**os.environ, "IOUSSL_DB": str(tmp_path / "registry.db"),
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("IOUSSL_JOB_FACTORY", None)  # the real entry point, real training
    _data(tmp_path)
    study = _study(tmp_path)
    _ioussl(tmp_path, env, "plan", "grid", str(study))
    out = _ioussl(tmp_path, env, "submit", "--study", "e2e", "--executor", "slurm")
    # 6 pretrains + 6 fine-tune jobs (one per pretrain, afterok) + 1 baseline array
    assert re.search(r"\b13 sbatch call", out), out

    rows = _wait_all_done(tmp_path, env)
    assert [r for r in rows if r["status"] != "COMPLETED"] == []
    pretrains = {r["id"]: r for r in rows if r["stage"] == "pretrain"}
    finetunes = [r for r in rows if r["stage"] == "finetune"]
    assert len(pretrains) == 6 and len(finetunes) == 8

    # fine-tunes ran after their pretrain finished: the baseline's two as tasks of one array; the demo has one
    # fine-tune per pretrain, which submitit sends as a plain job (an array of one is no array)
    for run in finetunes:
        assert re.fullmatch(r"\d+_\d+" if run["parent"] is None else r"\d+", run["job_id"]), run["job_id"]
        if run["parent"]:
            parent_dir = Path(pretrains[run["parent"]]["run_dir"])
            finished = max(e["t"] for e in _events(parent_dir) if e["event"] == "finished")
            started = min(e["t"] for e in _events(Path(run["run_dir"])) if e["event"] == "started")
            assert started >= finished

    # every DSC in the report is the one the job wrote into its own result.json: the split has a test
    # part, so each group is scored on the held-out test case, not on the case that selected the epoch
    report, cases = _report_json(tmp_path, env)
    assert set(cases.values()) == {"test"}
    by_group: dict[str, list[float]] = {}
    for run in sorted(finetunes, key=lambda r: (r["pretrain_seed"] or 0, r["seed"], r["id"])):
        result = json.loads((Path(run["run_dir"]) / "result.json").read_text())
        assert 0.0 <= result["dsc"] <= 1.0 and 0.0 <= result["test"]["dsc"] <= 1.0
        by_group.setdefault(run["group"], []).append(result["test"]["dsc"])
    assert set(report) == set(by_group)
    for group, values in by_group.items():
        assert report[group] == pytest.approx(values, abs=5e-7)


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]


def _report_json(root: Path, env: dict[str, str]) -> tuple[dict[str, list[float]], dict[str, str]]:
    """group -> the per-run DSC values of the CSV report, and group -> the cases they were scored on."""
    import csv
    import io

    text = _ioussl(root, env, "report", "--study", "e2e", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    return ({row["group"]: [float(v) for v in row["values"].split()] for row in rows},
            {row["group"]: row["cases"] for row in rows})
