"""How far the thesis' Algorithm 1 is from the exact sampler: the share of pairs that differ, computed exactly.

When they succeed, both modes draw box 2 uniformly among the valid positions given box 1 (Algorithm 1 draws
inside box 1 grown by the crop, which holds every valid position when i_min > 0, or anywhere when i_min = 0,
and keeps the first valid draw). They differ in two ways:

- box 1's law: exact mode draws it uniformly among the positions that admit a box 2; Algorithm 1 draws it
  uniformly among all positions and keeps it with probability s = 1 - (1 - q)^r1 (q: the valid share of its
  proposal window), else draws again, at most r2 times;
- Algorithm 1's fallbacks (every one of the r1 x r2 draws failed): pairs outside the interval.

So the total-variation distance between the two laws of (box 1, box 2), the smallest share of pairs that must
differ under any coupling of the two samplers, is 1/2 (sum over box 1 of |a - e| + F), with a and e the
box-1 laws of Algorithm 1's successes and of exact mode and F Algorithm 1's fallback rate. Over a dataset
(disjoint box spaces per slice) it is the mean over its slices. 2D square crops, as the thesis.
"""

from __future__ import annotations

import numpy as np

from ioussl.science.sampling._geometry import _intersection_bounds


def _overlap_counts(side: int, crop: int) -> np.ndarray:
    """[start1, overlap]: how many box-2 starts have each per-axis overlap (0..crop) with a box-1 start."""
    starts = np.arange(side - crop + 1)
    offsets = np.abs(starts[None, :] - starts[:, None])
    overlap = np.maximum(crop - offsets, 0)
    return np.stack([(overlap == o).sum(axis=1) for o in range(crop + 1)], axis=1)


def _window_sizes(side: int, crop: int, around_box1: bool) -> np.ndarray:
    """Per box-1 start: the number of box-2 starts Algorithm 1 proposes along one axis."""
    limit = side - crop
    starts = np.arange(limit + 1)
    if not around_box1:
        return np.full(starts.size, limit + 1)
    return np.minimum(starts + crop, limit) - np.maximum(starts - crop, 0) + 1


def _valid_counts(image_shape: tuple[int, int], crop: int, i_min: float, i_max: float) -> np.ndarray:
    """[start y, start x]: how many box-2 positions give an IoU in the interval, as the sampler rounds it."""
    height, width = image_shape
    lo, hi = _intersection_bounds((crop, crop), i_min, i_max)
    overlaps = np.arange(crop + 1)
    product = overlaps[:, None] * overlaps[None, :]
    allowed = ((product >= lo) & (product <= hi)).astype(np.float64)
    return _overlap_counts(height, crop) @ allowed @ _overlap_counts(width, crop).T


def box1_law(
    image_shape: tuple[int, int], crop: int, i_min: float, i_max: float, r1: int = 30, r2: int = 4
) -> np.ndarray:
    """[start y, start x]: probability that Algorithm 1 returns a valid pair with this box 1 (sums to 1 - F)."""
    height, width = image_shape
    around = i_min > 0
    window = np.outer(_window_sizes(height, crop, around), _window_sizes(width, crop, around))
    keep = 1.0 - (1.0 - _valid_counts(image_shape, crop, i_min, i_max) / window) ** r1  # found within r1 draws
    fail = 1.0 - keep.mean()  # one round fails
    return keep / keep.size * sum(fail**k for k in range(r2))


def exact_box1_law(image_shape: tuple[int, int], crop: int, i_min: float, i_max: float) -> np.ndarray:
    """[start y, start x]: exact mode's box 1, uniform over the positions that admit a box 2."""
    admits = _valid_counts(image_shape, crop, i_min, i_max) > 0
    return admits / max(1, int(np.count_nonzero(admits)))


def mode_difference(
    image_shape: tuple[int, int], crop: int, i_min: float, i_max: float, r1: int = 30, r2: int = 4
) -> dict[str, float] | None:
    """Total-variation distance between the pair laws of modes "algorithm1" and "exact" on one image.

    Returns:
        ``tv`` (share of pairs that differ), ``fallback`` (Algorithm 1's fallback rate) and ``box1_tv`` (the
        part due to box 1's law), or None when no pair exists (both modes then fall back on every pair).
    """
    exact = exact_box1_law(image_shape, crop, i_min, i_max)
    if not exact.any():
        return None
    algorithm1 = box1_law(image_shape, crop, i_min, i_max, r1, r2)
    fallback = max(0.0, 1.0 - float(algorithm1.sum()))
    box1_tv = 0.5 * float(np.abs(algorithm1 - exact).sum())
    return {"tv": box1_tv + 0.5 * fallback, "fallback": fallback, "box1_tv": box1_tv}
