"""The thesis' Algorithm 1 (thesis §3.2; thesis protocol notes §2), vectorised, for comparison only.

Per pair: draw box 1 uniformly; draw box 2 up to r1 times (around box 1 when i_min > 0: inside box 1
grown by the crop on every side, clipped to the image; anywhere when i_min == 0) and keep the first whose
IoU is in [i_min, i_max]; after r1 failures draw a new box 1, at most r2 times. When every attempt fails,
the reference code returns the last box 1 with the last rejected box 2; so do we, but flagged.
The r1 draws of one round are made at once; the first success is kept, so the outcome law is the same.
"""

from __future__ import annotations

import numpy as np


def sample_algorithm1(
    rng: np.random.Generator,
    shapes: np.ndarray,
    crop: np.ndarray,
    i_min: float,
    i_max: float,
    r1: int,
    r2: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """See ``sampler.sample_crop_pairs``; shapes is [n, d], crop is [d]."""
    n, d = shapes.shape
    volume = float(np.prod(crop))
    starts1 = np.zeros((n, d), dtype=np.int64)
    starts2 = np.zeros((n, d), dtype=np.int64)
    pending = np.arange(n)
    for _ in range(max(r2, 1)):
        if pending.size == 0:
            break
        limit = shapes[pending] - crop  # largest start per axis
        s1 = (rng.random((pending.size, d)) * (limit + 1)).astype(np.int64)
        if i_min > 0:  # box 1 grown by the crop on every side, clipped: starts in [s1 - c, s1 + c]
            low, high = np.maximum(s1 - crop, 0), np.minimum(s1 + crop, limit)
        else:
            low, high = np.zeros_like(s1), limit
        width = (high - low + 1)[:, None, :]
        s2 = low[:, None, :] + (rng.random((pending.size, max(r1, 1), d)) * width).astype(np.int64)
        inter = np.prod(np.maximum(crop - np.abs(s2 - s1[:, None, :]), 0), axis=2).astype(np.float64)
        iou = inter / (2.0 * volume - inter)
        ok = (iou >= i_min) & (iou <= i_max)
        hit = ok.any(axis=1)
        chosen = np.where(hit, ok.argmax(axis=1), s2.shape[1] - 1)  # else the last rejected draw
        starts1[pending] = s1
        starts2[pending] = s2[np.arange(pending.size), chosen]
        pending = pending[~hit]
    offsets = np.abs(starts2 - starts1)
    inter = np.prod(np.maximum(crop - offsets, 0), axis=1).astype(np.float64)
    fallback = np.zeros(n, dtype=bool)
    fallback[pending] = True
    return starts1, starts2, inter / (2.0 * volume - inter), fallback
