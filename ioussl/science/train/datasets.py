"""Torch datasets and loaders over the slice store, with reproducible per-worker seeding.

Randomness: each dataset owns a NumPy Generator (crop boxes) and a MONAI random state (augmentations),
both seeded from ``seed``; in a DataLoader worker, ``worker_init_fn`` reseeds them from (seed, the worker's
torch seed), which torch derives from the loader's seeded generator: same seed, same batches, for a given
number of workers. ``PretrainPairDataset.__getitems__`` samples a whole batch's boxes in one vectorised
call (torch's fetcher uses it), so the IoU constraint costs almost nothing per pair.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from ioussl.config import AugmentConfig, SamplerMode
from ioussl.errors import ConfigError, DataError
from ioussl.science.augment.batchaug import FINETUNE, PRETRAIN_VIEW
from ioussl.science.augment.transforms import finetune_augment, finetune_crop, pretrain_view_augment
from ioussl.science.data.store import SliceStore
from ioussl.science.runtime import Ranks
from ioussl.science.sampling.sampler import check_interval_feasible, sample_crop_pairs


def _check_slices_fit(store: SliceStore, ids: np.ndarray, crop: int) -> None:
    if ids.size == 0:
        raise DataError(f"{store.root}: no slices selected")
    small = np.flatnonzero(np.any(store.shapes(ids) < crop, axis=1))
    if small.size:
        case, z = store.slice_case(int(ids[small[0]]))
        shape = store.shape(int(ids[small[0]]))
        raise DataError(
            f"{store.root}: case {case} slice {z} has shape {shape}, smaller than the crop {crop}"
        )


class _Seeded(Dataset):
    """Owns the per-process random state; ``seed_worker`` reseeds it inside a DataLoader worker."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self._reseed(None)

    def _reseed(self, worker_seed: int | None) -> None:
        entropy = [self.seed] if worker_seed is None else [self.seed, worker_seed]
        self.rng = np.random.default_rng(entropy)
        self._set_transform_seed(int(self.rng.integers(2**31 - 1)))

    def _set_transform_seed(self, seed: int) -> None:  # overridden by datasets with MONAI transforms
        pass

    def seed_worker(self, worker_seed: int) -> None:
        self._reseed(int(worker_seed) % 2**63)


class PretrainPairDataset(_Seeded):
    """Pairs of views of one slice for SimSiam.

    Items: ``{"view1": FloatTensor[1, c, c], "view2": ..., "iou": float, "fallback": bool, "slice": int}``.
    ``fallback`` is True when the slice admits no pair in the interval (then two uniform crops are used).
    """

    def __init__(
        self,
        store: SliceStore,
        slice_ids: Sequence[int] | np.ndarray,
        crop: int,
        i_min: float,
        i_max: float,
        random_crop: bool = False,
        mode: str = "exact",
        augment: bool | AugmentConfig = True,
        seed: int = 0,
    ) -> None:
        self.store, self.crop, self.mode = store, int(crop), mode
        self.ids = np.asarray(slice_ids, dtype=np.int64)
        self.i_min, self.i_max = (0.0, 1.0) if random_crop else (float(i_min), float(i_max))
        _check_slices_fit(store, self.ids, self.crop)
        # No slice admitting the interval is a configuration error; some slices failing it is not
        # (their pairs are flagged fallbacks, counted by the training loop).
        largest = tuple(store.shapes(self.ids).max(axis=0).tolist())
        check_interval_feasible(largest, (self.crop, self.crop), self.i_min, self.i_max)
        spec = augment if isinstance(augment, AugmentConfig) else PRETRAIN_VIEW  # True: the thesis' views
        self.augment = pretrain_view_augment(spec=spec) if augment else None
        super().__init__(seed)

    def _set_transform_seed(self, seed: int) -> None:
        if self.augment is not None:
            self.augment.set_random_state(seed=seed)

    def __len__(self) -> int:
        return int(self.ids.size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        slices = self.ids[np.asarray(indices, dtype=np.int64)]
        crop = (self.crop, self.crop)
        starts1, starts2, ious, fallback = sample_crop_pairs(
            self.rng, self.store.shapes(slices), crop, self.i_min, self.i_max, len(slices),
            mode=cast(SamplerMode, self.mode),
        )
        items = []
        for k, idx in enumerate(slices.tolist()):
            views = [
                torch.from_numpy(self.store.image_region(idx, s[k], crop)[None]) for s in (starts1, starts2)
            ]
            if self.augment is not None:
                with _plain_tensors():
                    views = [torch.as_tensor(self.augment(v)).as_subclass(torch.Tensor) for v in views]
            items.append(
                {
                    "view1": views[0],
                    "view2": views[1],
                    "iou": float(ious[k]),
                    "fallback": bool(fallback[k]),
                    "slice": idx,
                }
            )
        return items


class PretrainCropBatches(PretrainPairDataset):
    """The crops of ``PretrainPairDataset`` without augmentation, cut a whole batch at a time, as stored
    (uint16): the augmentations run batched on the training device (``data.augment_on = "device"``).

    ``__getitems__`` returns one collated batch ``{"views": uint16 [2B, 1, c, c] (every pair's first views,
    then their second views), "iou": float64 [B], "fallback": bool [B], "slice": int64 [B]}``; use it with
    ``make_pretrain_loader`` (which passes such batches on as they are). Dequantise with
    ``store.dequantise_tensor`` after the transfer: half the bytes of float32 cross the bus.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "augment": False})

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:  # type: ignore[override]
        slices = self.ids[np.asarray(indices, dtype=np.int64)]
        crop = (self.crop, self.crop)
        starts1, starts2, ious, fallback = sample_crop_pairs(
            self.rng, self.store.shapes(slices), crop, self.i_min, self.i_max, len(slices),
            mode=cast(SamplerMode, self.mode),
        )
        n = len(slices)
        views = np.empty((2 * n, 1, *crop), dtype=np.uint16)
        for k, idx in enumerate(slices.tolist()):
            views[k, 0] = self.store.stored_region(idx, starts1[k], crop)
            views[n + k, 0] = self.store.stored_region(idx, starts2[k], crop)
        return {
            "views": torch.from_numpy(views),
            "iou": torch.from_numpy(ious),
            "fallback": torch.from_numpy(fallback),
            "slice": torch.from_numpy(slices),
        }


class FinetuneSliceDataset(_Seeded):
    """Labelled slices; each item is ``crops_per_slice`` crops {"image": [1, c, c], "label": [1, c, c]}.

    Both are float32 (the MONAI convention; DiceCELoss(to_onehot_y=True) casts the label).

    Crops are centred on an organ with probability pos / (pos + neg) (MONAI RandCropByPosNegLabeld, as the
    reference code; organ-free slices get background centres), then the thesis' fine-tune augmentations.
    Collate with ``monai.data.list_data_collate`` (``make_finetune_loader`` does) to get crops_per_slice x
    batch crops per step.
    """

    def __init__(
        self,
        store: SliceStore,
        slice_ids: Sequence[int] | np.ndarray,
        crop: int,
        crops_per_slice: int = 2,
        pos: float = 1.0,
        neg: float = 1.0,
        augment: bool | AugmentConfig = True,
        seed: int = 0,
    ) -> None:
        self.store = store
        self.ids = np.asarray(slice_ids, dtype=np.int64)
        _check_slices_fit(store, self.ids, int(crop))
        self.cropper = finetune_crop(int(crop), crops_per_slice, pos, neg)
        spec = augment if isinstance(augment, AugmentConfig) else FINETUNE  # True: the thesis' crop augmentations
        self.augment = finetune_augment(spec) if augment else None
        super().__init__(seed)

    def _set_transform_seed(self, seed: int) -> None:
        self.cropper.set_random_state(seed=seed)
        if self.augment is not None:
            self.augment.set_random_state(seed=seed + 1)

    def __len__(self) -> int:
        return int(self.ids.size)

    def __getitem__(self, index: int) -> list[dict[str, torch.Tensor]]:
        idx = int(self.ids[index])
        data = {
            "image": torch.from_numpy(self.store.image(idx)[None]),
            "label": torch.from_numpy(self.store.label(idx)[None].astype(np.float32)),
        }
        with warnings.catch_warnings(), _plain_tensors():
            # organ-free slices: MONAI warns that it uses background centres
            warnings.filterwarnings("ignore", message=".*unable to generate class balanced samples.*")
            crops = self.cropper(cast(Any, data))  # MONAI types its keys as Hashable
            if self.augment is not None:
                crops = [self.augment(c) for c in crops]
        return [
            {k: torch.as_tensor(c[k]).as_subclass(torch.Tensor) for k in ("image", "label")} for c in crops
        ]


class ValSliceDataset(Dataset):
    """Whole slices for validation.

    Items: {"image": [1, H, W], "label": [1, H, W] (float32), "case": str, "z": int}.
    """

    def __init__(self, store: SliceStore, slice_ids: Sequence[int] | np.ndarray) -> None:
        self.store = store
        self.ids = np.asarray(slice_ids, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.ids.size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        idx = int(self.ids[index])
        case, z = self.store.slice_case(idx)
        return {
            "image": torch.from_numpy(self.store.image(idx)[None]),
            "label": torch.from_numpy(self.store.label(idx)[None].astype(np.float32)),
            "case": case,
            "z": z,
        }


@contextlib.contextmanager
def _plain_tensors() -> Iterator[None]:
    """Run MONAI transforms without MetaTensor bookkeeping: the items carry no metadata anyway, and the
    bookkeeping was 62% of the view augmentations' time (377 -> 1,011 pairs/s per core measured)."""
    from monai.data import get_track_meta, set_track_meta

    previous = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(previous)


def worker_init_fn(worker_id: int) -> None:
    """Reseed the worker's dataset, NumPy's and Python's global state from torch's per-worker seed."""
    info = torch.utils.data.get_worker_info()
    seed = info.seed if info is not None else torch.initial_seed()
    np.random.seed(seed % 2**32)
    random.seed(seed)
    dataset = info.dataset if info is not None else None
    seed_worker = getattr(dataset, "seed_worker", None)
    if seed_worker is not None:
        seed_worker(seed)


def _loader(dataset, batch_size, shuffle, drop_last, num_workers, seed, collate_fn=None, pin_memory=False,
            ranks=None):
    generator = torch.Generator().manual_seed(int(seed))
    # One process: torch's shuffled batches. Several (``ranks``): this rank's share of each global batch.
    share = {"batch_size": batch_size, "shuffle": shuffle, "drop_last": drop_last}
    if ranks is not None and ranks.world_size > 1:
        share = {"batch_sampler": RankBatches(len(dataset), batch_size, ranks, generator, drop_last)}
    return DataLoader(
        dataset,
        **share,
        num_workers=num_workers,
        worker_init_fn=worker_init_fn,
        generator=generator,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        # Keep workers across passes: a small store is passed over every few steps (cycle() re-iterates),
        # and re-forking a dozen workers each time starved the GPU.
        persistent_workers=num_workers > 0,
    )


class RankBatches(Sampler[list[int]]):
    """One process's share of every global batch of a multi-GPU job.

    The items come in the order one process's shuffled loader draws them (torch's ``RandomSampler`` on the
    loader's generator, seeded alike on every rank), cut into global batches of ``batch_size``; rank r of W
    takes the r-th of the W equal parts of each, so that the ranks' batches together hold exactly the items
    of the batch a single process would train on. An incomplete last batch is dropped (``drop_last``) or
    padded with the first items of the order to a multiple of W, as torch's DistributedSampler pads, so that
    no rank gets an empty batch.
    """

    def __init__(self, size: int, batch_size: int, ranks: Ranks, generator: torch.Generator, drop_last: bool) -> None:
        if batch_size % ranks.world_size:
            raise ConfigError(f"batch size {batch_size} is not divisible by the {ranks.world_size} processes of "
                              "this job")  # fmt: skip
        self.size, self.batch_size, self.ranks = int(size), int(batch_size), ranks
        self.generator, self.drop_last = generator, drop_last

    def __len__(self) -> int:
        full, rest = divmod(self.size, self.batch_size)
        return full + int(bool(rest) and not self.drop_last)

    def __iter__(self) -> Iterator[list[int]]:
        order = list(RandomSampler(range(self.size), generator=self.generator))
        world, rank = self.ranks.world_size, self.ranks.rank
        for start in range(0, self.size, self.batch_size):
            batch = order[start : start + self.batch_size]
            if len(batch) < self.batch_size:
                if self.drop_last:
                    return
                batch += list(itertools.islice(itertools.cycle(order), -len(batch) % world))
            share = len(batch) // world
            yield batch[rank * share : (rank + 1) * share]


def make_pretrain_loader(
    dataset: PretrainPairDataset,
    batch_size: int,
    num_workers: int = 0,
    seed: int = 0,
    pin_memory: bool = False,
    ranks: Ranks | None = None,
) -> DataLoader:
    """Shuffled, drop_last (floor(N / batch) steps per epoch, as the reference code); with several
    processes (``ranks``), this rank's share of each global batch of ``batch_size`` (``RankBatches``).

    A ``PretrainCropBatches`` dataset hands over whole batches, which are passed on as they are.
    """
    collate = keep_batch if isinstance(dataset, PretrainCropBatches) else None
    return _loader(dataset, batch_size, True, True, num_workers, seed, collate, pin_memory, ranks)


def keep_batch(batch: Any) -> Any:
    """The collate function of datasets whose ``__getitems__`` already returns a batch."""
    return batch


def make_finetune_loader(
    dataset: Dataset,  # a FinetuneSliceDataset, or volumes.FinetuneCubeDataset in 3D
    batch_size: int,
    num_workers: int = 0,
    seed: int = 0,
    pin_memory: bool = False,
    ranks: Ranks | None = None,
) -> DataLoader:
    """Shuffled, not drop_last (ceil(N / batch) steps); batches hold batch_size x crops_per_slice crops (with
    several processes, this rank's share of them: ``RankBatches``)."""
    from monai.data import list_data_collate

    return _loader(dataset, batch_size, True, False, num_workers, seed, list_data_collate, pin_memory, ranks)


def make_val_loader(dataset: Dataset, batch_size: int = 1, num_workers: int = 0) -> DataLoader:
    """A ValSliceDataset's slices (or volumes.ValVolumeDataset's volumes) in order; batch_size > 1 needs equal
    slice shapes (true within one case)."""
    return _loader(dataset, batch_size, False, False, num_workers, 0)
