"""One DINO training step against one SimSiam step, same shapes, same process: the time ratio.

Each method is built through the registry exactly as ``run_pretrain`` builds it and stepped through the loop's
own hooks (``set_hyper``, ``loss``, backward, ``before_update``, optimiser step, ``after_update``), their steps
alternating, on random views: no data loading, so the ratio is the methods' compute alone. The issue's bound:
a DINO step costs at most 1.3x a SimSiam step at the thesis' shapes (96² crops, batch 128, C 48). On a shared
2-core CPU the full batch takes minutes per step: ``--batch`` lowers it (the ratio is what is compared).

Beside the wall time, each step's process CPU time split into user (the computation) and system (mostly the
kernel's page faults: on Linux, glibc hands a freed tensor over 32 MB back to the OS, so every such
allocation is faulted in afresh) and its minor page faults (``resource.getrusage``; wall time only on Windows).

    python benchmarks/bench_dino_step.py [--batch 128] [--crop 96] [--feature-size 48] [--steps 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ioussl import profiles  # noqa: E402
from ioussl.config import ModelConfig, RunConfig  # noqa: E402
from ioussl.science.runtime import resolve_runtime  # noqa: E402
from ioussl.science.train.methods import build_method  # noqa: E402


def config(method: str, batch: int, crop: int, feature_size: int, device: str) -> RunConfig:
    """The thesis' pretraining config with the given shapes and method, on ``device`` in fp32 or autocast."""
    cfg = profiles.thesis("pretrain")
    pretrain = dataclasses.replace(cfg.pretrain, method=method, batch_size=batch)
    runtime = dataclasses.replace(cfg.runtime, device=device, precision="fp32" if device == "cpu" else "auto")
    return dataclasses.replace(cfg, model=ModelConfig(feature_size=feature_size), pretrain=pretrain,
                               data=dataclasses.replace(cfg.data, crop=crop), runtime=runtime).validate()  # fmt: skip


class Usage(NamedTuple):
    """One step's wall seconds, process CPU seconds (user, system) and minor page faults."""

    wall: float
    user: float = float("nan")
    system: float = float("nan")
    faults: float = float("nan")


def usage_now() -> Usage:
    if sys.platform == "win32":  # no getrusage
        return Usage(time.perf_counter())
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return Usage(time.perf_counter(), r.ru_utime, r.ru_stime, r.ru_minflt)


class Stepper:
    """One method with its optimiser and views, ready to take timed training steps."""

    def __init__(self, cfg: RunConfig) -> None:
        assert cfg.pretrain is not None
        self.runtime = resolve_runtime(cfg.runtime, cfg.pretrain.amp)
        torch.manual_seed(0)
        self.method = build_method(cfg, steps_per_epoch=1000).to(self.runtime.device)
        self.optimizer = self.method.make_optimizer(fused=self.runtime.device.type == "cuda")
        self.scaler = self.runtime.grad_scaler()
        shape = (cfg.pretrain.batch_size, 1, cfg.data.crop, cfg.data.crop)
        self.views = torch.rand(shape, device=self.runtime.device), torch.rand(shape, device=self.runtime.device)
        self.method.train()

    def step(self, step: int) -> Usage:
        """Seconds and faults of one step (epoch 1: the last layer learns, as in most of a run)."""
        began = usage_now()
        self.method.set_hyper(self.optimizer, step, epoch=1)
        with self.runtime.autocast():
            loss = self.method.loss(self.method, *self.views, epoch=1)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.method.before_update(self.optimizer, self.scaler, epoch=1)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.after_update(step, epoch=1)
        float(loss.detach())  # wait for the device
        return Usage(*(after - before for after, before in zip(usage_now(), began, strict=True)))


def seconds_per_step(configs: dict[str, RunConfig], steps: int) -> dict[str, Usage]:
    """Median step time (and the medians of its CPU times and faults) per method after one warm-up step each;
    the methods' steps alternate, so a change of the machine's load during the run reaches both alike."""
    steppers = {name: Stepper(cfg) for name, cfg in configs.items()}
    usages: dict[str, list[Usage]] = {name: [] for name in configs}
    for step in range(steps + 1):
        for name, stepper in steppers.items():
            usage = stepper.step(step)
            if step:
                usages[name].append(usage)
    return {name: Usage(*(sorted(column)[len(column) // 2] for column in zip(*values, strict=True)))
            for name, values in usages.items()}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--feature-size", type=int, default=48)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    configs = {method: config(method, args.batch, args.crop, args.feature_size, args.device)
               for method in ("simsiam", "dino")}  # fmt: skip
    times = seconds_per_step(configs, args.steps)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device {device}, batch {args.batch}, crop {args.crop}, C {args.feature_size}, load {load:.2f}")
    for method, usage in times.items():
        print(
            f"{method:8s} {usage.wall:8.3f} s/step  {args.batch / usage.wall:8.1f} pairs/s  cpu user "
            f"{usage.user:7.2f} s  system {usage.system:6.2f} s  {usage.faults / 1e6:6.2f} M page faults"
        )
    print(
        f"ratio dino/simsiam {times['dino'].wall / times['simsiam'].wall:.2f} "
        f"(user cpu {times['dino'].user / times['simsiam'].user:.2f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
