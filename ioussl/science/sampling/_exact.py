"""Exact uniform IoU-constrained pair sampling, vectorised (the engine behind ``sampler`` mode "exact").

Why it is exact: given box 1, each rejection round draws box-2 offsets uniformly from a box in offset
space that contains every valid offset and accepts those whose intersection lies in [I_lo, I_hi]; an
accepted draw is therefore uniform over the valid positions. Pairs still pending after a few rounds get
the exact distribution directly: the valid positions are counted per combination of per-axis overlaps
(the IoU depends only on them), a combination is drawn in proportion to its count, then an offset with
those overlaps uniformly. IoU exactly 0 ([0, 0]) is drawn directly from disjoint slabs, no rejection.
A mixture of exact-uniform stages is exact-uniform. Box 1 is redrawn only when the count (or the
proposal box) is empty, i.e. when no box 2 exists for it.
"""

from __future__ import annotations

import functools

import numpy as np

from ioussl.science.sampling._geometry import _intersection_bounds, feasible

_PROPOSAL_ROUNDS = (2, 8, 32)  # candidates per pending pair in each rejection round before the exact path

_MAX_BOX1_DRAWS = 100_000  # a feasible image always has a valid box 1; this only guards a bug
_EXACT_CHUNK_CELLS = 4_000_000  # grid cells per chunk in the exact path (memory bound)


def sample_exact(
    rng: np.random.Generator, shapes: np.ndarray, crop: np.ndarray, i_min: float, i_max: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """See ``sampler.sample_crop_pairs``; shapes is [n, d], crop is [d]."""
    n, d = shapes.shape
    lo_i, hi_i = _intersection_bounds(tuple(crop.tolist()), i_min, i_max)
    possible = feasible(shapes, crop, i_min, i_max)
    starts1 = np.zeros((n, d), dtype=np.int64)
    starts2 = np.zeros((n, d), dtype=np.int64)
    span = shapes - crop + 1  # number of valid start positions per axis
    if not possible.all():  # no pair exists for these images: independent uniform crops, flagged
        bad = ~possible
        starts1[bad] = _uniform_starts(rng, span[bad])
        starts2[bad] = _uniform_starts(rng, span[bad])
    pending = np.flatnonzero(possible)
    reach = _proposal_reach(crop, lo_i)
    for _ in range(_MAX_BOX1_DRAWS):
        if pending.size == 0:
            break
        starts1[pending] = _uniform_starts(rng, span[pending])
        if hi_i == 0:  # disjoint crops only: sampled directly, no rejection
            pending = _disjoint_box2(rng, pending, starts1, starts2, shapes, crop)
        else:
            pending = _draw_box2(rng, pending, starts1, starts2, shapes, crop, reach, lo_i, hi_i)
    else:  # pragma: no cover - unreachable for a feasible image
        raise RuntimeError("exact sampler did not terminate; this is a bug")
    offsets = np.abs(starts2 - starts1)
    inter = np.prod(np.maximum(crop - offsets, 0), axis=1).astype(np.float64)
    volume = float(np.prod(crop))
    return starts1, starts2, inter / (2.0 * volume - inter), ~possible


def _uniform_starts(rng: np.random.Generator, span: np.ndarray) -> np.ndarray:
    # floor(u * span) is uniform on 0..span-1 (float64 has ample resolution for image sides).
    return (rng.random(span.shape) * span).astype(np.int64)


def _proposal_reach(crop: np.ndarray, lo_i: int) -> np.ndarray:
    """Largest |offset| per axis a valid pair can have: overlap_k >= I_lo / (V / c_k) when I_lo > 0."""
    if lo_i <= 0:
        return np.full(crop.shape, np.iinfo(np.int64).max // 4)
    others = np.prod(crop) // crop
    min_overlap = -(-lo_i // others)  # ceil
    return crop - min_overlap


def _draw_box2(rng, pending, starts1, starts2, shapes, crop, reach, lo_i, hi_i) -> np.ndarray:
    """Fill starts2 for the pending pairs; return those whose box 1 admits no box 2 (to redraw)."""
    s1 = starts1[pending]
    low = np.maximum(-s1, -reach)  # offset range [low, high] of the proposal, per pair and axis
    high = np.minimum(shapes[pending] - crop - s1, reach)
    empty = np.any(low > high, axis=1)  # the proposal box holds every valid offset: none exists
    redraw = [pending[empty]]
    alive = np.flatnonzero(~empty)
    for k in _PROPOSAL_ROUNDS:
        if alive.size == 0:
            break
        width = (high[alive] - low[alive] + 1)[:, None, :]
        offsets = low[alive][:, None, :] + (rng.random((alive.size, k, crop.size)) * width).astype(np.int64)
        inter = np.prod(np.maximum(crop - np.abs(offsets), 0), axis=2)
        ok = (inter >= lo_i) & (inter <= hi_i)
        hit = ok.any(axis=1)
        first = ok.argmax(axis=1)
        rows = alive[hit]
        starts2[pending[rows]] = s1[rows] + offsets[hit, first[hit]]
        alive = alive[~hit]
    if alive.size:
        found = _exact_box2(rng, pending[alive], starts1, starts2, shapes, crop, lo_i, hi_i)
        redraw.append(pending[alive][~found])
    return np.concatenate(redraw)


def _disjoint_box2(rng, pending, starts1, starts2, shapes, crop) -> np.ndarray:
    """IoU exactly 0: box 2 uniform over the in-image offsets with |o_k| >= c_k on some axis k.

    That set is the offset box minus its overlapping core, split into disjoint slabs: slab k has axes
    before k inside the core, axis k outside it, axes after k anywhere. A slab is drawn in proportion to
    its size, then a uniform offset inside it. Returns the pairs whose box 1 admits no box 2.
    """
    s1 = starts1[pending]
    low, high = -s1, shapes[pending] - crop - s1
    core_low, core_high = np.maximum(low, 1 - crop), np.minimum(high, crop - 1)
    n_all = (high - low + 1).astype(np.float64)
    n_in = (core_high - core_low + 1).astype(np.float64)
    n_neg, n_pos = np.maximum(-crop - low + 1, 0), np.maximum(high - crop + 1, 0)
    before = np.cumprod(np.concatenate([np.ones((len(s1), 1)), n_in[:, :-1]], axis=1), axis=1)
    after = np.cumprod(np.concatenate([np.ones((len(s1), 1)), n_all[:, :0:-1]], axis=1), axis=1)[:, ::-1]
    slabs = before * (n_neg + n_pos) * after  # [m, d]
    cdf = np.cumsum(slabs, axis=1)
    found = cdf[:, -1] > 0
    slab = (cdf <= (rng.random(len(s1)) * cdf[:, -1])[:, None]).sum(axis=1)[:, None]
    u = rng.random(s1.shape)
    inside = core_low + (u * n_in).astype(np.int64)
    anywhere = low + (u * n_all).astype(np.int64)
    r = (u * (n_neg + n_pos)).astype(np.int64)
    outside = np.where(r < n_neg, low + r, crop + r - n_neg)
    axis = np.arange(crop.size)[None, :]
    offsets = np.where(axis < slab, inside, np.where(axis == slab, outside, anywhere))
    starts2[pending[found]] = s1[found] + offsets[found]
    return pending[~found]


def _overlap_counts(s1: np.ndarray, side: np.ndarray, c: int) -> np.ndarray:
    """[m, c+1]: how many box-2 starts on this axis give overlap u with box 1, for u = 0..c."""
    low, high = -s1, side - c - s1  # offset range, low <= 0 <= high
    u = np.arange(c + 1)
    shift = (c - u)[None, :]
    counts = (shift <= high[:, None]).astype(np.int64) + (-shift >= low[:, None])
    counts[:, c] = 1  # offset 0, counted once
    counts[:, 0] = np.maximum(high - c + 1, 0) + np.maximum(-c - low + 1, 0)  # |offset| >= c
    return counts


@functools.lru_cache(maxsize=64)
def _last_axis_intervals(crop: tuple[int, ...], lo_i: int, hi_i: int) -> tuple[np.ndarray, np.ndarray]:
    """For each combination of overlaps on all axes but the last (flattened), the valid overlaps on the
    last axis form one interval [a, b] (empty: a = 0, b = -1), since the product must lie in [I_lo, I_hi]."""
    product = np.ones(1, dtype=np.int64)
    for c in crop[:-1]:
        product = np.multiply.outer(product, np.arange(c + 1)).ravel()
    safe = np.maximum(product, 1)
    a = np.where(product > 0, -(-lo_i // safe), 0)
    b = np.where(product > 0, np.minimum(hi_i // safe, crop[-1]), crop[-1] if lo_i == 0 else -1)
    empty = a > b
    return np.where(empty, 0, a), np.where(empty, -1, b)


def _exact_box2(rng, rows, starts1, starts2, shapes, crop, lo_i, hi_i) -> np.ndarray:
    """Exact conditional draw of box 2 for ``rows``; returns which rows had any valid box 2."""
    cells = int(np.prod(crop[:-1] + 1))
    chunk = max(1, _EXACT_CHUNK_CELLS // cells)
    found = np.zeros(rows.size, dtype=bool)
    for begin in range(0, rows.size, chunk):
        part = rows[begin : begin + chunk]
        found[begin : begin + chunk] = _exact_chunk(rng, part, starts1, starts2, shapes, crop, lo_i, hi_i)
    return found


def _exact_chunk(rng, rows, starts1, starts2, shapes, crop, lo_i, hi_i) -> np.ndarray:
    """O(prod of c_k + 1 over all but the last axis) per pair (O(c) in 2D).

    The weight of a combination of leading overlaps is the product of their per-axis counts times the
    number of last-axis starts whose overlap falls in that combination's interval (cumulative counts).
    """
    s1, sides = starts1[rows], shapes[rows]
    m, d, ar = rows.size, crop.size, np.arange(rows.size)
    a, b = _last_axis_intervals(tuple(crop.tolist()), lo_i, hi_i)
    weights = np.ones((m, 1))
    for k in range(d - 1):  # outer product of the leading axes' counts, flattened C-order
        counts = _overlap_counts(s1[:, k], sides[:, k], int(crop[k])).astype(np.float64)
        weights = (weights[:, :, None] * counts[:, None, :]).reshape(m, -1)
    c_last = int(crop[-1])
    cum = np.zeros((m, c_last + 2))
    np.cumsum(_overlap_counts(s1[:, -1], sides[:, -1], c_last), axis=1, out=cum[:, 1:])
    weights *= cum[:, b + 1] - cum[:, a]
    cdf = np.cumsum(weights, axis=1)
    found = cdf[:, -1] > 0
    cell = np.minimum((cdf <= (rng.random(m) * cdf[:, -1])[:, None]).sum(axis=1), cdf.shape[1] - 1)
    leading = np.unravel_index(cell, tuple(int(c) + 1 for c in crop[:-1]))
    low_cum, high_cum = cum[ar, a[cell]], cum[ar, b[cell] + 1]
    target = low_cum + rng.random(m) * (high_cum - low_cum)
    last = np.minimum((cum[:, 1:] <= target[:, None]).sum(axis=1), c_last)
    overlaps = [*leading, last]
    per_axis = [_offset_with_overlap(rng, overlaps[k], s1[:, k], sides[:, k], int(crop[k])) for k in range(d)]
    offsets = np.stack(per_axis, axis=1)
    starts2[rows[found]] = s1[found] + offsets[found]
    return found


def _offset_with_overlap(rng, u: np.ndarray, s1: np.ndarray, side: np.ndarray, c: int) -> np.ndarray:
    """A uniform in-range offset whose overlap with box 1 is u (per pair)."""
    low, high = -s1, side - c - s1
    shift = c - u
    pos_ok, neg_ok = shift <= high, -shift >= low
    choose_pos = pos_ok & (~neg_ok | (rng.random(u.size) < 0.5))
    partial = np.where(choose_pos, shift, -shift)
    n_neg = np.maximum(-c - low + 1, 0)  # offsets in [low, -c]
    n_pos = np.maximum(high - c + 1, 0)  # offsets in [c, high]
    r = (rng.random(u.size) * np.maximum(n_neg + n_pos, 1)).astype(np.int64)
    apart = np.where(r < n_neg, low + r, c + r - n_neg)
    return np.where(u == c, 0, np.where(u == 0, apart, partial))
