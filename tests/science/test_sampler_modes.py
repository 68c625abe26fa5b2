"""The exact share of pairs in which Algorithm 1 and exact mode differ, checked against both samplers."""

from __future__ import annotations

import numpy as np
import pytest

from ioussl.science.sampling import modes as sampler_modes
from ioussl.science.sampling.sampler import sample_crop_pairs


def _box1_rows(starts: np.ndarray, keep: np.ndarray, shape: tuple[int, int], crop: int, n: int) -> np.ndarray:
    return np.bincount(starts[keep, 0], minlength=shape[0] - crop + 1) / n


@pytest.mark.parametrize("interval", [(0.3, 0.6), (0.0001, 0.3), (0.0, 0.0), (0.6, 1.0)])
def test_fallback_rate_and_box1_law_match_the_samplers(interval):
    # Few retries on a small image, so Algorithm 1 fails often and its box-1 bias is large.
    shape, crop, r1, r2, n = (40, 34), 16, 3, 2, 400_000
    predicted = sampler_modes.mode_difference(shape, crop, *interval, r1=r1, r2=r2)
    rng = np.random.default_rng(7)
    s1, _, _, fallback = sample_crop_pairs(rng, shape, (crop, crop), *interval, n, mode="algorithm1", r1=r1, r2=r2)
    sigma = np.sqrt(predicted["fallback"] * (1 - predicted["fallback"]) / n)
    assert abs(fallback.mean() - predicted["fallback"]) < 5 * sigma + 1e-9
    # box 1 of Algorithm 1's successes, per row, against the law the computation uses
    law = sampler_modes.box1_law(shape, crop, *interval, r1=r1, r2=r2)
    rows, observed = law.sum(axis=1), _box1_rows(s1, ~fallback, shape, crop, n)
    z = (observed - rows) / np.sqrt(rows * (1 - rows) / n + 1e-12)
    assert np.abs(z).max() < 5
    e1, _, _, exact_fallback = sample_crop_pairs(rng, shape, (crop, crop), *interval, n, mode="exact")
    assert not exact_fallback.any()
    uniform = sampler_modes.exact_box1_law(shape, crop, *interval).sum(axis=1)
    z = (_box1_rows(e1, ~exact_fallback, shape, crop, n) - uniform) / np.sqrt(uniform * (1 - uniform) / n + 1e-12)
    assert np.abs(z).max() < 5


def test_the_numbers_docs_data_md_quotes_at_flare_slice_sizes():
    tv = {iv: sampler_modes.mode_difference((362, 287), 96, *iv)["tv"] for iv in
          [(0.0, 0.0), (0.0001, 0.3), (0.3, 0.6), (0.6, 1.0), (0.0, 1.0)]}  # fmt: skip
    assert tv[(0.6, 1.0)] == pytest.approx(0.0381, abs=5e-5)
    assert tv[(0.3, 0.6)] == pytest.approx(0.00079, abs=5e-6)
    assert max(tv[(0.0, 0.0)], tv[(0.0001, 0.3)], tv[(0.0, 1.0)]) < 1e-5  # random crop: both uniform


def test_no_pair_at_all_gives_none():
    assert sampler_modes.mode_difference((100, 100), 96, 0.0, 0.0) is None
