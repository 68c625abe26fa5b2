"""IoU-constrained positive pairs of crops: exact uniform sampling, and the thesis' Algorithm 1.

Pure NumPy (no torch, no MONAI), so it is cheap to test and to vectorise over a batch.

Boxes are start corners, one int per axis in the image's axis order; every crop of a pair has the same
shape. Two equal boxes overlap by ``ov_k = max(0, c_k - |o_k|)`` on axis k, where ``o = start2 - start1``,
so the IoU ``I / (2V - I)`` (``I = prod ov_k``, ``V = prod c_k``) depends only on the offsets
(thesis §3.2, Algorithm 1; thesis protocol notes §2). Touching boxes have IoU 0, as in the thesis code.

Exact mode ("exact"): box 1 is uniform over the start positions that admit at least one box 2 with IoU in
[i_min, i_max] (bounds inclusive); given box 1, box 2 is uniform over those box-2 positions. It is
implemented as rejection sampling from a tight proposal (a few vectorised rounds, each exactly uniform over
the accepted set), followed for the rare stragglers by an exact count over the per-axis overlap grid, which
also detects the box-1 positions without any valid box 2 (only those are redrawn). When no pair exists at
all for an image, the pair is two independent uniform crops with ``fallback=True``: flagged, never silent.

Algorithm 1 mode ("algorithm1") reproduces the thesis' retry loop (r1 inner draws of box 2 around box 1,
r2 draws of box 1) including its fallback to the last rejected pair, for comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ioussl.errors import ConfigError
from ioussl.science.sampling._algorithm1 import sample_algorithm1
from ioussl.science.sampling._exact import sample_exact
from ioussl.science.sampling._geometry import (
    _as_shape,
    _check_fits,
    achievable_iou_range,
    box_iou,
    feasible,
    pair_exists,
)

__all__ = [
    "CropPair", "achievable_iou_range", "box_iou", "check_interval_feasible", "feasible_mask", "pair_exists",
    "sample_crop_pair", "sample_crop_pairs",
]  # fmt: skip

Mode = Literal["exact", "algorithm1"]


@dataclass(frozen=True)
class CropPair:
    """Two crops of one image: start corners, their IoU and whether the interval had to be given up."""

    box1: np.ndarray
    box2: np.ndarray
    iou: float
    fallback: bool


def check_interval_feasible(
    image_shape: Sequence[int], crop_shape: Sequence[int], i_min: float, i_max: float
) -> None:
    """Raise ConfigError when no two crops of this image have an IoU in [i_min, i_max].

    Raises:
        ConfigError: the interval is malformed, or cannot be met for this crop and image size.
        DataError: the image is smaller than the crop.
    """
    image = _as_shape(image_shape, "image shape")
    crop = _as_shape(crop_shape, "crop shape")
    if not (0.0 <= i_min <= i_max <= 1.0):
        raise ConfigError(f"IoU interval [{i_min}, {i_max}] must satisfy 0 <= i_min <= i_max <= 1")
    if not pair_exists(image, crop, float(i_min), float(i_max)):
        lowest, _ = achievable_iou_range(image, crop)
        raise ConfigError(
            f"IoU interval [{i_min}, {i_max}] cannot be met with crop {crop} on image {image}: "
            f"no two crops have an IoU in it (achievable IoUs span [{lowest:.4g}, 1] with gaps); "
            f"use a larger image, a smaller crop or another interval"
        )


def feasible_mask(
    image_shapes: np.ndarray | Sequence[Sequence[int]], crop_shape: Sequence[int], i_min: float, i_max: float
) -> np.ndarray:
    """Per image shape ([n, d]): does any pair of crops have an IoU in [i_min, i_max]?

    A study should be rejected when no slice qualifies (``check_interval_feasible`` on the largest shape
    says why) and may warn when only some do: the others give flagged fallback pairs.
    """
    shapes = np.asarray(image_shapes, dtype=np.int64).reshape(-1, len(crop_shape))
    crop = np.asarray(_as_shape(crop_shape, "crop shape"), dtype=np.int64)
    too_small = np.any(shapes < crop, axis=1)
    if np.any(too_small):
        _check_fits(tuple(shapes[np.argmax(too_small)].tolist()), tuple(crop.tolist()))
    return feasible(shapes, crop, float(i_min), float(i_max))


def sample_crop_pair(
    rng: np.random.Generator,
    image_shape: Sequence[int],
    crop_shape: Sequence[int],
    i_min: float,
    i_max: float,
    mode: Mode = "exact",
    r1: int = 30,
    r2: int = 4,
) -> CropPair:
    """One pair of crops whose IoU lies in [i_min, i_max] (see the module docstring for the modes)."""
    s1, s2, ious, fallback = sample_crop_pairs(rng, image_shape, crop_shape, i_min, i_max, 1, mode, r1, r2)
    return CropPair(box1=s1[0], box2=s2[0], iou=float(ious[0]), fallback=bool(fallback[0]))


def sample_crop_pairs(
    rng: np.random.Generator,
    image_shape: Sequence[int] | np.ndarray,
    crop_shape: Sequence[int],
    i_min: float,
    i_max: float,
    n: int,
    mode: Mode = "exact",
    r1: int = 30,
    r2: int = 4,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """n pairs at once, vectorised.

    Args:
        rng: the only source of randomness (same state, same pairs).
        image_shape: one shape for all pairs, or an int array [n, d] with one shape per pair.
        crop_shape: the crop's shape (d ints); square, rectangular, 2D or 3D.
        i_min, i_max: the IoU interval, bounds inclusive.
        n: number of pairs.
        mode: "exact" (uniform, see module docstring) or "algorithm1" (the thesis' retry loop).
        r1, r2: Algorithm 1's inner and outer retries (ignored by "exact").

    Returns:
        starts1 [n, d], starts2 [n, d] (int64), ious [n] (float64), fallback [n] (bool).
    """
    crop = np.asarray(_as_shape(crop_shape, "crop shape"), dtype=np.int64)
    shapes = _per_pair_shapes(image_shape, crop.size, n)
    if not (0.0 <= i_min <= i_max <= 1.0):
        raise ConfigError(f"IoU interval [{i_min}, {i_max}] must satisfy 0 <= i_min <= i_max <= 1")
    too_small = np.any(shapes < crop, axis=1)
    if np.any(too_small):
        _check_fits(tuple(shapes[np.argmax(too_small)].tolist()), tuple(crop.tolist()))
    if mode == "exact":
        return sample_exact(rng, shapes, crop, float(i_min), float(i_max))
    if mode == "algorithm1":
        return sample_algorithm1(rng, shapes, crop, float(i_min), float(i_max), r1, r2)
    raise ConfigError(f"sampler mode must be 'exact' or 'algorithm1', got {mode!r}")


def _per_pair_shapes(image_shape: Sequence[int] | np.ndarray, ndim: int, n: int) -> np.ndarray:
    shapes = np.asarray(image_shape, dtype=np.int64)
    if shapes.ndim == 1:
        shapes = np.broadcast_to(shapes, (n, shapes.size))
    if shapes.shape != (n, ndim):
        raise ConfigError(f"image shapes {shapes.shape} do not match {n} pairs of {ndim}-D crops")
    if np.any(shapes <= 0):
        raise ConfigError("image shapes must be positive")
    return shapes
