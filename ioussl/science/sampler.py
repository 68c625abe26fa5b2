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

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ioussl.errors import ConfigError, DataError

Mode = Literal["exact", "algorithm1"]
_PROPOSAL_ROUNDS = (2, 8, 32)  # candidates per pending pair in each rejection round before the exact path


@dataclass(frozen=True)
class CropPair:
    """Two crops of one image: start corners, their IoU and whether the interval had to be given up."""

    box1: np.ndarray
    box2: np.ndarray
    iou: float
    fallback: bool


def box_iou(start1: Sequence[int], start2: Sequence[int], crop_shape: Sequence[int]) -> float:
    """IoU of two equal-shape boxes given their start corners (touching boxes give 0, as the thesis)."""
    offsets = np.abs(np.asarray(start2, dtype=np.int64) - np.asarray(start1, dtype=np.int64))
    return float(_iou_from_offsets(offsets[None], np.asarray(crop_shape, dtype=np.int64))[0])


def _iou_from_offsets(abs_offsets: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """IoU for [..., d] absolute offsets; the one formula every acceptance test uses (float64)."""
    inter = np.prod(np.maximum(crop - abs_offsets, 0), axis=-1).astype(np.float64)
    volume = float(np.prod(crop))
    return inter / (2.0 * volume - inter)


def _iou_from_intersection(inter: np.ndarray, volume: int) -> np.ndarray:
    inter = np.asarray(inter, dtype=np.float64)
    return inter / (2.0 * float(volume) - inter)


def _as_shape(shape: Sequence[int], name: str) -> tuple[int, ...]:
    out = tuple(int(s) for s in shape)
    if not out or any(s <= 0 for s in out):
        raise ConfigError(f"{name} must be positive integers, got {tuple(shape)}")
    return out


def _check_fits(image_shape: tuple[int, ...], crop_shape: tuple[int, ...]) -> None:
    if len(image_shape) != len(crop_shape):
        raise ConfigError(f"crop {crop_shape} and image {image_shape} have different numbers of axes")
    if any(c > s for c, s in zip(crop_shape, image_shape, strict=True)):
        raise DataError(f"image of shape {image_shape} is smaller than the crop {crop_shape}")


@functools.lru_cache(maxsize=64)
def _intersection_bounds(crop_shape: tuple[int, ...], i_min: float, i_max: float) -> tuple[int, int]:
    """Smallest and largest integer intersection I whose IoU (same float formula) lies in [i_min, i_max]."""
    volume = int(np.prod(crop_shape))
    ious = _iou_from_intersection(np.arange(volume + 1), volume)  # increasing in I
    ok = np.flatnonzero((ious >= i_min) & (ious <= i_max))
    if ok.size == 0:
        return 1, 0  # empty
    return int(ok[0]), int(ok[-1])


def _achievable_overlaps(side: int, crop: int) -> np.ndarray:
    """Per-axis overlaps two crops of one image can have: c - |o| for |o| <= side - c, 0 if side >= 2c."""
    max_offset = side - crop
    overlaps = np.arange(max(crop - max_offset, 1), crop + 1)
    if max_offset >= crop:
        overlaps = np.concatenate([[0], overlaps])
    return overlaps


@functools.lru_cache(maxsize=4096)
def achievable_iou_range(image_shape: tuple[int, ...], crop_shape: tuple[int, ...]) -> tuple[float, float]:
    """Smallest and largest IoU any two crops of this image can have (the largest is always 1).

    The set of achievable IoUs has gaps; use :func:`pair_exists` for an exact feasibility answer.
    """
    image_shape, crop_shape = tuple(image_shape), tuple(crop_shape)
    _check_fits(image_shape, crop_shape)
    smallest = 1
    for side, crop in zip(image_shape, crop_shape, strict=True):
        smallest *= int(_achievable_overlaps(side, crop).min())
    volume = int(np.prod(crop_shape))
    return float(_iou_from_intersection(smallest, volume)), 1.0


@functools.lru_cache(maxsize=4096)
def pair_exists(
    image_shape: tuple[int, ...], crop_shape: tuple[int, ...], i_min: float, i_max: float
) -> bool:
    """Whether at least one pair of crops of this image has IoU in [i_min, i_max] (exact)."""
    _check_fits(image_shape, crop_shape)
    lo, hi = _intersection_bounds(crop_shape, float(i_min), float(i_max))
    if lo > hi:
        return False
    products = np.array([1], dtype=np.int64)
    for side, crop in zip(image_shape, crop_shape, strict=True):
        products = np.unique(np.multiply.outer(products, _achievable_overlaps(side, crop)).ravel())
    return bool(np.any((products >= lo) & (products <= hi)))


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
    from ioussl.science._exact import _feasible

    shapes = np.asarray(image_shapes, dtype=np.int64).reshape(-1, len(crop_shape))
    crop = np.asarray(_as_shape(crop_shape, "crop shape"), dtype=np.int64)
    too_small = np.any(shapes < crop, axis=1)
    if np.any(too_small):
        _check_fits(tuple(shapes[np.argmax(too_small)].tolist()), tuple(crop.tolist()))
    return _feasible(shapes, crop, float(i_min), float(i_max))


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
        from ioussl.science._exact import sample_exact

        return sample_exact(rng, shapes, crop, float(i_min), float(i_max))
    if mode == "algorithm1":
        from ioussl.science._algorithm1 import sample_algorithm1

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
