"""From a run config to data loaders, on top of the data layer (store, splits, datasets).

Every epoch gets its own loader whose shuffling and augmentation seeds derive from (run seed, epoch), so
epoch k draws the same samples whether the run went straight through or was resumed before epoch k. In a
multi-GPU job (``ranks``) every process shuffles alike and takes its share of each global batch
(``datasets.RankBatches``), and cuts and augments its crops with seeds of its own rank.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ioussl.config import RunConfig
from ioussl.errors import DataError
from ioussl.science.runtime import Ranks
from ioussl.science.seeds import derived_seed


def open_store(cfg: RunConfig) -> Any:
    """Open the slice store named by ``cfg.data.store`` and check it can feed crops of ``cfg.data.crop``.

    Raises:
        DataError: the store is missing, unreadable, or its slices are smaller than the crop.
    """
    from ioussl.science.data.store import SliceStore

    root = Path(cfg.data.store)
    if not root.exists():
        raise DataError(f"data store {root} does not exist (data.store in the run config)")
    return SliceStore(root)


def check_crop_fits(store: Any, cases: list[str], crop: int) -> None:
    height, width = store.min_shape(cases)
    if min(height, width) < crop:
        raise DataError(
            f"data store {store.root} has slices of {height}x{width}, "
            f"smaller than the configured crop {crop}: preprocess with padding to at least {crop}"
        )


def pretrain_slice_ids(store: Any, cfg: RunConfig) -> np.ndarray:
    """The unlabelled cases' slices (plus the labelled ones if ``pretrain.include_labelled``)."""
    if cfg.model.spatial_dims == 3:  # volumes and cubes (issue 20)
        from ioussl.science.train import volumes

        return volumes.pretrain_case_ids(store, cfg)
    assert cfg.pretrain is not None
    cases = list(store.unlabelled_cases())
    if cfg.pretrain.include_labelled:
        cases += list(store.labelled_cases())
    if not cases:
        raise DataError(f"data store {cfg.data.store} has no unlabelled cases to pretrain on")
    check_crop_fits(store, cases, cfg.data.crop)
    return np.asarray(store.slice_ids(cases))


def finetune_split(store: Any, cfg: RunConfig) -> dict[str, list[str]]:
    """Train / val (/ test) case lists from ``cfg.data.split``, each case a labelled case of the store."""
    from ioussl.science.data.splits import check_split_cases, load_split

    if cfg.data.split is None:
        raise DataError("a fine-tune run needs data.split (a JSON file with train and val case lists)")
    split = load_split(Path(cfg.data.split))
    parts = {name: cases for name, cases in split.items() if cases}
    for name in ("train", "val"):
        if not parts.get(name):
            raise DataError(f"split {cfg.data.split} has no {name!r} cases")
    where = f"split {cfg.data.split} against labelled cases of data store {cfg.data.store}"
    check_split_cases(parts, store.labelled_cases(), where=where)
    check_crop_fits(store, parts["train"], cfg.data.crop)
    check_classes(store, cfg)
    return parts


def check_classes(store: Any, cfg: RunConfig) -> None:
    """The network must have an output for every label class the store can hold (14 for FLARE)."""
    from ioussl.science.data.store import N_CLASSES

    if cfg.model.out_channels < N_CLASSES:
        raise DataError(
            f"data store {store.root} holds labels 0..{N_CLASSES - 1} but model.out_channels is "
            f"{cfg.model.out_channels}; it must be at least {N_CLASSES}"
        )


def pretrain_loader(
    store: Any, ids: np.ndarray, cfg: RunConfig, epoch: int, workers: int, ranks: Ranks | None = None
) -> DataLoader:
    """Pairs of views cut by the IoU sampler; incomplete last batches are dropped, as in the reference.
    ``cfg.pretrain.batch_size`` is the global batch: with several processes this one gets its share.

    With ``data.augment_on = "device"`` the loader only cuts the crops (whole batches, uint16) and
    ``pretrain_feed`` augments them on the device; with "loader" each view is augmented here by MONAI.
    """
    if cfg.model.spatial_dims == 3:  # volumes and cubes (issue 20)
        from ioussl.science.train import volumes

        return volumes.pretrain_loader(store, ids, cfg, epoch, workers, ranks)
    from ioussl.science.train.datasets import PretrainCropBatches, PretrainPairDataset, make_pretrain_loader

    assert cfg.sampler is not None and cfg.pretrain is not None
    sampler = cfg.sampler
    device_mode = cfg.data.augment_on == "device"
    dataset = (PretrainCropBatches if device_mode else PretrainPairDataset)(
        store, ids, cfg.data.crop, sampler.i_min, sampler.i_max, random_crop=sampler.random_crop,
        mode=sampler.mode, augment=False if device_mode else cfg.pretrain.augment,
        seed=derived_seed(cfg.seed, epoch, "pairs", _rank(ranks)),
    )  # fmt: skip
    order = derived_seed(cfg.seed, epoch, "order")  # one order for every rank: each takes its share of it
    return make_pretrain_loader(dataset, cfg.pretrain.batch_size, workers, order, torch.cuda.is_available(), ranks)


def finetune_loader(
    store: Any, ids: np.ndarray, cfg: RunConfig, epoch: int, workers: int, ranks: Ranks | None = None
) -> DataLoader:
    """Batches of ``batch_size`` slices x ``crops_per_slice`` crops (pos/neg-balanced centres); augmented
    here in "loader" mode, by ``finetune_feed`` on the device in "device" mode. With several processes
    this one gets its share of each global batch."""
    if cfg.model.spatial_dims == 3:  # volumes and cubes (issue 20)
        from ioussl.science.train import volumes

        return volumes.finetune_loader(store, ids, cfg, epoch, workers, ranks)
    from ioussl.science.train.datasets import FinetuneSliceDataset, make_finetune_loader

    assert cfg.finetune is not None
    ft = cfg.finetune
    dataset = FinetuneSliceDataset(
        store, ids, cfg.data.crop, crops_per_slice=ft.crops_per_slice, pos=ft.pos, neg=ft.neg,
        augment=ft.augment if cfg.data.augment_on == "loader" else False,
        seed=derived_seed(cfg.seed, epoch, "crops", _rank(ranks)),
    )  # fmt: skip
    order = derived_seed(cfg.seed, epoch, "order")
    return make_finetune_loader(dataset, ft.batch_size, workers, order, torch.cuda.is_available(), ranks)


def _rank(ranks: Ranks | None) -> int:
    return ranks.rank if ranks is not None else 0


def pretrain_feed(cfg: RunConfig, runtime: Any) -> Callable[[dict, int, int], tuple[Tensor, Tensor]]:
    """(batch, epoch, step) -> both views on the device, ready for the model.

    Device mode: transfer the stored crops, dequantise and augment them there (each view its own draws,
    seeded by run seed, epoch and step); loader mode: the views are already augmented.
    """
    if cfg.model.spatial_dims == 3:  # volumes and cubes (issue 20)
        from ioussl.science.train import volumes

        return volumes.pretrain_feed(cfg, runtime)
    if cfg.data.augment_on == "loader":
        return lambda batch, epoch, step: (runtime.to_device(batch["view1"]), runtime.to_device(batch["view2"]))
    from ioussl.science.augment.batchaug import AugmentSpec, StepAugment
    from ioussl.science.data.store import dequantise_tensor

    assert cfg.pretrain is not None
    augment = StepAugment(AugmentSpec.of(cfg.pretrain.augment), cfg.seed, runtime.device, runtime.rank)

    def feed(batch: dict, epoch: int, step: int) -> tuple[Tensor, Tensor]:
        views = augment.views(dequantise_tensor(batch["views"], runtime.device), epoch, step)
        pairs = views.shape[0] // 2
        return runtime.to_device(views[:pairs]), runtime.to_device(views[pairs:])

    return feed


def finetune_feed(cfg: RunConfig, runtime: Any) -> Callable[[dict, int, int], tuple[Tensor, Tensor]]:
    """(batch, epoch, step) -> crops and labels on the device; augmented there in device mode (geometry on
    both, nearest for labels; intensity on the image only)."""
    if cfg.model.spatial_dims == 3:  # volumes and cubes (issue 20)
        from ioussl.science.train import volumes

        return volumes.finetune_feed(cfg, runtime)
    if cfg.data.augment_on == "loader":
        return lambda batch, epoch, step: (runtime.to_device(batch["image"]), runtime.to_device(batch["label"]))
    from ioussl.science.augment.batchaug import AugmentSpec, StepAugment

    assert cfg.finetune is not None
    augment = StepAugment(AugmentSpec.of(cfg.finetune.augment), cfg.seed, runtime.device, runtime.rank)

    def feed(batch: dict, epoch: int, step: int) -> tuple[Tensor, Tensor]:
        image = batch["image"].to(runtime.device, non_blocking=True)
        label = batch["label"].to(runtime.device, non_blocking=True)
        image, label = augment.crops(image, label, epoch, step)
        return runtime.to_device(image), runtime.to_device(label)

    return feed


def val_loader(store: Any, ids: np.ndarray, workers: int, spatial_dims: int = 2) -> DataLoader:
    """Whole slices one at a time (their sizes differ), in store order; whole volumes in 3D."""
    if spatial_dims == 3:
        from ioussl.science.train import volumes

        return volumes.val_loader(store, ids, workers)
    from ioussl.science.train.datasets import ValSliceDataset, make_val_loader

    return make_val_loader(ValSliceDataset(store, ids), batch_size=1, num_workers=workers)


def subsample(ids: np.ndarray, limit: int | None) -> np.ndarray:
    """At most ``limit`` ids, evenly spaced (tiny profiles score a few slices of every case)."""
    if limit is None or len(ids) <= limit:
        return ids
    return ids[np.linspace(0, len(ids) - 1, limit).round().astype(int)]
