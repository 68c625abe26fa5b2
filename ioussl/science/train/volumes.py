"""3D training data and evaluation (``model.spatial_dims = 3``): the volume is the unit, as in the reference.

Pretraining: each item is one volume; a batch cuts one IoU-constrained pair of cubes from each of its volumes
(``sampler.sample_crop_pairs`` on the volumes' shapes, so the interval holds for the cuboid IoU) and reads
the two sub-volumes straight from the store's memory maps, as stored (uint16); ``pretrain_feed`` augments
them on the device (``batchaug3d``). Fine-tuning: each item is one labelled volume giving
``crops_per_slice`` cubes, each centred on an organ voxel with probability pos / (pos + neg) and on a
background voxel otherwise (MONAI ``RandCropByPosNegLabeld``'s law: centres uniform over the foreground or
background voxels, then moved so the cube fits), read from the memory maps. Validation and test: whole
volumes, sliding-window inference with cubes of the crop's side, scored by the 3D DSC on the preprocessed grid
(``dsc_3d``; the per-slice DSC is a 2D metric and is not computed here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ioussl.config import RunConfig, SamplerMode
from ioussl.errors import DataError
from ioussl.science.runtime import Ranks
from ioussl.science.train.datasets import _loader, _Seeded, keep_batch, make_finetune_loader, make_val_loader

SPATIAL_DIMS = 3


def case_ids(store: Any, cases: Sequence[str]) -> np.ndarray:
    """Positions (int64) of ``cases`` in ``store.cases``: the items of the 3D datasets."""
    position = {case: i for i, case in enumerate(store.cases)}
    unknown = [c for c in cases if c not in position]
    if unknown:
        raise DataError(f"{store.root}: unknown case {unknown[0]!r}")
    return np.asarray([position[c] for c in cases], dtype=np.int64)


def check_volumes_fit(store: Any, cases: Sequence[str], crop: int) -> None:
    """Every volume at least ``crop`` voxels along each axis (DataError naming the first that is not)."""
    if not cases:
        raise DataError(f"{store.root}: no volumes selected")
    shapes = store.volume_shapes(cases)
    small = np.flatnonzero(np.any(shapes < crop, axis=1))
    if small.size:
        shape = tuple(int(s) for s in shapes[small[0]])
        raise DataError(
            f"data store {store.root}: case {cases[small[0]]} has a volume of {shape} (Z, H, W), smaller than "
            f"the {crop}³ crop: use a smaller data.crop or preprocess with --min-depth {crop}"
        )


class PretrainCubeBatches(_Seeded):
    """Pairs of cubes for SimSiam, a whole batch at a time, as stored (uint16).

    ``__getitems__`` returns ``{"views": uint16 [2B, 1, c, c, c] (first views, then second views),
    "iou": float64 [B], "fallback": bool [B], "slice": int64 [B] (the volumes' store positions)}``.
    """

    def __init__(
        self, store: Any, ids: np.ndarray, crop: int, i_min: float, i_max: float, random_crop: bool = False,
        mode: SamplerMode = "exact", seed: int = 0,
    ) -> None:  # fmt: skip
        from ioussl.science.sampling.sampler import check_interval_feasible

        self.store, self.crop, self.mode = store, int(crop), mode
        self.ids = np.asarray(ids, dtype=np.int64)
        self.cases = [store.cases[int(i)] for i in self.ids]
        self.i_min, self.i_max = (0.0, 1.0) if random_crop else (float(i_min), float(i_max))
        check_volumes_fit(store, self.cases, self.crop)
        self.shapes = store.volume_shapes(self.cases)
        # No volume admitting the interval is a configuration error; some failing it gives flagged fallbacks.
        largest = tuple(int(s) for s in self.shapes.max(axis=0))
        check_interval_feasible(largest, (self.crop,) * SPATIAL_DIMS, self.i_min, self.i_max)
        super().__init__(seed)

    def __len__(self) -> int:
        return int(self.ids.size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        from ioussl.science.sampling.sampler import sample_crop_pairs

        rows = np.asarray(indices, dtype=np.int64)
        crop = (self.crop,) * SPATIAL_DIMS
        starts1, starts2, ious, fallback = sample_crop_pairs(
            self.rng, self.shapes[rows], crop, self.i_min, self.i_max, len(rows), mode=self.mode
        )
        n = len(rows)
        views = np.empty((2 * n, 1, *crop), dtype=np.uint16)
        for k, row in enumerate(rows.tolist()):
            views[k, 0] = self.store.stored_subvolume(self.cases[row], starts1[k], crop)
            views[n + k, 0] = self.store.stored_subvolume(self.cases[row], starts2[k], crop)
        return {
            "views": torch.from_numpy(views),
            "iou": torch.from_numpy(ious),
            "fallback": torch.from_numpy(fallback),
            "slice": torch.from_numpy(self.ids[rows]),
        }


def pos_neg_starts(
    rng: np.random.Generator, label: np.ndarray, crop: int, count: int, pos: float, neg: float
) -> np.ndarray:
    """``count`` cube starts [count, 3], centred on organ voxels with probability pos / (pos + neg).

    Centres are uniform over the foreground (label > 0) or background voxels, as MONAI's
    ``generate_pos_neg_label_crop_centers``; a volume without organs gets background centres only. The cube
    is then moved inside the volume (MONAI's ``correct_crop_centers``): start = clip(centre - c // 2).
    """
    shape = np.asarray(label.shape, dtype=np.int64)
    ratio = pos / (pos + neg) if pos + neg > 0 else 0.0
    want_fg = rng.random(count) < ratio
    foreground = np.flatnonzero(np.asarray(label).reshape(-1)) if want_fg.any() else np.zeros(0, np.int64)
    centres = np.empty((count, SPATIAL_DIMS), dtype=np.int64)
    for k in range(count):
        if want_fg[k] and foreground.size:
            flat = int(foreground[rng.integers(foreground.size)])
        else:
            flat = _background_voxel(rng, label)
        centres[k] = np.unravel_index(flat, label.shape)
    return np.clip(centres - crop // 2, 0, shape - crop)


def _background_voxel(rng: np.random.Generator, label: np.ndarray) -> int:
    """A uniform background voxel: rejection from uniform voxels (background is most of a CT), then exact."""
    size = int(np.prod(label.shape))
    flat_view = np.asarray(label).reshape(-1)
    for flat in rng.integers(size, size=64).tolist():
        if flat_view[flat] == 0:
            return int(flat)
    background = np.flatnonzero(flat_view == 0)
    if background.size == 0:  # every voxel is an organ: any voxel, as MONAI falls back to all indices
        return int(rng.integers(size))
    return int(background[rng.integers(background.size)])


class FinetuneCubeDataset(_Seeded):
    """Labelled volumes; each item is ``crops_per_slice`` cubes ``{"image": [1, c, c, c], "label": [1, c, c, c]}``
    (float32; collate with ``monai.data.list_data_collate``, as ``make_finetune_loader`` does)."""

    def __init__(
        self, store: Any, ids: np.ndarray, crop: int, crops_per_slice: int = 2, pos: float = 1.0, neg: float = 1.0,
        seed: int = 0,
    ) -> None:  # fmt: skip
        self.store, self.crop, self.count, self.pos, self.neg = store, int(crop), int(crops_per_slice), pos, neg
        self.ids = np.asarray(ids, dtype=np.int64)
        self.cases = [store.cases[int(i)] for i in self.ids]
        check_volumes_fit(store, self.cases, self.crop)
        super().__init__(seed)

    def __len__(self) -> int:
        return int(self.ids.size)

    def __getitem__(self, index: int) -> list[dict[str, Tensor]]:
        from ioussl.science.data.store import _dequantise

        case = self.cases[int(index)]
        label = self.store.label_volume(case)
        starts = pos_neg_starts(self.rng, label, self.crop, self.count, self.pos, self.neg)
        size = (self.crop,) * SPATIAL_DIMS
        crops = []
        for start in starts:
            image = _dequantise(self.store.stored_subvolume(case, start, size))
            cut = self.store.label_subvolume(case, start, size).astype(np.float32)
            crops.append({"image": torch.from_numpy(image[None]), "label": torch.from_numpy(cut[None])})
        return crops


class ValVolumeDataset(Dataset):
    """Whole volumes: ``{"image": [1, Z, H, W], "label": [1, Z, H, W] (float32), "case": str}``."""

    def __init__(self, store: Any, ids: np.ndarray) -> None:
        self.store = store
        self.ids = np.asarray(ids, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.ids.size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case = self.store.cases[int(self.ids[index])]
        image, label = self.store.volume(case)
        if label is None:
            raise DataError(f"{self.store.root}: case {case} is unlabelled; it cannot be scored")
        return {"image": torch.from_numpy(image[None]), "label": torch.from_numpy(label[None].astype(np.float32)),
                "case": case}  # fmt: skip


def pretrain_case_ids(store: Any, cfg: RunConfig) -> np.ndarray:
    """The unlabelled volumes (plus the labelled ones if ``pretrain.include_labelled``), checked to fit."""
    assert cfg.pretrain is not None
    cases = list(store.unlabelled_cases()) + (list(store.labelled_cases()) if cfg.pretrain.include_labelled else [])
    if not cases:
        raise DataError(f"data store {cfg.data.store} has no unlabelled cases to pretrain on")
    check_volumes_fit(store, cases, cfg.data.crop)
    return case_ids(store, cases)


def pretrain_loader(
    store: Any, ids: np.ndarray, cfg: RunConfig, epoch: int, workers: int, ranks: Ranks | None = None
) -> DataLoader:
    """Batches of cube pairs (one pair per volume), incomplete last batch dropped, as in 2D (and, as there,
    this process's share of each global batch in a multi-GPU job)."""
    from ioussl.science.seeds import derived_seed

    assert cfg.sampler is not None and cfg.pretrain is not None
    sampler = cfg.sampler
    dataset = PretrainCubeBatches(
        store, ids, cfg.data.crop, sampler.i_min, sampler.i_max, random_crop=sampler.random_crop, mode=sampler.mode,
        seed=derived_seed(cfg.seed, epoch, "pairs", ranks.rank if ranks else 0),
    )  # fmt: skip
    order = derived_seed(cfg.seed, epoch, "order")
    # Shuffled, drop_last (floor(volumes / batch) steps); the dataset hands over whole batches.
    return _loader(dataset, cfg.pretrain.batch_size, True, True, workers, order, keep_batch,
                   torch.cuda.is_available(), ranks)  # fmt: skip


def pretrain_feed(cfg: RunConfig, runtime: Any) -> Callable[[dict, int, int], tuple[Tensor, Tensor]]:
    """(batch, epoch, step) -> both views on the device, dequantised and augmented there (3D ops)."""
    from ioussl.science.augment.batchaug import AugmentSpec
    from ioussl.science.augment.batchaug3d import StepAugment3d
    from ioussl.science.data.store import dequantise_tensor

    assert cfg.pretrain is not None
    spec = AugmentSpec.of(cfg.pretrain.augment)  # the run's own spec
    augment = StepAugment3d(spec, cfg.seed, runtime.device, runtime.rank)

    def feed(batch: dict, epoch: int, step: int) -> tuple[Tensor, Tensor]:
        views = augment.views(dequantise_tensor(batch["views"], runtime.device), epoch, step)
        pairs = views.shape[0] // 2
        return runtime.to_device(views[:pairs]), runtime.to_device(views[pairs:])

    return feed


def finetune_loader(
    store: Any, ids: np.ndarray, cfg: RunConfig, epoch: int, workers: int, ranks: Ranks | None = None
) -> DataLoader:
    """Batches of ``batch_size`` volumes x ``crops_per_slice`` cubes (pos/neg-balanced centres); this
    process's share of them in a multi-GPU job."""
    from ioussl.science.seeds import derived_seed

    assert cfg.finetune is not None
    ft = cfg.finetune
    seed = derived_seed(cfg.seed, epoch, "crops", ranks.rank if ranks else 0)
    dataset = FinetuneCubeDataset(store, ids, cfg.data.crop, crops_per_slice=ft.crops_per_slice, pos=ft.pos,
                                  neg=ft.neg, seed=seed)  # fmt: skip
    order = derived_seed(cfg.seed, epoch, "order")
    return make_finetune_loader(dataset, ft.batch_size, workers, order, torch.cuda.is_available(), ranks)


def finetune_feed(cfg: RunConfig, runtime: Any) -> Callable[[dict, int, int], tuple[Tensor, Tensor]]:
    """(batch, epoch, step) -> cubes and labels on the device, augmented there (geometry on both)."""
    from ioussl.science.augment.batchaug import AugmentSpec
    from ioussl.science.augment.batchaug3d import StepAugment3d

    assert cfg.finetune is not None
    spec = AugmentSpec.of(cfg.finetune.augment)  # the run's own spec
    augment = StepAugment3d(spec, cfg.seed, runtime.device, runtime.rank)

    def feed(batch: dict, epoch: int, step: int) -> tuple[Tensor, Tensor]:
        image = batch["image"].to(runtime.device, non_blocking=True)
        label = batch["label"].to(runtime.device, non_blocking=True)
        image, label = augment.crops(image, label, epoch, step)
        return runtime.to_device(image), runtime.to_device(label)

    return feed


def val_loader(store: Any, ids: np.ndarray, workers: int) -> DataLoader:
    """Whole volumes one at a time, in store order."""
    return make_val_loader(ValVolumeDataset(store, ids), batch_size=1, num_workers=workers)


def evaluate_volumes(
    model: nn.Module, loader: Iterable[dict], runtime: Any, window: dict[str, Any], num_classes: int
) -> Any:
    """Sliding-window inference over whole volumes with cubes of ``window["roi"]``; 3D DSC counts per case."""
    from monai.inferers import sliding_window_inference

    from ioussl.science.runtime import eval_mode
    from ioussl.science.train.engine import Evaluation

    result = Evaluation()
    with eval_mode(model):
        for batch in loader:
            image, label = runtime.to_device(batch["image"]), batch["label"]
            with runtime.autocast():
                logits = cast(Tensor, sliding_window_inference(  # a tensor for a tensor-returning model
                    image, (window["roi"],) * SPATIAL_DIMS, window["sw_batch_size"], model, overlap=window["overlap"]
                ))  # fmt: skip
            pred = logits.argmax(dim=1).cpu()
            for i, case in enumerate(batch["case"]):
                result.add_counts(case, pred[i], label[i, 0], num_classes)
    return result
