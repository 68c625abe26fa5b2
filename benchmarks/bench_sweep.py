"""Sweeps at scale: planning a 5,520-run sweep, and export / status / report over a 10,000-run sweep.

Targets (issue 10): planning a 5,000-run sweep < 3 s; `ioussl export runs` over 10,000 runs with per-organ
columns < 2 s; `ioussl status` and `ioussl report` over 10,000 runs < 1 s. Each figure is a whole command
(a new Python process: start-up and imports included), best of 3 unless said otherwise. The 10,000-run
registry gets a result with 13 per-organ DSCs for every fine-tune, written straight into the tables.
"""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STUDY = """
[study]
name = "{name}"
runs_dir = "runs"
[data]
crop = 64
[model]
feature_size = 12
[pretrain]
seeds = [1, 2]
[finetune]
seeds = [1, 2]
baseline_seeds = [1, 2]
[sweep]
"pretrain.base_lr" = [0.01, 0.02, 0.03, 0.04, 0.05]
"data.crop" = [64, 96]
"finetune.base_lr" = {finetune_lrs}
[[sweep.zip]]
"pretrain.batch_size" = [32, 64, 128, 256, 512]
"pretrain.epochs" = [10, 20, 30, 40, 50]
{intervals}
"""
ORGANS = ("aorta", "duodenum", "esophagus", "gallbladder", "ivc", "left_adrenal", "left_kidney", "liver",
          "pancreas", "right_adrenal", "right_kidney", "spleen", "stomach")


def study_text(name: str, n_intervals: int, n_finetune_lrs: int) -> str:
    intervals = "\n".join(f"[[intervals]]\ni_min = {i / 10:.1f}\ni_max = {(i + 1) / 10:.1f}"
                          for i in range(n_intervals))
    lrs = [round(0.001 * (i + 1), 4) for i in range(n_finetune_lrs)]
    return STUDY.format(name=name, finetune_lrs=lrs, intervals=intervals)


class Took(tuple):
    """(wall seconds, CPU seconds) of one command; printed as both. On a shared box the CPU time (user + system
    of the child process) is the better estimate of what the command costs on an idle one."""

    def __str__(self) -> str:
        return f"{self[0]:.3f} s wall, {self[1]:.3f} s CPU"


def timed(args: list[str], env: dict[str, str]) -> Took:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return Took((wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime))


def best_of(n: int, args: list[str], env: dict[str, str]) -> Took:
    runs = [timed(args, env) for _ in range(n)]
    return Took((min(r[0] for r in runs), min(r[1] for r in runs)))


def fill_results(db: str) -> int:
    """Every fine-tune COMPLETED with a DSC and 13 per-organ DSCs (as ingest would store them)."""
    import sqlite3

    rng = random.Random(0)
    with sqlite3.connect(db) as conn:
        ids = [row[0] for row in conn.execute("SELECT id FROM runs WHERE stage = 'finetune'")]
        rows = [(run_id, rng.uniform(0.7, 0.9), json.dumps({o: rng.uniform(0.5, 1) for o in ORGANS}), 10, "{}", 0)
                for run_id in ids]
        conn.executemany("INSERT INTO results (run_id, dsc, per_organ, best_epoch, payload, imported, recorded_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, '2026-01-01 00:00:00')", rows)
        conn.execute("UPDATE runs SET status = 'COMPLETED'")
    return len(ids)


def main() -> None:
    cli = [sys.executable, "-m", "ioussl"]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "IOUSSL_DB": str(Path(tmp) / "bench.db"), "COLUMNS": "200"}
        plan = Path(tmp) / "plan.toml"
        plan.write_text(study_text("plan5520", 5, 5))  # 5 x 2 x 50 pretrains, 5 x 2 x 2 x 250 fine-tunes, 20 baseline
        big = Path(tmp) / "big.toml"
        big.write_text(study_text("sweep", 5, 10))  # 500 pretrains, 10,000 fine-tunes, 40 baseline: 10,540 runs
        dry = best_of(3, [*cli, "plan", "grid", str(plan), "--no-check-data", "--max-runs", "6000", "--dry-run"], env)
        print(f"plan --dry-run, 5,520-run sweep : {dry} (target < 3 s)")
        planned = timed([*cli, "plan", "grid", str(plan), "--no-check-data", "--max-runs", "6000"], env)
        print(f"plan 5,520-run sweep (written) : {planned} (target < 3 s)")
        again = timed([*cli, "plan", "grid", str(plan), "--no-check-data", "--max-runs", "6000"], env)
        print(f"plan it again (nothing new)    : {again}")
        env["IOUSSL_DB"] = str(Path(tmp) / "big.db")
        timed([*cli, "plan", "grid", str(big), "--no-check-data", "--max-runs", "20000"], env)
        filled = fill_results(env["IOUSSL_DB"])
        out = str(Path(tmp) / "runs.csv")
        print(f"export runs, 10,540 runs ({filled:,} with 13 organ DSCs), CSV : "
              f"{best_of(3, [*cli, 'export', 'runs', '-o', out], env)} (target < 2 s)")
        print(f"export runs, JSON lines             : "
              f"{best_of(3, [*cli, 'export', 'runs', '-o', str(Path(tmp) / 'runs.jsonl')], env)}")
        try:
            import pyarrow  # noqa: F401

            parquet = best_of(3, [*cli, "export", "runs", "-o", str(Path(tmp) / "runs.parquet")], env)
            print(f"export runs, Parquet                : {parquet}")
        except ImportError:
            print("export runs, Parquet                : skipped (pyarrow not installed)")
        print(f"status, 10,540 runs (summary, per swept value) : {best_of(3, [*cli, 'status'], env)} "
              "(target < 1 s)")
        print(f"report (every axis and interval: 2,520 rows)   : {best_of(3, [*cli, 'report'], env)} "
              "(target < 1 s)")
        print(f"report --by data.crop,interval                 : "
              f"{best_of(3, [*cli, 'report', '--by', 'data.crop,interval'], env)} (target < 1 s)")
        print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPU(s)")


if __name__ == "__main__":
    main()
