"""Properties of the IoU pair sampler (exact and Algorithm 1) over many seeds, shapes and intervals."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from ioussl.errors import ConfigError, DataError
from ioussl.science.sampling import _exact
from ioussl.science.sampling.sampler import (
    achievable_iou_range,
    box_iou,
    check_interval_feasible,
    feasible_mask,
    pair_exists,
    sample_crop_pair,
    sample_crop_pairs,
)

THESIS_INTERVALS = [(0.0, 0.0), (0.0001, 0.3), (0.3, 0.6), (0.6, 1.0), (0.0, 1.0)]
SHAPES = [((256, 256), (96, 96)), ((200, 130), (96, 64)), ((97, 300), (96, 96)), ((40, 50, 60), (20, 24, 20))]


def test_box_iou_known_values():
    assert box_iou((0, 0), (0, 0), (96, 96)) == 1.0
    assert box_iou((0, 0), (96, 0), (96, 96)) == 0.0  # touching boxes count as 0, as the thesis code
    assert box_iou((0, 0), (48, 0), (96, 96)) == pytest.approx(1 / 3)  # half overlap: 0.5 / 1.5
    assert box_iou((0, 0, 0), (10, 0, 0), (20, 20, 20)) == pytest.approx(1 / 3)


@pytest.mark.parametrize("mode", ["exact", "algorithm1"])
@pytest.mark.parametrize(("image", "crop"), SHAPES)
@pytest.mark.parametrize("interval", THESIS_INTERVALS)
def test_pairs_inside_image_and_interval_unless_flagged(mode, image, crop, interval):
    for seed in range(3):
        s1, s2, ious, fallback = sample_crop_pairs(
            np.random.default_rng(seed), image, crop, *interval, 2000, mode
        )
        limit = np.array(image) - np.array(crop)
        assert np.all((s1 >= 0) & (s1 <= limit)) and np.all((s2 >= 0) & (s2 <= limit))
        ok = fallback | ((ious >= interval[0]) & (ious <= interval[1]))
        assert ok.all()
        recomputed = [box_iou(a, b, crop) for a, b in zip(s1[:50], s2[:50], strict=True)]
        assert np.allclose(recomputed, ious[:50])
        if mode == "exact":  # exact never falls back when some pair exists for the image
            assert fallback.any() == (not pair_exists(image, crop, *interval))


@pytest.mark.parametrize("mode", ["exact", "algorithm1"])
def test_same_seed_same_pairs_and_per_pair_shapes(mode):
    shapes = np.array([[256, 256], [130, 200], [96, 96], [300, 97]] * 50)
    runs = [
        sample_crop_pairs(np.random.default_rng(7), shapes, (96, 96), 0.3, 0.6, 200, mode) for _ in range(2)
    ]
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)
    s1, s2, _, fallback = runs[0]
    assert np.all(s1 <= shapes - 96) and np.all(s2 <= shapes - 96)
    if mode == "exact":
        assert np.array_equal(fallback, np.all(shapes == 96, axis=1))  # only 96x96 admits no [0.3, 0.6] pair


def _brute_force_joint(image, crop, i_min, i_max):
    """Exact law of (box1, box2): box1 uniform over starts with a valid box2, box2 uniform given box1."""
    starts = list(itertools.product(*(range(s - c + 1) for s, c in zip(image, crop, strict=True))))
    valid = {a: [b for b in starts if i_min <= box_iou(a, b, crop) <= i_max] for a in starts}
    box1s = [a for a in starts if valid[a]]
    return {(a, b): 1 / len(box1s) / len(valid[a]) for a in box1s for b in valid[a]}


@pytest.mark.parametrize("rounds", [_exact._PROPOSAL_ROUNDS, ()], ids=["rejection+exact", "exact-path-only"])
@pytest.mark.parametrize(
    ("image", "crop", "interval"),
    [
        ((14, 11), (6, 5), (0.3, 0.6)),
        ((17, 9), (6, 5), (0.0, 0.0)),
        ((15, 14), (6, 5), (0.0, 0.0)),
        ((12, 12), (6, 5), (0.6, 1)),
        ((8, 7, 9), (4, 3, 5), (0.3, 0.6)),  # 3D: the generic overlap-grid path
        ((9, 7, 8), (4, 3, 4), (0.0, 0.0)),
    ],
)
def test_exact_joint_law_is_uniform_chi_square(monkeypatch, rounds, image, crop, interval):
    monkeypatch.setattr(_exact, "_PROPOSAL_ROUNDS", rounds)
    law = _brute_force_joint(image, crop, *interval)
    n = 40 * len(law)
    s1, s2, _, fallback = sample_crop_pairs(np.random.default_rng(123), image, crop, *interval, n)
    assert not fallback.any()
    keys = list(law)
    position = {k: i for i, k in enumerate(keys)}
    observed = np.zeros(len(keys))
    for a, b in zip(map(tuple, s1.tolist()), map(tuple, s2.tolist()), strict=True):
        observed[position[(a, b)]] += 1  # KeyError would mean an invalid pair
    expected = np.array([law[k] for k in keys]) * n
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_box2_uniform_given_box1_on_large_image():
    # Given a fixed box 1, box 2 must be uniform over its valid positions: compare with enumeration.
    image, crop, interval, box1 = (160, 150), (96, 96), (0.3, 0.6), np.array([[10, 40]])
    n = 200_000
    starts1 = np.repeat(box1, n, axis=0)
    starts2 = np.zeros_like(starts1)
    shapes = np.broadcast_to(np.array(image), starts1.shape)
    lo, hi = _exact._intersection_bounds(crop, *interval)
    reach = _exact._proposal_reach(np.array(crop), lo)
    redraw = _exact._draw_box2(
        np.random.default_rng(5), np.arange(n), starts1, starts2, shapes, np.array(crop), reach, lo, hi
    )
    assert redraw.size == 0
    grid = itertools.product(range(image[0] - 95), range(image[1] - 95))
    valid = [b for b in grid if interval[0] <= box_iou(box1[0], b, crop) <= interval[1]]
    index = {b: i for i, b in enumerate(valid)}
    counts = np.bincount([index[tuple(b)] for b in starts2.tolist()], minlength=len(valid))
    assert stats.chisquare(counts).pvalue > 1e-3


def test_infeasible_intervals_rejected_with_clear_error():
    with pytest.raises(ConfigError, match=r"cannot be met with crop \(96, 96\) on image \(150, 150\)"):
        check_interval_feasible((150, 150), (96, 96), 0.0, 0.0)  # disjoint crops need a side >= 192
    with pytest.raises(ConfigError, match="cannot be met"):
        check_interval_feasible((96, 96), (96, 96), 0.3, 0.6)  # crop == image: only IoU 1 exists
    with pytest.raises(ConfigError, match="must satisfy"):
        check_interval_feasible((256, 256), (96, 96), 0.6, 0.3)
    check_interval_feasible((192, 96), (96, 96), 0.0, 0.0)  # feasible: no error
    assert achievable_iou_range((96, 96), (96, 96)) == (1.0, 1.0)


def test_infeasible_image_falls_back_flagged_and_counted():
    s1, s2, ious, fallback = sample_crop_pairs(np.random.default_rng(0), (150, 150), (96, 96), 0.0, 0.0, 500)
    assert fallback.all() and (ious > 0).all()  # every pair flagged; none silently passes as [0, 0]


def test_crop_equal_to_image():
    pair = sample_crop_pair(np.random.default_rng(0), (96, 96), (96, 96), 0.0, 1.0)
    assert pair.iou == 1.0 and not pair.fallback and pair.box1.tolist() == [0, 0] == pair.box2.tolist()
    assert sample_crop_pair(np.random.default_rng(0), (96, 96), (96, 96), 0.3, 0.6).fallback
    assert not sample_crop_pair(np.random.default_rng(0), (96, 96), (96, 96), 1.0, 1.0).fallback


def test_crop_larger_than_image_and_bad_arguments():
    with pytest.raises(DataError, match=r"\(90, 120\) is smaller than the crop \(96, 96\)"):
        sample_crop_pair(np.random.default_rng(0), (90, 120), (96, 96), 0.0, 1.0)
    with pytest.raises(ConfigError, match="mode"):
        sample_crop_pair(np.random.default_rng(0), (128, 128), (96, 96), 0.0, 1.0, mode="bogus")
    with pytest.raises(ConfigError, match="different numbers of axes"):
        check_interval_feasible((128, 128, 128), (96, 96), 0.0, 1.0)


def test_algorithm1_falls_back_like_the_thesis_and_flags_it():
    # No disjoint pair exists on 150 x 150: Algorithm 1 returns its last rejected pair, flagged.
    _, _, ious, fallback = sample_crop_pairs(np.random.default_rng(0), (150, 150), (96, 96), 0.0, 0.0, 300,
                                             mode="algorithm1")  # fmt: skip
    assert fallback.all() and (ious > 0).all()


def test_feasible_mask_per_shape():
    shapes = [[96, 96], [150, 150], [192, 100], [300, 300]]
    np.testing.assert_array_equal(feasible_mask(shapes, (96, 96), 0.0, 0.0), [False, False, True, True])
    np.testing.assert_array_equal(feasible_mask(shapes, (96, 96), 0.3, 0.6), [False, True, True, True])
    assert feasible_mask(shapes, (96, 96), 0.0, 1.0).all()
    with pytest.raises(DataError, match="smaller than the crop"):
        feasible_mask([[90, 200]], (96, 96), 0.0, 1.0)
