"""The whole pretraining job on a GPU against its model step alone, at thesis settings, in one script.

1. A synthetic slice store written directly (abdomen phantoms of ``synth.synth_volume``, quantised as
   preprocessing does; no NIfTI round trip): 160 unlabelled cases x 32 slices of 320 x 320 = 5,120 slices.
2. The model step alone: ``train_one_epoch_pretrain`` on views already on the GPU, with the state the job
   builds (``pretrain.build_state``: SGD fused, channels-last, autocast as ``precision = auto`` picks).
3. The real ``run_pretrain`` (store, IoU sampler [0.3, 0.6], loader workers, device augmentations, model step,
   checkpoints) for 2 epochs; epoch 2 is the measured one (its loader's workers start inside it, as every
   epoch's do).
Each for eager and ``runtime.compile`` (skipped when the time budget runs short), and ``augment_on =
"loader"`` (the per-sample reference) on a shorter epoch. Targets: the job >= 2,215 pairs/s (5 x the thesis'
V100) and within 20% of the model step alone. Prints one JSON document; writes $OUT/bench_gpu_pipeline.json.

    python benchmarks/bench_gpu_pipeline.py               # GPU: about 4-6 minutes on an H100/H200
    python benchmarks/bench_gpu_pipeline.py --smoke       # CPU, tiny settings: checks the script runs

Needs torch, numpy, monai and nibabel-free ioussl (the repository root goes on sys.path; no install).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ioussl import profiles, runfiles  # noqa: E402

V100_PAIRS_PER_S = 443.0
TARGET = 5 * V100_PAIRS_PER_S  # 2,215 pairs/s
HU_MIN, HU_MAX = -500.0, 500.0  # preprocessing's window (thesis protocol notes §1)


def _write_case(args: tuple[Path, str, int, tuple[int, int, int]]) -> dict:
    """One synthetic unlabelled case straight into the store layout (what preprocess_case writes)."""
    from ioussl.science.data.store import case_array_path, quantise
    from ioussl.science.data.synth import synth_volume

    root, case, seed, shape = args
    image, _ = synth_volume(np.random.default_rng(seed), shape)  # (x, y, z) HU
    volume = np.clip((image.transpose(2, 0, 1).astype(np.float32) - HU_MIN) / (HU_MAX - HU_MIN), 0.0, 1.0)
    path = case_array_path(root, case, "image")
    np.save(path, quantise(volume))
    return {"case": case, "labelled": False, "shape": list(volume.shape), "source_image": f"{case}.synthetic",
            "image_sha256": runfiles.sha256_file(path), "image_bytes": path.stat().st_size,
            "organs": [0] * volume.shape[0]}  # fmt: skip


def synth_store(root: Path, cases: int, slices: int, side: int, workers: int) -> Path:
    from ioussl.science.data.store import write_index

    (root / "cases").mkdir(parents=True)
    jobs = [(root, f"SYN_{i:04d}", i, (side, side, slices)) for i in range(cases)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        metas = list(pool.map(_write_case, jobs))
    write_index(root, {"settings": {"synthetic": True, "side": side}}, metas)
    return root


def job_config(store: Path, smoke: bool, compile_: bool, steps: int, workers: int, augment_on: str):  # type: ignore[no-untyped-def]
    base = profiles.build("tiny" if smoke else "thesis", "pretrain", store=str(store))
    return dataclasses.replace(
        base,
        pretrain=dataclasses.replace(base.pretrain, epochs=2, steps_per_epoch=steps),
        runtime=dataclasses.replace(base.runtime, compile=compile_),
        data=dataclasses.replace(base.data, num_workers=0 if smoke else workers, augment_on=augment_on),
        sampler=dataclasses.replace(base.sampler, i_min=0.3, i_max=0.6),
    ).validate()


def model_step_alone(cfg, warmup: int, steps: int) -> dict:  # type: ignore[no-untyped-def]
    """Pairs/s of the job's own training state on views already on the device (no loader, no augmentation)."""
    from ioussl.science.runtime import resolve_runtime, seed_everything
    from ioussl.science.train.engine import train_one_epoch_pretrain
    from ioussl.science.train.pretrain import build_state

    seed_everything(0)
    runtime = resolve_runtime(cfg.runtime, cfg.pretrain.amp)
    state = build_state(cfg, runtime, steps)
    shape = (cfg.pretrain.batch_size, 1, cfg.data.crop, cfg.data.crop)
    n = cfg.pretrain.batch_size
    batch = {"view1": torch.rand(shape, device=runtime.device), "view2": torch.rand(shape, device=runtime.device),
             "fallback": torch.zeros(n, dtype=torch.bool), "iou": torch.zeros(n, dtype=torch.float64)}  # fmt: skip
    began = time.perf_counter()
    train_one_epoch_pretrain(state, itertools.repeat(batch), 0, warmup)
    warm_s = time.perf_counter() - began
    stats = train_one_epoch_pretrain(state, itertools.repeat(batch), warmup, steps)  # ends with its one sync
    return {"pairs_per_s": stats["pairs_per_s"], "warmup_s": warm_s, "device": runtime.describe()}


def whole_job(cfg, run_dir: Path) -> dict:  # type: ignore[no-untyped-def]
    from ioussl.science.train.pretrain import run_pretrain

    began = time.perf_counter()
    result = run_pretrain(cfg, run_dir)
    lines = list(runfiles.read_jsonl(run_dir / runfiles.METRICS))
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"epoch1_pairs_per_s": lines[0]["pairs_per_s"], "epoch2_pairs_per_s": lines[1]["pairs_per_s"],
            "wall_s": time.perf_counter() - began, "final_loss": result["final_loss"],
            "fallback_rate": lines[1]["fallback_rate"], "peak_gib": peak}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny profile: check that the script runs")
    parser.add_argument("--steps", type=int, default=300, help="steps per epoch of the device-mode job")
    parser.add_argument("--loader-steps", type=int, default=40, help="steps per epoch of the loader-mode job")
    parser.add_argument("--workers", type=int, default=min(10, max(1, (os.cpu_count() or 2) - 1)))
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip what would not fit after this")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        print(json.dumps({"skipped": "no CUDA device (use --smoke to check the script on the CPU)"}))
        return 0
    start = time.perf_counter()
    cases, slices, side = (4, 8, 128) if args.smoke else (160, 32, 320)
    steps, loader_steps = (2, 2) if args.smoke else (args.steps, args.loader_steps)
    report: dict = {"torch": torch.__version__, "workers": args.workers, "cpus": os.cpu_count(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        store = synth_store(Path(tmp) / "store", cases, slices, side, workers=min(16, os.cpu_count() or 1))
        report["store"] = {"slices": cases * slices, "slice_shape": [side, side],
                           "synthesis_s": round(time.perf_counter() - start, 1)}  # fmt: skip
        print(json.dumps(report["store"]), flush=True)
        plan = [("eager", False, "device", steps), ("compiled", True, "device", steps),
                ("eager, loader mode (reference)", False, "loader", loader_steps)]  # fmt: skip
        for name, compile_, augment_on, n_steps in plan:
            if compile_ and args.smoke:  # compiling on a CPU takes minutes: the smoke test skips it
                continue
            reserve = 150.0 if compile_ else 60.0
            if time.perf_counter() - start > args.budget_s - reserve:
                report["runs"].append({"variant": name, "skipped": "time budget"})
                continue
            cfg = job_config(store, args.smoke, compile_, n_steps, args.workers, augment_on)
            row = {"variant": name, "augment_on": augment_on, "compile": compile_, "steps_per_epoch": n_steps,
                   "batch": cfg.pretrain.batch_size}  # fmt: skip
            if augment_on == "device":
                row["model_step"] = model_step_alone(cfg, warmup=2 if args.smoke else 8, steps=2 if args.smoke else 40)
            row["job"] = whole_job(cfg, Path(tmp) / f"run-{len(report['runs'])}")
            if "model_step" in row:
                job, alone = row["job"]["epoch2_pairs_per_s"], row["model_step"]["pairs_per_s"]
                row["job_over_model_step"] = round(job / alone, 3)
                row["meets_5x_v100"] = job >= TARGET
                row["within_20pct_of_model_step"] = job >= 0.8 * alone
            report["runs"].append(row)
            print(json.dumps(row), flush=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    report["wall_s"] = round(time.perf_counter() - start, 1)
    text = json.dumps(report, indent=1)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "bench_gpu_pipeline.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
