"""IoU geometry of two equal crops of one image, shared by the sampler and its engines (pure NumPy).

Two equal boxes with start offset ``o`` overlap by ``max(0, c_k - |o_k|)`` on axis k, so their IoU
``I / (2V - I)`` depends only on the offsets; touching boxes have IoU 0, as in the thesis code. Every
acceptance test and every feasibility answer goes through the formulas here, so they cannot disagree.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from ioussl.errors import ConfigError, DataError


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
    return float(_iou_from_intersection(np.asarray(smallest), volume)), 1.0


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


def feasible(shapes: np.ndarray, crop: np.ndarray, i_min: float, i_max: float) -> np.ndarray:
    """Per image shape ([n, d] ints, at least the crop [d]): does any pair have an IoU in [i_min, i_max]?"""
    crop_t = tuple(crop.tolist())
    if shapes.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    if i_max >= 1.0:  # two identical crops (IoU 1) always exist
        return np.ones(shapes.shape[0], dtype=bool)
    # Feasibility only grows with the image along each axis: if the batch's componentwise smallest
    # shape admits a pair, every shape does (the common case: one cached lookup).
    if pair_exists(tuple(shapes.min(axis=0).tolist()), crop_t, i_min, i_max):
        return np.ones(shapes.shape[0], dtype=bool)
    if np.all(shapes == shapes[0]):
        return np.zeros(shapes.shape[0], dtype=bool)
    # One int64 key per shape: np.unique on 1-D keys is much faster than on rows.
    keys = np.ravel_multi_index(shapes.T, shapes.max(axis=0) + 1)
    unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    answers = np.array([pair_exists(tuple(shapes[i].tolist()), crop_t, i_min, i_max) for i in first])
    return answers[inverse.ravel()]
