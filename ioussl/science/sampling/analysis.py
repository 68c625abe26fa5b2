"""The thesis' Figure 3.2 analysis: how often the two views of a pair share an organ, per IoU interval.

For each interval and pass, one pair is sampled per labelled slice; a pair counts when at least one view
shows an organ (pairs where both views are background only are excluded) and it shares an organ when
some organ label appears in both views. The thesis measured 0.21, 0.59, 0.80, 0.91 on FLARE for
[0, 0], [0.0001, 0.3], [0.3, 0.6], [0.6, 1] (5 passes over 5,050 slices; thesis protocol notes §6).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np

from ioussl.config import SamplerMode
from ioussl.errors import DataError
from ioussl.science.data.store import SliceStore
from ioussl.science.sampling.sampler import sample_crop_pairs

THESIS_INTERVALS: tuple[tuple[float, float], ...] = ((0.0, 0.0), (0.0001, 0.3), (0.3, 0.6), (0.6, 1.0))
THESIS_SHARED = {(0.0, 0.0): 0.2055, (0.0001, 0.3): 0.5869, (0.3, 0.6): 0.7988, (0.6, 1.0): 0.9072}


@dataclass(frozen=True)
class PairOverlapRow:
    i_min: float
    i_max: float
    pairs: int  # pairs sampled
    counted: int  # pairs where at least one view shows an organ
    shared: int  # counted pairs whose views share an organ
    fallbacks: int  # pairs from slices that admit no pair in the interval

    @property
    def fraction(self) -> float:
        return self.shared / self.counted if self.counted else float("nan")


def _crop_organs(store: SliceStore, idx: int, start: np.ndarray, crop: int) -> int:
    y, x = int(start[0]), int(start[1])
    labels = store.label(idx)[y : y + crop, x : x + crop]
    present = np.bincount(labels.ravel(), minlength=14)[1:] > 0
    return int(np.dot(present, 1 << np.arange(1, 14)))


def organ_overlap(
    store: SliceStore,
    slice_ids: np.ndarray,
    intervals: Sequence[tuple[float, float]] = THESIS_INTERVALS,
    crop: int = 96,
    passes: int = 5,
    seed: int = 0,
    mode: str = "exact",
) -> list[PairOverlapRow]:
    """Share of pairs with at least one common organ, per interval (the thesis' Figure 3.2)."""
    ids = np.asarray(slice_ids, dtype=np.int64)
    if ids.size == 0:
        raise DataError(f"{store.root}: no labelled slices to analyse")
    shapes = store.shapes(ids)
    if np.any(shapes < crop):
        raise DataError(f"{store.root}: some slices are smaller than the crop {crop}")
    rng = np.random.default_rng(seed)
    rows = []
    for i_min, i_max in intervals:
        counted = shared = fallbacks = 0
        for _ in range(passes):
            s1, s2, _, fallback = sample_crop_pairs(
                rng, shapes, (crop, crop), i_min, i_max, ids.size, mode=cast(SamplerMode, mode)
            )
            fallbacks += int(fallback.sum())
            for k, idx in enumerate(ids.tolist()):
                a, b = _crop_organs(store, idx, s1[k], crop), _crop_organs(store, idx, s2[k], crop)
                if a or b:
                    counted += 1
                    shared += bool(a & b)
        rows.append(PairOverlapRow(i_min, i_max, passes * ids.size, counted, shared, fallbacks))
    return rows


def organ_overlap_3d(
    store: SliceStore,
    cases: Sequence[str],
    intervals: Sequence[tuple[float, float]] = THESIS_INTERVALS,
    crop: int = 96,
    passes: int = 5,
    seed: int = 0,
    mode: str = "exact",
) -> list[PairOverlapRow]:
    """The same share for pairs of cubes, one pair per labelled volume and pass (cuboid IoU; issue 20).

    The thesis measured slices only: its Figure 3.2 numbers are no reference for cubes.
    """
    if not cases:
        raise DataError(f"{store.root}: no labelled volumes to analyse")
    shapes = store.volume_shapes(cases)
    if np.any(shapes < crop):
        raise DataError(f"{store.root}: some volumes are smaller than the {crop}³ crop")
    cube = (crop,) * 3
    rng = np.random.default_rng(seed)
    rows = []
    for i_min, i_max in intervals:
        counted = shared = fallbacks = 0
        for _ in range(passes):
            s1, s2, _, fallback = sample_crop_pairs(
                rng, shapes, cube, i_min, i_max, len(cases), mode=cast(SamplerMode, mode)
            )
            fallbacks += int(fallback.sum())
            for k, case in enumerate(cases):
                a, b = (_organ_bits(store.label_subvolume(case, s[k], cube)) for s in (s1, s2))
                if a or b:
                    counted += 1
                    shared += bool(a & b)
        rows.append(PairOverlapRow(i_min, i_max, passes * len(cases), counted, shared, fallbacks))
    return rows


def _organ_bits(labels: np.ndarray) -> int:
    present = np.bincount(labels.ravel(), minlength=14)[1:14] > 0
    return int(np.dot(present, 1 << np.arange(1, 14)))


def plot_overlap(rows: Sequence[PairOverlapRow], path: str | Path, title: str = "") -> Path:
    """Bar chart of the shared-organ fraction per interval, with the thesis' FLARE values as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"[{r.i_min:g}, {r.i_max:g}]" for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(names, [r.fraction for r in rows], color="tab:blue", label="this data")
    thesis = [THESIS_SHARED.get((r.i_min, r.i_max), np.nan) for r in rows]
    ax.plot(names, thesis, "o", color="tab:red", label="thesis (FLARE)")
    ax.set_ylim(0, 1)
    ax.set_xlabel("IoU interval")
    ax.set_ylabel("pairs sharing at least one organ")
    ax.set_title(title or "Organ overlap of positive pairs (thesis Fig. 3.2)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
