"""Registry scale: start-up, status and report over 10,000 runs, planning a 1,000-run study.

Targets (issue 2): `ioussl --help` and `ioussl status` import neither torch nor monai and start in < 0.5 s;
with 10,000 runs, `status` and `report` < 1 s; planning a 1,000-run study < 2 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STUDY = """
[study]
name = "{name}"
[data]
crop = 64
[model]
feature_size = 12
[pretrain]
seeds = {pretrain_seeds}
[finetune]
seeds = {finetune_seeds}
baseline_seeds = [1, 2, 3, 4]
{intervals}
"""


def study_text(name: str, n_intervals: int, n_pre: int, n_ft: int) -> str:
    intervals = "\n".join(
        f"[[intervals]]\ni_min = {i / (n_intervals + 1):.6f}\ni_max = {min(1.0, (i + 1) / (n_intervals + 1)):.6f}"
        for i in range(n_intervals)
    )
    return STUDY.format(name=name, pretrain_seeds=list(range(n_pre)), finetune_seeds=list(range(n_ft)),
                        intervals=intervals)


def timed(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def best_of(n: int, args: list[str], env: dict[str, str]) -> float:
    return min(timed(args, env) for _ in range(n))


def main() -> None:
    cli = [sys.executable, "-m", "ioussl"]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "IOUSSL_DB": str(Path(tmp) / "bench.db"), "COLUMNS": "200"}
        small = Path(tmp) / "small.toml"
        small.write_text(study_text("plan1000", 33, 6, 4))  # 33*6*(1+4) + 4 = 994 runs
        big = Path(tmp) / "big.toml"
        big.write_text(study_text("scale", 20, 25, 19))  # 20 intervals * 25 pretrains * (1 + 19) + 4 = 10,004 runs

        print(f"ioussl --help                : {best_of(3, [*cli, '--help'], env):.3f} s (target < 0.5 s)")
        plan_small = timed([*cli, "plan", "grid", str(small), "--no-check-data"], env)
        print(f"plan 994-run study           : {plan_small:.3f} s (target < 2 s)")
        timed([*cli, "plan", "grid", str(big), "--no-check-data", "--max-runs", "20000"], env)  # above the cap
        print(f"status, 10,998 runs (table)  : {best_of(3, [*cli, 'status'], env):.3f} s (target < 1 s)")
        print(f"status --json, 10,998 runs   : {best_of(3, [*cli, 'status', '--json'], env):.3f} s")
        print(f"status --study plan1000      : {best_of(3, [*cli, 'status', '--study', 'plan1000'], env):.3f} s")
        print(f"report --study scale         : {best_of(3, [*cli, 'report', '--study', 'scale'], env):.3f} s "
              "(target < 1 s)")
        check = "import sys, ioussl.cli; print(sorted(m for m in ('torch', 'monai') if m in sys.modules))"
        loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True).stdout.strip()
        print(f"heavy modules loaded by the CLI at start-up: {loaded}")


if __name__ == "__main__":
    main()
