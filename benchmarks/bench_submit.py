"""Submitting the thesis grid (10 pretrains, 10 fine-tune arrays, 1 baseline array) on the test cluster:
sbatch calls and wall time; then the delay between a pretrain's end and its fine-tunes' start.

Needs the local SLURM test cluster (make slurm-up); without it, it says so and exits 0. The jobs run
the synthetic workload (ioussl/submit/workload.py) and are cancelled at the end.
Run: python benchmarks/bench_submit.py
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ioussl import runfiles  # noqa: E402
from ioussl.backends import slurmcmd as scheduler  # noqa: E402
from ioussl.plan.service import plan_grid  # noqa: E402
from ioussl.submit import service as jobservice  # noqa: E402
from ioussl.submit import workload  # noqa: E402
from ioussl.submit.submission import RunFilter  # noqa: E402
from ioussl.track.listing import status_rows  # noqa: E402

LOCAL_PROFILE = '[slurm]\npartition = "gpu"\n'


def thesis_copy(root: Path) -> Path:
    """jobs/ with the cluster profile pointed at the test cluster and resources it can hold."""
    shutil.copytree(REPO / "jobs", root / "jobs")
    (root / "jobs" / "clusters" / "plgrid-v100.toml").write_text(LOCAL_PROFILE)
    study = root / "jobs" / "thesis.toml"
    text = re.sub(r"mem_gb = \d+", "mem_gb = 1", study.read_text())
    study.write_text(re.sub(r"cpus_per_task = \d+", "cpus_per_task = 1", text))
    return study


def submit_grid(root: Path) -> None:
    study = thesis_copy(root)
    db = str(root / "registry.db")
    plan_grid(study, db, check_data=False)
    for run in status_rows(db, study="thesis"):
        workload.write_spec(run.run_dir, steps=1, step_s=0.01)
    start = time.perf_counter()
    outcome = jobservice.submit(db, "thesis", executor="slurm", factory=workload.make_job)
    wall = time.perf_counter() - start
    runs = sum(len(u.run_ids) for u in outcome.units)
    print(
        f"thesis grid: {runs} runs in {len(outcome.units)} jobs, {outcome.sbatch_calls} sbatch calls "
        f"(limit 10 + 10 + 1 = 21), {wall:.2f} s wall for `submit` (incl. its sync)"
    )
    jobservice.cancel(db, "thesis")
    if outcome.sbatch_calls > 21:
        raise SystemExit("FAILED: more sbatch calls than pretrains + arrays + baseline")


def chain_delay(root: Path) -> None:
    study = thesis_copy(root)
    text = study.read_text().replace("gpus = 1", "gpus = 0")
    study.write_text(text)
    db = str(root / "chain.db")
    plan_grid(study, db, check_data=False)
    rows = status_rows(db, study="thesis", group="[0.3, 0.6]")
    pretrain = next(r for r in rows if r.stage == "pretrain" and r.seed == 1)
    children = [r for r in rows if r.parent_id == pretrain.id]
    for run in (pretrain, *children):
        workload.write_spec(run.run_dir, steps=4, step_s=0.25)
    jobservice.submit(
        db,
        "thesis",
        executor="slurm",
        factory=workload.make_job,
        run_filter=RunFilter(run_ids=(pretrain.id, *(c.id for c in children))),
    )
    deadline = time.monotonic() + 60
    while not all((Path(r.run_dir) / runfiles.RESULT).exists() for r in children):
        if time.monotonic() > deadline:
            raise SystemExit("FAILED: the chain did not finish within 60 s")
        time.sleep(0.2)
    end = _event_time(pretrain.run_dir, "finished")
    starts = [_event_time(c.run_dir, "started") for c in children]
    print(
        f"pretrain end -> fine-tune start (afterok, array of {len(children)}): "
        f"{min(starts) - end:.2f} s first, {max(starts) - end:.2f} s last"
    )


def _event_time(run_dir: str, name: str) -> float:
    return max(e["t"] for e in runfiles.read_jsonl(Path(run_dir) / runfiles.EVENTS) if e.get("event") == name)


def main() -> None:
    if not scheduler.sbatch_available() or subprocess.run(["sinfo"], capture_output=True).returncode != 0:
        print("skipped: no SLURM cluster here (make slurm-up)")
        return
    os.environ.setdefault("IOUSSL_JOB_FACTORY", "ioussl.submit.workload:make_job")
    with tempfile.TemporaryDirectory() as tmp:
        submit_grid(Path(tmp) / "grid")
        chain_delay(Path(tmp) / "chain")


if __name__ == "__main__":
    main()
