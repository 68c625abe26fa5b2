"""3D input path on one core (issue 20): the IoU sampler on volumes, sub-volume reads, device augmentation.

1. Sampler: pairs/s for 96³ cubes from 512 x 512 x 100 volumes (Z = 100), per thesis interval, modes "exact"
   and "algorithm1" (r1 = 30, r2 = 4), per batch of --batch pairs (what a loader worker asks for) and
   vectorised over --pairs pairs. Target: 10,000 pairs/s.
2. Input path: the pretraining loader's work for one batch (sampler + two 96³ reads per pair from the
   store's memory maps, on a store written to a temporary folder) and the view augmentations of that batch
   on the CPU (``batchaug3d``, as on the device): pairs/s per core, so the docs can say how many loader cores
   one GPU needs in 3D (a GPU augments itself; the reads and the sampler are the loader's).
Run: python benchmarks/bench_sampler3d.py [--pairs N] [--batch B] [--steps S]
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ioussl.science.sampling.sampler import sample_crop_pairs

INTERVALS = [(0.0, 0.0), (0.0001, 0.3), (0.3, 0.6), (0.6, 1.0), (0.0, 1.0)]
VOLUME = (100, 512, 512)  # (Z, H, W) as the store holds it
CUBE = (96, 96, 96)


def _best_rate(fn, pairs_per_call: int, calls: int, repeats: int = 3) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - start)
    return pairs_per_call * calls / best


def sampler_rates(pairs: int, batch: int) -> None:
    print(f"sampler, {CUBE[0]}³ cubes from {VOLUME[2]} x {VOLUME[1]} x {VOLUME[0]} volumes (pairs/s, one core)")
    print(f"{'interval':>16} {'mode':>10} {'batch of ' + str(batch):>12} {'vectorised':>12} {'fallback':>9}")
    for interval in INTERVALS:
        for mode in ("exact", "algorithm1"):
            rng = np.random.default_rng(0)
            small = _best_rate(functools.partial(sample_crop_pairs, rng, VOLUME, CUBE, *interval, batch, mode), batch,
                               2000)  # fmt: skip
            big = _best_rate(functools.partial(sample_crop_pairs, rng, VOLUME, CUBE, *interval, pairs, mode), pairs, 1)
            fallback = sample_crop_pairs(rng, VOLUME, CUBE, *interval, pairs, mode)[3].mean()
            print(f"{str(interval):>16} {mode:>10} {small:>12,.0f} {big:>12,.0f} {fallback:>9.4f}")


def input_path_rates(batch: int, steps: int) -> None:
    import torch

    from ioussl.science.augment.batchaug import PRETRAIN_VIEW
    from ioussl.science.augment.batchaug3d import StepAugment3d
    from ioussl.science.data.store import dequantise_tensor, quantise, write_index
    from ioussl.science.train.volumes import PretrainCubeBatches

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "cases").mkdir()
        rng = np.random.default_rng(0)
        metas = []
        for case in ("U1", "U2"):
            np.save(root / "cases" / f"{case}.image.npy", quantise(rng.random(VOLUME, dtype=np.float32)))
            metas.append({"case": case, "shape": list(VOLUME), "organs": [0] * VOLUME[0], "labelled": False})
        write_index(root, {}, metas)
        from ioussl.science.data.store import SliceStore

        store = SliceStore(root)
        ids = np.array([0, 1] * batch)
        dataset = PretrainCubeBatches(store, ids, CUBE[0], 0.3, 0.6, seed=0)
        augment = StepAugment3d(PRETRAIN_VIEW, 0, torch.device("cpu"))
        loader_s = augment_s = 0.0
        for step in range(steps + 1):
            start = time.perf_counter()
            batch_out = dataset.__getitems__(list(range(batch)))
            middle = time.perf_counter()
            augment.views(dequantise_tensor(batch_out["views"]), 0, step)
            end = time.perf_counter()
            if step:  # the first step warms the page cache and the allocator
                loader_s, augment_s = loader_s + middle - start, augment_s + end - middle
        pairs = batch * steps
        print(f"\ninput path, batch of {batch} pairs of {CUBE[0]}³ cubes, {steps} steps (pairs/s, one core)")
        print(f"  sampler + sub-volume reads (the loader): {pairs / loader_s:,.1f}")
        print(f"  view augmentation on the CPU (both views): {pairs / augment_s:,.2f}")
        print(f"  together: {pairs / (loader_s + augment_s):,.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200_000, help="pairs per vectorised sampler call")
    parser.add_argument("--batch", type=int, default=8, help="pairs per loader batch")
    parser.add_argument("--steps", type=int, default=3, help="batches timed on the input path")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import torch

    torch.set_num_threads(1)
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    sampler_rates(args.pairs, args.batch)
    input_path_rates(args.batch, args.steps)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
