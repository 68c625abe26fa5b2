"""GPU memory and pairs/s of a 3D SimSiam pretraining step at 96³, with and without gradient checkpointing.

The real network (MONAI Swin UNETR, ``spatial_dims = 3``, the thesis' C = 48) and the real loss and optimiser,
on synthetic cubes already on the GPU (this measures the step, not the loader: benchmarks/bench_sampler3d.py
measures the input path). Per setting of ``model.use_checkpoint``: a few warm-up steps, then timed steps, the
peak memory allocated, or "out of memory" when the batch does not fit. A few minutes on one H100.

    python benchmarks/bench_gpu_pretrain3d.py [--batch 4 8] [--steps 10]   # writes $OUT/bench_gpu_3d.json if OUT is set
    python benchmarks/bench_gpu_pretrain3d.py --smoke                      # tiny shapes on any device: the script runs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ioussl.config import ModelConfig, PretrainConfig  # noqa: E402
from ioussl.science.models.swin import SimSiam  # noqa: E402
from ioussl.science.train.losses import simsiam_loss  # noqa: E402
from ioussl.science.train.optim import pretrain_optimizer  # noqa: E402


def measure(side: int, feature: int, batch: int, checkpoint: bool, steps: int, device: torch.device) -> dict:
    """One configuration: pairs/s over ``steps`` timed steps and the peak GPU memory (GiB)."""
    model_cfg = ModelConfig(feature_size=feature, spatial_dims=3, use_checkpoint=checkpoint)
    net = SimSiam(model_cfg, PretrainConfig()).to(device)
    optimizer = pretrain_optimizer(net, PretrainConfig(), fused=device.type == "cuda")
    views = torch.rand((2, batch, 1, side, side, side), device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else None

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            z1, p1 = net(views[0])
            z2, p2 = net(views[1])
            loss = simsiam_loss(z1, p1, z2, p2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        for _ in range(2):  # warm-up: kernels chosen, allocator grown
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except torch.OutOfMemoryError:
        return {"batch": batch, "use_checkpoint": checkpoint, "error": "out of memory"}
    seconds = time.perf_counter() - began
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"batch": batch, "use_checkpoint": checkpoint, "pairs_per_s": batch * steps / seconds,
            "step_s": seconds / steps, "peak_gib": peak}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[2, 4, 8], help="pairs per step")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    parser.add_argument("--smoke", action="store_true", help="32³ cubes, C = 12, one step: checks the script")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    side, feature, batches, steps = (32, 12, [2], 1) if args.smoke else (96, 48, args.batch, args.steps)
    rows = []
    for batch in batches:
        for checkpoint in (False, True):
            row = measure(side, feature, batch, checkpoint, steps, device)
            rows.append(row)
            print(json.dumps(row), flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    summary = {"device": name, "side": side, "feature_size": feature, "rows": rows}
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / "bench_gpu_3d.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
