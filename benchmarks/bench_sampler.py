"""Sampler throughput on one core: exact IoU sampling vs the thesis' Algorithm 1, same run.

For each thesis interval (and random cropping = [0, 1]) on 512x512 and 256x256 images with 96x96 crops:
- exact, vectorised over many pairs and per batch of 128 (what a DataLoader worker does);
- Algorithm 1 (r1 = 30, r2 = 4), vectorised the same way, and one pair per call as the thesis' per-sample
  MONAI transform runs it.
Run: python benchmarks/bench_sampler.py [--pairs N]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from ioussl.science.sampling.sampler import sample_crop_pairs

INTERVALS = [(0.0, 0.0), (0.0001, 0.3), (0.3, 0.6), (0.6, 1.0), (0.0, 1.0)]
IMAGES = [(512, 512), (256, 256)]
CROP = (96, 96)


def _rate(fn, pairs_per_call: int, calls: int, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - start)
    return pairs_per_call * calls / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1_000_000, help="pairs per vectorised call")
    parser.add_argument("--single", type=int, default=3_000, help="pairs drawn one per call")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, honestly
    rng = np.random.default_rng(0)
    print(f"{'interval':>14} {'image':>8} | {'exact':>10} {'exact/128':>10} | {'alg1':>10} {'alg1/1':>10} | "
          f"{'x vec':>6} {'x per-pair':>10}  (pairs/s, one core)")  # fmt: skip
    for interval in INTERVALS:
        for image in IMAGES:

            def run(mode, n, image=image, interval=interval):
                return lambda: sample_crop_pairs(rng, image, CROP, *interval, n, mode=mode)

            exact = _rate(run("exact", args.pairs), args.pairs, 1)
            exact_batch = _rate(run("exact", 128), 128, 200)
            alg1 = _rate(run("algorithm1", args.pairs), args.pairs, 1)
            alg1_single = _rate(run("algorithm1", 1), 1, args.single, repeats=1)
            name = f"[{interval[0]:g}, {interval[1]:g}]"
            print(
                f"{name:>14} {image[0]:>4}x{image[1]:<3} | {exact:>10,.0f} {exact_batch:>10,.0f} | "
                f"{alg1:>10,.0f} {alg1_single:>10,.0f} | {exact / alg1:>6.1f} {exact / alg1_single:>10.0f}"
            )
    n = max(args.pairs // 10, 1000)
    for interval in INTERVALS[:4]:  # 3D, for completeness: 96^3 crops in a 200 x 200 x 150 volume
        rate = _rate(lambda i=interval: sample_crop_pairs(rng, (200, 200, 150), (96, 96, 96), *i, n), n, 1)
        print(f"3D [{interval[0]:g}, {interval[1]:g}] 200x200x150, crop 96^3: exact {rate:,.0f} pairs/s")


if __name__ == "__main__":
    main()
