"""MONAI transforms: the IoU pair crop and the thesis' augmentations (thesis §3.3, §4.2; protocol §3, §4).

``RandIoUCropPaird`` draws one pair of boxes per call (``sampler.sample_crop_pair``) from its own seeded
state and applies the same two boxes to every key, so image and label views stay aligned.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, cast

import numpy as np
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    MapTransform,
    RandCropByPosNegLabeld,
    RandFlip,
    RandFlipd,
    RandGaussianNoise,
    RandGaussianNoised,
    RandGaussianSmooth,
    RandGaussianSmoothd,
    Randomizable,
    RandRotate90,
    RandRotate90d,
    RandScaleIntensity,
    RandScaleIntensityd,
    RandShiftIntensity,
    RandShiftIntensityd,
    RandZoom,
    RandZoomd,
)

from ioussl.config import AugmentConfig, SamplerMode
from ioussl.science.augment.batchaug import FINETUNE, PRETRAIN_VIEW, AugmentSpec
from ioussl.science.sampling.sampler import CropPair, sample_crop_pair


class RandIoUCropPaird(Randomizable, MapTransform):
    """Cut two crops whose IoU lies in [i_min, i_max] from every key (channel-first arrays).

    Writes ``view1``/``view2`` for a single key, ``<key>_view1``/``<key>_view2`` for several, plus
    ``iou`` and ``fallback`` (True when the image admits no pair in the interval; never silent).

    Args:
        keys: keys to crop, all with the same spatial shape.
        crop_size: one side (square/cube) or one size per spatial axis.
        i_min, i_max: IoU interval, bounds inclusive; random_crop=True means [0, 1] (two independent crops).
        mode: "exact" (uniform) or "algorithm1" (the thesis' retry loop, r1/r2).
        delete_keys: drop the source arrays from the output (the reference code does, except in debug).
    """

    def __init__(
        self,
        keys: KeysCollection,
        crop_size: int | Sequence[int],
        i_min: float,
        i_max: float,
        random_crop: bool = False,
        mode: str = "exact",
        r1: int = 30,
        r2: int = 4,
        delete_keys: bool = True,
    ) -> None:
        MapTransform.__init__(self, keys)
        self.crop_size = crop_size
        self.i_min, self.i_max = (0.0, 1.0) if random_crop else (float(i_min), float(i_max))
        self.mode, self.r1, self.r2 = mode, r1, r2
        self.delete_keys = delete_keys
        self.pair: CropPair | None = None

    def randomize(self, spatial_shape: Sequence[int]) -> None:
        crop = _crop_shape(self.crop_size, len(spatial_shape))
        rng = np.random.default_rng(self.R.randint(0, 2**31 - 1))
        self.pair = sample_crop_pair(
            rng, spatial_shape, crop, self.i_min, self.i_max, mode=cast(SamplerMode, self.mode), r1=self.r1, r2=self.r2
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        keys = list(self.key_iterator(out))
        self.randomize(out[keys[0]].shape[1:])
        assert self.pair is not None
        crop = _crop_shape(self.crop_size, len(self.pair.box1))
        for key in keys:
            names = ("view1", "view2") if len(keys) == 1 else (f"{key}_view1", f"{key}_view2")
            for name, start in zip(names, (self.pair.box1, self.pair.box2), strict=True):
                region = (slice(None),) + tuple(
                    slice(int(s), int(s) + c) for s, c in zip(start, crop, strict=True)
                )
                out[name] = out[key][region]
            if self.delete_keys:
                del out[key]
        out["iou"], out["fallback"] = self.pair.iou, self.pair.fallback
        return out


def _crop_shape(crop_size: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    return (int(crop_size),) * ndim if isinstance(crop_size, int | np.integer) else tuple(crop_size)


def pretrain_view_augment(spatial_dims: int = 2, spec: AugmentConfig = PRETRAIN_VIEW) -> Compose:
    """One view's augmentations for SimSiam (``spec``: a run's ``pretrain.augment``; by default the reference
    order and laws, protocol §3): apply per view."""
    return Compose(monai_transforms(AugmentSpec.of(spec), spatial_dims=spatial_dims))


def monai_transforms(spec: AugmentSpec, keys: Sequence[str] | None = None, spatial_dims: int = 2) -> list:
    """The MONAI transforms of an augmentation spec, in its order: array transforms, or dictionary ones on
    ``keys`` (intensity ops on the first key only). The per-sample reference of ``batchaug``."""
    image_keys = None if keys is None else [keys[0]]
    sigma = {"sigma_x": spec.sigma_range, "sigma_y": spec.sigma_range}
    if spatial_dims == 3 or keys is None:  # the array transform draws a z sigma too (unused in 2D)
        sigma["sigma_z"] = spec.sigma_range
    makers = {
        "zoom": lambda: [_pick(RandZoom, RandZoomd, keys)(
            prob=spec.zoom_prob, min_zoom=spec.zoom_range[0], max_zoom=spec.zoom_range[1], mode="bilinear",
            padding_mode="constant", keep_size=True)],
        "flip": lambda: [_pick(RandFlip, RandFlipd, keys)(prob=spec.flip_prob, spatial_axis=axis)
                         for axis in range(spatial_dims)],
        "rot90": lambda: [_pick(RandRotate90, RandRotate90d, keys)(prob=spec.rot90_prob, max_k=3)],
        "scale": lambda: [_pick(RandScaleIntensity, RandScaleIntensityd, image_keys)(
            factors=spec.scale_range, prob=spec.scale_prob)],
        "shift": lambda: [_pick(RandShiftIntensity, RandShiftIntensityd, image_keys)(
            offsets=spec.shift_range, prob=spec.shift_prob)],
        "smooth": lambda: [_pick(RandGaussianSmooth, RandGaussianSmoothd, image_keys)(
            **sigma, prob=spec.smooth_prob)],
        "noise": lambda: [_pick(RandGaussianNoise, RandGaussianNoised, image_keys)(
            prob=spec.noise_prob, mean=0.0, std=spec.noise_std)],
    }  # fmt: skip
    return [transform for op in spec.order for transform in makers[op]()]


def _pick(array_cls: type, dict_cls: type, keys: Sequence[str] | None):
    return array_cls if keys is None else lambda **kwargs: dict_cls(list(keys), **kwargs)


def finetune_crop(
    crop: int, crops_per_slice: int = 2, pos: float = 1.0, neg: float = 1.0
) -> RandCropByPosNegLabeld:
    """RandCropByPosNegLabel as the reference code (centre on an organ with probability pos/(pos+neg))."""
    return RandCropByPosNegLabeld(
        keys=["image", "label"],
        label_key="label",
        spatial_size=(crop, crop),
        pos=pos,
        neg=neg,
        num_samples=crops_per_slice,
        allow_smaller=False,
    )


def finetune_augment(spec: AugmentConfig = FINETUNE) -> Compose:
    """The fine-tuning augmentations after cropping (``spec``: a run's ``finetune.augment``; by default the
    reference code's order and laws, protocol §4)."""
    return Compose(monai_transforms(AugmentSpec.of(spec), keys=("image", "label")))
