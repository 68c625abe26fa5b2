"""FLOPs of one SimSiam pair and one fine-tuning crop, 2D (96²) against 3D (96³), at the thesis' model size.

Counted by torch's FlopCounterMode on the real networks (forward and backward; weights on the meta device, so
it runs in seconds on any machine). jobs/thesis-3d.toml's GPU-hour limits come from these counts scaled by
the thesis' own 2D cost (14.9 V100-h per pretraining). Run: python benchmarks/flops_3d.py
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from ioussl.config import ModelConfig, PretrainConfig
from ioussl.science.models.swin import SimSiam, build_swin_unetr

BATCH = 4


def _flops(step) -> float:  # type: ignore[no-untyped-def]
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / BATCH


def count(dims: int) -> tuple[float, float, float]:
    """GFLOP of a pretraining pair, a fine-tuning crop (training) and an inference window at 96 per side."""
    model = ModelConfig(spatial_dims=dims)
    shape = (BATCH, 1) + (96,) * dims
    net = SimSiam(model, PretrainConfig()).to("meta")
    views = torch.empty(shape, device="meta")

    def pretrain_step() -> None:
        _, p1 = net(views)
        _, p2 = net(views)
        (p1.sum() + p2.sum()).backward()

    seg = build_swin_unetr(model, 0.0).to("meta")
    crops = torch.empty(shape, device="meta")
    train = _flops(lambda: seg(crops).sum().backward())
    with torch.no_grad():
        infer = _flops(lambda: seg(crops))
    return _flops(pretrain_step) / 1e9, train / 1e9, infer / 1e9


def main() -> None:
    for dims in (2, 3):
        pair, train, infer = count(dims)
        print(f"{dims}D 96: pretraining pair {pair:,.2f} GFLOP; fine-tuning crop {train:,.2f} GFLOP (training), "
              f"{infer:,.2f} GFLOP (inference window)")  # fmt: skip


if __name__ == "__main__":
    main()
