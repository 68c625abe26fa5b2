"""Pretraining throughput of the real job (`run_pretrain`: store, sampler, augmentations, loader workers,
model step) at thesis settings, eager against `runtime.compile`, on synthetic CT.

Unlike bench_gpu_train.py (the model step alone, inputs already on the GPU) this includes data loading, so
it shows whether the loader keeps up with the GPU. Writes $OUT/bench_gpu_pipeline.json when OUT is set.

    python benchmarks/bench_gpu_pipeline.py            # GPU, thesis settings (C 48, 96², batch 128)
    python benchmarks/bench_gpu_pipeline.py --smoke    # CPU, tiny settings: checks the script runs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ioussl import profiles, runfiles  # noqa: E402
from ioussl.science.preprocess import PreprocessSettings, preprocess_dataset  # noqa: E402
from ioussl.science.pretrain import run_pretrain  # noqa: E402
from ioussl.science.synth import synth_dataset  # noqa: E402


def config(store: Path, smoke: bool, compile_: bool, steps: int, workers: int):  # type: ignore[no-untyped-def]
    base = profiles.build("tiny" if smoke else "thesis", "pretrain", store=str(store))
    pre = dataclasses.replace(base.pretrain, epochs=2, steps_per_epoch=steps)
    runtime = dataclasses.replace(base.runtime, compile=compile_)
    data = dataclasses.replace(base.data, num_workers=0 if smoke else workers)
    sampler = dataclasses.replace(base.sampler, i_min=0.3, i_max=0.6)
    return dataclasses.replace(base, pretrain=pre, runtime=runtime, data=data, sampler=sampler).validate()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--steps", type=int, default=25, help="steps per epoch; epoch 2 is the timed one")
    parser.add_argument("--workers", type=int, default=min(12, (os.cpu_count() or 2) - 1))
    parser.add_argument("--eager-only", action="store_true", help="skip the torch.compile variant")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        began = time.perf_counter()
        synth_dataset(root / "raw", 1, 6 if not args.smoke else 1, seed=0, size=192, slices=40)
        crop = 64 if args.smoke else 96
        report = preprocess_dataset(root / "raw", root / "store", PreprocessSettings(min_size=crop), workers=4)
        print(f"data: {len(report.done)} volumes in {time.perf_counter() - began:.1f} s", flush=True)
        for compile_ in (False,) if args.eager_only else (False, True):
            run_dir = root / f"run-{compile_}"
            cfg = config(root / "store", args.smoke, compile_, 2 if args.smoke else args.steps, args.workers)
            start = time.perf_counter()
            result = run_pretrain(cfg, run_dir)
            lines = list(runfiles.read_jsonl(run_dir / runfiles.METRICS))
            row = {"compile": compile_, "batch": cfg.pretrain.batch_size, "workers": cfg.data.num_workers,
                   "epoch1_pairs_per_s": lines[0]["pairs_per_s"], "epoch2_pairs_per_s": lines[1]["pairs_per_s"],
                   "wall_s": time.perf_counter() - start, "final_loss": result["final_loss"],
                   "device": result.get("device")}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "bench_gpu_pipeline.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
