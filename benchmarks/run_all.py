"""Run every benchmarks/bench_*.py in turn (each prints its own numbers); `make bench`.

CPU: bench_augment (device vs loader augmentation, loader pairs/s per worker), bench_coverage (issue 21: how
often the report's 95% CI of Δ covers a known Δ in 1,000 simulated nested studies), bench_demo_pretrain (the
demo's pretrainings end to end, device vs loader mode; add --before DIR by hand to compare with older code),
bench_ddp_scaling (DDP: pairs/s at N processes / (N x pairs/s at 1); on a CPU a 2-process gloo smoke check),
bench_loader, bench_registry, bench_sampler, bench_submit, bench_sweep (issue 10: planning, export, status
and report at 10,000 runs), bench_sync, bench_train_cpu. The bench_gpu_*
scripts need CUDA and are run by hand on a GPU node (docs/training.md says how).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main() -> int:
    failed = []
    here = Path(__file__).parent
    for script in sorted(here.glob("bench_*.py")):
        if script.name.startswith("bench_gpu"):  # needs CUDA: run these on a GPU node by hand
            print(f"== {script.name}: skipped (GPU only; run it on a GPU node)", flush=True)
            continue
        print(f"== {script.name}", flush=True)
        if subprocess.call([sys.executable, str(script)]) != 0:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
