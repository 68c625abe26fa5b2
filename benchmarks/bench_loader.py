"""Loading from the slice store: IoU sampling overhead per batch, and slices/s against per-slice PNGs.

1. A batch of 128 pretraining pairs (96x96, before augmentation) through PretrainPairDataset.__getitems__
   plus default collation, with IoU sampling [0.3, 0.6] vs plain random cropping, interleaved, same run.
2. Whole-slice reads per second on one core: the memory-mapped store vs decoding the thesis' 8-bit PNGs.
Uses --store if given, else builds a synthetic store (about 512x512 slices) in a temporary folder.
Run: python benchmarks/bench_loader.py [--store DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _build_store(tmp: Path) -> Path:
    from ioussl.science.data.preprocess import preprocess_dataset
    from ioussl.science.data.synth import synth_dataset

    synth_dataset(tmp / "raw", cases=0, unlabelled=4, seed=0, size=256, slices=32)
    preprocess_dataset(tmp / "raw", tmp / "store", workers=1)
    return tmp / "store"


def bench_batches(store, batches: int) -> None:
    from torch.utils.data import default_collate

    from ioussl.science.train.datasets import PretrainPairDataset

    ids = store.slice_ids()
    iou = PretrainPairDataset(store, ids, 96, 0.3, 0.6, augment=False, seed=0)
    plain = PretrainPairDataset(store, ids, 96, 0.0, 1.0, random_crop=True, augment=False, seed=0)
    rng = np.random.default_rng(0)
    times: dict[str, list[float]] = {"iou [0.3, 0.6]": [], "random crop": []}
    for _ in range(batches):  # interleaved, so drift on a shared machine hits both equally
        index = rng.integers(len(ids), size=128).tolist()
        for name, dataset in (("iou [0.3, 0.6]", iou), ("random crop", plain)):
            start = time.perf_counter()
            default_collate(dataset.__getitems__(index))
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    print(f"batch of 128 pairs (96x96, no augmentation), {batches} batches each, interleaved:")
    for name in times:
        print(f"  {name:>15}: median {med[name] * 1e3:7.2f} ms, best {low[name] * 1e3:7.2f} ms")
    _sampler_only(store, ids, rng, batches)
    overhead = med["iou [0.3, 0.6]"] / med["random crop"] - 1
    print(f"  IoU sampling overhead over random cropping: {overhead * 100:+.2f} % (median), "
          f"{(low['iou [0.3, 0.6]'] / low['random crop'] - 1) * 100:+.2f} % (best)")  # fmt: skip


def _sampler_only(store, ids, rng, batches: int) -> None:
    from ioussl.science.sampling.sampler import sample_crop_pairs

    for name, interval in (("iou [0.3, 0.6]", (0.3, 0.6)), ("random crop", (0.0, 1.0))):
        shapes = [store.shapes(ids[rng.integers(len(ids), size=128)]) for _ in range(batches)]
        start = time.perf_counter()
        for batch_shapes in shapes:
            sample_crop_pairs(rng, batch_shapes, (96, 96), *interval, 128)
        per_batch = (time.perf_counter() - start) / batches
        print(f"  {name:>15}: sampling alone {per_batch * 1e6:6.0f} us per batch of 128")


def bench_slices(store, tmp: Path, count: int) -> None:
    from PIL import Image

    ids = store.slice_ids()[:count]
    png_dir = tmp / "png"
    png_dir.mkdir(exist_ok=True)
    for idx in ids.tolist():  # the thesis' format: 8-bit, truncated
        Image.fromarray((store.image(idx) * 255).astype(np.uint8)).save(png_dir / f"{idx}.png")
    order = np.random.default_rng(0).permutation(ids).tolist()
    start = time.perf_counter()
    for idx in order:
        store.image(idx)
    store_rate = len(order) / (time.perf_counter() - start)
    start = time.perf_counter()
    for idx in order:
        np.asarray(Image.open(png_dir / f"{idx}.png"), dtype=np.float32) / 255.0
    png_rate = len(order) / (time.perf_counter() - start)
    shape = store.shape(int(ids[0]))
    print(f"whole slices ({shape[0]}x{shape[1]}), random order, one core, warm page cache:")
    print(f"  store (uint16 memmap -> float32): {store_rate:9,.0f} slices/s")
    print(
        f"  8-bit PNG decode (Pillow)       : {png_rate:9,.0f} slices/s ({store_rate / png_rate:.1f}x slower)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--slices", type=int, default=128)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import torch

    torch.set_num_threads(1)
    from ioussl.science.data.store import SliceStore

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        store = SliceStore(args.store or _build_store(tmp))
        bench_batches(store, args.batches)
        bench_slices(store, tmp, args.slices)


if __name__ == "__main__":
    main()
