"""The organ-overlap analysis (thesis Fig. 3.2) on real and synthetic stores."""

from __future__ import annotations

import math

import pytest
from datafix import *  # noqa: F403 (session fixtures; a conftest.py here would collide with other branches)

from ioussl.errors import DataError
from ioussl.science.sampling.analysis import THESIS_INTERVALS, organ_overlap, plot_overlap


def test_overlap_on_real_ct_rises_with_iou(real_store, tmp_path):
    ids = real_store.slice_ids(real_store.labelled_cases())
    rows = organ_overlap(real_store, ids, THESIS_INTERVALS, crop=96, passes=3, seed=0)
    fractions = [r.fraction for r in rows]
    assert all(0.0 < f <= 1.0 for f in fractions)
    assert fractions[0] < fractions[2] < fractions[3] + 0.05  # disjoint views share organs least
    assert all(r.pairs == 3 * ids.size and r.counted <= r.pairs and r.fallbacks == 0 for r in rows)
    png = plot_overlap(rows, tmp_path / "fig.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_overlap_on_synthetic_counts_fallbacks_and_is_seeded(synth_store):
    ids = synth_store.slice_ids(synth_store.labelled_cases())
    a = organ_overlap(synth_store, ids, [(0.0, 0.0), (0.3, 0.6)], crop=96, passes=1, seed=1)
    b = organ_overlap(synth_store, ids, [(0.0, 0.0), (0.3, 0.6)], crop=96, passes=1, seed=1)
    assert a == b
    assert a[1].fallbacks == 0 and not math.isnan(a[1].fraction)
    assert a[0].shared <= a[0].counted <= a[0].pairs == ids.size


def test_overlap_needs_slices(synth_store):
    with pytest.raises(DataError, match="no labelled slices"):
        organ_overlap(synth_store, synth_store.slice_ids([]), crop=96)
