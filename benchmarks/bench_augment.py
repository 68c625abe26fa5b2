"""View augmentation and pretraining loader on the CPU: per-sample MONAI path against batched device mode.

1. One core: the SimSiam view augmentations of a batch of 128 pairs at 96² (real crops from a synthetic
   store), per sample with MONAI as the loader does in ``augment_on = "loader"`` mode, against the batched
   ``batchaug`` pipeline on CPU tensors (``augment_on = "device"``); interleaved rounds, medians.
   Target: batched >= 10x faster per pair.
2. The pretraining DataLoader with one worker process (the main process only consumes): pairs/s per worker
   core in device mode (crops only, uint16 batches) and in loader mode (crops + MONAI augmentations).
   Target: device mode >= 5,000 pairs/s per worker core.

    python benchmarks/bench_augment.py [--rounds 7] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

BATCH, CROP = 128, 96


def build_store(tmp: Path):  # type: ignore[no-untyped-def]
    from ioussl.science.data.preprocess import preprocess_dataset
    from ioussl.science.data.store import SliceStore
    from ioussl.science.data.synth import synth_dataset

    synth_dataset(tmp / "raw", cases=0, unlabelled=4, seed=0, size=256, slices=32)
    preprocess_dataset(tmp / "raw", tmp / "store", workers=1)
    return SliceStore(tmp / "store")


def crops(store) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Both views of 128 pairs, [256, 1, 96, 96] float32, as device mode gets them after the transfer."""
    from ioussl.science.data.store import dequantise_tensor
    from ioussl.science.train.datasets import PretrainCropBatches

    ids = store.slice_ids()
    batch = PretrainCropBatches(store, ids, CROP, 0.3, 0.6, seed=0).__getitems__(list(range(BATCH)))
    return dequantise_tensor(batch["views"])


def augmentation(views: torch.Tensor, rounds: int) -> dict[str, float]:
    """Median seconds per batch of 128 pairs, both paths, interleaved so that load drift hits both."""
    from ioussl.science.augment.batchaug import PRETRAIN_VIEW, StepAugment
    from ioussl.science.augment.transforms import pretrain_view_augment
    from ioussl.science.train.datasets import _plain_tensors

    reference = pretrain_view_augment()
    reference.set_random_state(seed=0)
    batched = StepAugment(PRETRAIN_VIEW, 0, torch.device("cpu"))

    def per_sample() -> None:  # what PretrainPairDataset does per view in loader mode
        with _plain_tensors():
            [torch.as_tensor(reference(v)).as_subclass(torch.Tensor) for v in views]

    def device_mode(step: int) -> None:
        batched.views(views, epoch=0, step=step)

    times: dict[str, list[float]] = {"per-sample (MONAI, loader mode)": [], "batched (device mode, CPU)": []}
    per_sample(), device_mode(0)  # warm-up
    for step in range(rounds):
        for name, run in zip(times, (per_sample, lambda step=step: device_mode(step)), strict=True):
            began = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - began)
    return {name: statistics.median(values) for name, values in times.items()}


def loader_rate(store, device_mode: bool, batches: int) -> float:  # type: ignore[no-untyped-def]
    """Pairs/s out of a one-worker DataLoader (the worker's whole time: sampling, crops, augmentations)."""
    from ioussl.science.train.datasets import PretrainCropBatches, PretrainPairDataset, make_pretrain_loader

    cls = PretrainCropBatches if device_mode else PretrainPairDataset
    dataset = cls(store, store.slice_ids(), CROP, 0.3, 0.6, augment=not device_mode, seed=0)
    loader = make_pretrain_loader(dataset, BATCH, num_workers=1, seed=0)
    iterator, pairs = iter(loader), 0
    next(iterator)  # the worker has started and primed its queue
    began = time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:  # a pass over the store ended: the persistent worker starts the next one
            iterator = iter(loader)
            batch = next(iterator)
        pairs += len(batch["fallback"])
    return pairs / (time.perf_counter() - began)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--loader-batches", type=int, default=40)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    torch.set_num_threads(1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    with tempfile.TemporaryDirectory() as name:
        store = build_store(Path(name))
        views = crops(store)
        if cores:
            os.sched_setaffinity(0, {cores[-1]})  # part 1 on one core, honestly
        medians = augmentation(views, args.rounds)
        if cores:
            os.sched_setaffinity(0, set(cores))
        rates = {mode: loader_rate(store, mode == "device", args.loader_batches) for mode in ("device", "loader")}
    (slow, slow_s), (fast, fast_s) = medians.items()
    print(f"load average at start {load:.2f}; torch {torch.__version__}, 1 thread")
    print(f"view augmentations, batch of {BATCH} pairs at {CROP}x{CROP}, one core, median of {args.rounds}:")
    for name, seconds in medians.items():
        print(f"  {name:34s} {seconds * 1e3:8.1f} ms per batch  {BATCH / seconds:9,.0f} pairs/s")
    print(f"  batched / per-sample: {slow_s / fast_s:.1f}x faster per pair (target >= 10x)")
    print(f"pretraining loader, one worker, {BATCH}-pair batches of {CROP}x{CROP}, IoU [0.3, 0.6]:")
    for mode, rate in rates.items():
        what = "crops only, uint16" if mode == "device" else "crops + MONAI augmentations"
        print(f"  augment_on = {mode!r:9s} ({what:27s}) {rate:9,.0f} pairs/s per worker core")
    print("  target: device mode >= 5,000 pairs/s per worker core")
    numbers = {"load_average": load, "per_sample_ms": slow_s * 1e3, "batched_ms": fast_s * 1e3,
               "speedup": slow_s / fast_s, "loader_pairs_per_s": rates}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=1) + "\n")
    ok = slow_s / fast_s >= 10 and rates["device"] >= 5000
    print("targets met" if ok else "target missed (see above; a loaded machine slows both paths alike)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
