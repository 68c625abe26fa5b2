"""GPU training-step throughput at thesis settings: pretraining (pairs/s) and fine-tuning (crops/s).

Self-contained: synthetic inputs already on the GPU, so this measures the training step of the real loops
(``ioussl.science.train.engine``), not data loading. Each configuration runs a few warm-up steps and ~20 timed
steps; peak GPU memory is read per configuration. The baseline is plain fp32 without the speed options
(no autocast, no channels-last, no cudnn.benchmark, no TF32, unfused optimiser); the others add bf16
autocast, channels-last, cudnn.benchmark, TF32, the fused optimiser and (guarded) torch.compile.
Target per H100: >= 5 x the thesis' V100 rate of about 443 pairs/s.

    python benchmarks/bench_gpu_train.py            # GPU; writes $OUT/bench_gpu.json when OUT is set
    python benchmarks/bench_gpu_train.py --smoke    # tiny shapes, any device: checks the script runs

Needs torch, numpy and monai (a pure-Python wheel: ``pip download --no-deps monai==1.6.1``) and nothing
else; the repository root is put on sys.path, so no install is needed. About 2-5 minutes on an H100
(``--no-compile`` skips the slowest part; ``--budget-s`` skips what is left after that many seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ioussl import profiles  # noqa: E402
from ioussl.config import FinetuneConfig, ModelConfig  # noqa: E402
from ioussl.science.models.swin import build_swin_unetr  # noqa: E402
from ioussl.science.runtime import Runtime  # noqa: E402
from ioussl.science.train.engine import StepState, train_one_epoch_pretrain, train_one_epoch_seg  # noqa: E402
from ioussl.science.train.losses import segmentation_loss  # noqa: E402
from ioussl.science.train.methods.simsiam import SimSiamMethod  # noqa: E402
from ioussl.science.train.optim import finetune_optimizer  # noqa: E402

V100_PAIRS_PER_S = 443.0  # the thesis' V100 (thesis protocol notes: 14.9 GPU-h for 185,500 steps of 128 pairs)
TARGET_FACTOR = 5.0
COMPILE_RESERVE_S = 120.0


@dataclass(frozen=True)
class Variant:
    name: str
    dtype: torch.dtype | None
    channels_last: bool
    fast_backend: bool  # cudnn.benchmark + TF32
    fused: bool
    compile: bool


VARIANTS = [
    Variant("fp32-plain", None, False, False, False, False),
    Variant("fp16-amp (thesis)", torch.float16, False, False, False, False),
    Variant("bf16", torch.bfloat16, False, False, False, False),
    Variant("bf16+cl+bench+fused", torch.bfloat16, True, True, True, False),
    Variant("bf16+cl+bench+fused+compile", torch.bfloat16, True, True, True, True),
]


def _backend(fast: bool) -> None:
    torch.backends.cudnn.benchmark = fast
    torch.backends.cuda.matmul.allow_tf32 = fast
    torch.backends.cudnn.allow_tf32 = fast


def _batches(device: torch.device, stage: str, batch: int, crop: int) -> Any:
    gen = torch.Generator(device="cpu").manual_seed(0)
    if stage == "pretrain":
        shape = (batch, 1, crop, crop)
        b = {"view1": torch.rand(shape, generator=gen), "view2": torch.rand(shape, generator=gen),
             "fallback": torch.zeros(batch, dtype=torch.bool), "iou": torch.zeros(batch)}  # fmt: skip
    else:
        b = {"image": torch.rand(batch, 1, crop, crop, generator=gen),
             "label": torch.randint(0, 14, (batch, 1, crop, crop), generator=gen).float()}  # fmt: skip
    b = {k: v.to(device) for k, v in b.items()}
    while True:
        yield b


def measure(stage: str, variant: Variant, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Warm up, then time ``args.steps`` steps of one stage under one variant."""
    torch.manual_seed(0)
    _backend(variant.fast_backend and device.type == "cuda")
    model_cfg = ModelConfig(feature_size=args.feature_size)
    runtime = Runtime(device=device, dtype=variant.dtype if device.type == "cuda" else None,
                      channels_last=variant.channels_last)  # fmt: skip
    fused = variant.fused and device.type == "cuda"
    if stage == "pretrain":
        model = SimSiamMethod(replace(profiles.thesis("pretrain"), model=model_cfg), steps_per_epoch=1).to(device)
        opt = model.make_optimizer(fused=fused)
        batch = args.pretrain_batch
    else:
        model = build_swin_unetr(model_cfg, 0.0).to(device)
        opt = finetune_optimizer(model, FinetuneConfig(), fused=fused)
        batch = args.finetune_batch
    if variant.channels_last:
        model = model.to(memory_format=torch.channels_last)
    compiled = torch.compile(model) if variant.compile else None
    state = StepState(model, opt, runtime.grad_scaler(), runtime, lambda i: 1e-3, compiled=compiled)
    batches = _batches(device, stage, batch, args.crop)
    loss_fn = segmentation_loss()

    def run(steps: int) -> dict[str, Any]:
        if stage == "pretrain":
            return train_one_epoch_pretrain(state, batches, 0, steps)
        return train_one_epoch_seg(state, batches, loss_fn, 0, steps)

    began = time.perf_counter()
    run(args.warmup)
    warm_s = time.perf_counter() - began
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    stats = run(args.steps)  # each step reads the loss (a sync), so the timing is wall-clock exact
    seconds = stats["seconds"]
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None
    per_s = args.steps * batch / seconds
    return {"stage": stage, "variant": variant.name, "batch": batch, "steps": args.steps,
            "step_ms": 1000 * seconds / args.steps, "samples_per_s": per_s,
            "unit": "pairs/s" if stage == "pretrain" else "crops/s", "peak_gib": peak,
            "warmup_s": warm_s, "loss": stats["loss"], "ok": True}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (C 12, 64², batch 4, 2 steps)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--budget-s", type=float, default=270.0, help="skip remaining variants after this")
    args = parser.parse_args()
    args.feature_size, args.crop, args.pretrain_batch, args.finetune_batch = 48, 96, 128, 64
    if args.smoke:
        args.feature_size, args.crop, args.pretrain_batch, args.finetune_batch = 12, 64, 4, 4
        args.steps, args.warmup = 2, 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.smoke:
        # Thesis settings on a CPU would take hours; `make bench` on a laptop must not hang here.
        print("bench_gpu_train: no CUDA device, nothing measured (use --smoke to check the script on CPU)")
        return 0
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, C {args.feature_size}, crop {args.crop}, "
          f"pretrain batch {args.pretrain_batch} pairs, "
          f"finetune batch {args.finetune_batch} crops")  # fmt: skip
    start, results = time.perf_counter(), []
    variants = [v for v in VARIANTS if not (v.compile and args.no_compile)]
    # Compiled variants last: their compilation is the slow, risky part and the budget may skip them.
    plan = [(stage, v) for compiled in (False, True) for stage in ("pretrain", "finetune")
            for v in variants if v.compile == compiled]  # fmt: skip
    for stage, variant in plan:
        # A compiled variant needs minutes to compile: start one only with that much budget left.
        reserve = COMPILE_RESERVE_S if variant.compile else 0.0
        if time.perf_counter() - start > args.budget_s - reserve:
            row = {"stage": stage, "variant": variant.name, "ok": False, "error": "skipped: time budget"}
            results.append(row)
            _print_row(row)
            continue
        try:
            row = measure(stage, variant, args, device)
        except Exception as exc:  # noqa: BLE001 - a failing option (e.g. compile) must not end the benchmark
            row = {
                "stage": stage,
                "variant": variant.name,
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}"[:300],
            }
        results.append(row)
        _print_row(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    summary = _summary(results, name, args)
    print(json.dumps(summary["summary"], indent=1))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "bench_gpu.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


def _print_row(row: dict[str, Any]) -> None:
    if not row["ok"]:
        status = "SKIPPED" if row["error"].startswith("skipped") else "FAILED"
        print(f"{row['stage']:9s} {row['variant']:30s} {status} {row['error']}")
        return
    peak = "n/a" if row["peak_gib"] is None else f"{row['peak_gib']:.2f} GiB"
    print(f"{row['stage']:9s} {row['variant']:30s} {row['samples_per_s']:9.1f} {row['unit']:8s} "
          f"{row['step_ms']:8.1f} ms/step  peak {peak}  warm-up {row['warmup_s']:.1f} s")  # fmt: skip


def _summary(results: list[dict[str, Any]], device: str, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "smoke": args.smoke,
        "results": results,
    }
    best: dict[str, Any] = {}
    for stage in ("pretrain", "finetune"):
        rows = [r for r in results if r["stage"] == stage and r["ok"]]
        base = next((r for r in rows if r["variant"] == "fp32-plain"), None)
        top = max(rows, key=lambda r: r["samples_per_s"], default=None)
        if top:
            base_rate = base["samples_per_s"] if base else None
            best[stage] = {
                "best_variant": top["variant"],
                "per_s": round(top["samples_per_s"], 1),
                "fp32_per_s": round(base_rate, 1) if base_rate else None,
                "speedup_vs_fp32": round(top["samples_per_s"] / base_rate, 2) if base_rate else None,
                "peak_gib": top["peak_gib"],
            }
    if "pretrain" in best:
        best["pretrain"]["vs_thesis_v100"] = round(best["pretrain"]["per_s"] / V100_PAIRS_PER_S, 2)
        best["pretrain"]["meets_5x_target"] = best["pretrain"]["per_s"] >= TARGET_FACTOR * V100_PAIRS_PER_S
    out["summary"] = best
    return out


if __name__ == "__main__":
    raise SystemExit(main())
