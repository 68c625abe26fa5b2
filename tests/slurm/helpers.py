"""A tiny study on the local SLURM test cluster, driven through the real `ioussl` command line.

Jobs run the synthetic workload (ioussl/submit/workload.py) through the same submission path as
real runs; each run's behaviour (steps, step time, failures) is set in its run directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ioussl.submit import workload

REPO = Path(__file__).resolve().parents[2]

STUDY = """
[study]
name = "{name}"
runs_dir = "{runs_dir}"

[data]
store = "store"
crop = 64

[model]
feature_size = 12

[pretrain]
seeds = {pretrain_seeds}

[finetune]
seeds = [1, 2]
baseline_seeds = {baseline_seeds}

{intervals}

[slurm]
partition = "gpu"

[resources.pretrain]
gpus = 1
cpus_per_task = 1
mem_gb = 1
time_min = 5

[resources.finetune]
gpus = 1
cpus_per_task = 1
mem_gb = 1
time_min = 5
"""

INTERVALS = ["[0.3, 0.6]", "[0, 0]", "[0.6, 1]", "[0.0001, 0.3]"]


class StudyRig:
    """tmp_path holds the study file, the registry and the run directories."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.db = str(root / "registry.db")
        self.name = f"it{os.getpid()}{int(time.time() * 1000) % 100000}"
        self.runs_dir = "runs"
        self.env = {
            **os.environ,
            "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "IOUSSL_JOB_FACTORY": "ioussl.submit.workload:make_job",
            "IOUSSL_DB": self.db,
        }

    def plan(self, intervals: int = 1, pretrain_seeds: tuple[int, ...] = (1,), baseline: tuple[int, ...] = ()) -> None:
        self.write_study(intervals, pretrain_seeds, baseline)
        self.ioussl("plan", "grid", "study.toml", "--no-check-data")

    def write_study(
        self, intervals: int = 1, pretrain_seeds: tuple[int, ...] = (1,), baseline: tuple[int, ...] = ()
    ) -> Path:
        blocks = "\n".join(
            f"[[intervals]]\ni_min = {json.loads(i)[0]}\ni_max = {json.loads(i)[1]}\n" for i in INTERVALS[:intervals]
        )
        text = STUDY.format(
            name=self.name,
            runs_dir=self.runs_dir,
            pretrain_seeds=list(pretrain_seeds),
            baseline_seeds=list(baseline),
            intervals=blocks,
        )
        (self.root / "study.toml").write_text(text)
        return self.root / "study.toml"

    def ioussl(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "ioussl", *args],
            cwd=self.root,
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"ioussl {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "ioussl", *args],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def status(self, env: dict[str, str] | None = None, sync: bool = True) -> dict[str, dict[str, Any]]:
        args = ["status", "--json", "--study", self.name] + ([] if sync else ["--no-sync"])
        rows = json.loads(self.ioussl(*args, env=env).stdout)
        return {row["id"]: row for row in rows}

    def runs(self, stage: str | None = None) -> list[dict[str, Any]]:
        rows = sorted(self.status(sync=False).values(), key=lambda r: (r["stage"] != "pretrain", r["group"], r["seed"]))
        return [r for r in rows if stage is None or r["stage"] == stage]

    def set_workload(self, run: dict[str, Any], **spec: Any) -> None:
        workload.write_spec(run["run_dir"], **spec)

    def wait_for(self, predicate, timeout: float = 60, poll: float = 0.5, env: dict[str, str] | None = None):
        """Sync (ioussl status) until predicate(status rows) is true; returns the rows."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.status(env=env)
            if predicate(rows):
                return rows
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s; statuses: "
                    + json.dumps({k: (v["status"], v["reason"], v["job_id"]) for k, v in rows.items()})
                )
            time.sleep(poll)

    def squeue(self) -> list[tuple[str, str, str, str]]:
        """(job id, name, state, reason) of this study's jobs the controller holds."""
        out = subprocess.run(
            ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%j|%T|%r"], capture_output=True, text=True, check=True
        ).stdout
        names = {f"ioussl-{r['id']}" for r in self.runs()}
        rows = [tuple(line.split("|")) for line in out.splitlines() if line]
        return [r for r in rows if len(r) == 4 and r[1] in names]

    def dependencies(self) -> dict[str, str]:
        """Job id -> the dependency the controller holds for it (squeue %E, e.g. "afterok:12_*(unfulfilled)")."""
        out = subprocess.run(
            ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%E"], capture_output=True, text=True, check=True
        ).stdout
        return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)

    def events(self, run: dict[str, Any]) -> list[dict[str, Any]]:
        path = Path(run["run_dir"]) / "events.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def cleanup(self) -> None:
        try:
            ids = [job for job, _, state, _ in self.squeue() if state in ("PENDING", "RUNNING", "REQUEUED")]
        except (subprocess.CalledProcessError, FileNotFoundError, json.JSONDecodeError, AssertionError):
            return
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True)


def all_status(*states: str):
    return lambda rows: bool(rows) and all(r["status"] in states for r in rows.values())
