"""The IoU sampler on volumes: cuboid IoU, both modes, and Algorithm 1 against the reference's 3D IoUCropd.

Reference numbers: the thesis code's ``IoUCropd(spatial_dims=3)`` (dittohed/exploring-ssl-for-ct,
src/transforms.py) was run as published, outside this repository, on a (40, 34, 30) volume with 16³ cubes and
``max_retries_existing=3, max_retries_total=6`` (Algorithm 1's r1 = 3, r2 = 2: few retries, so it falls back
often and a wrong fallback rule shows), 140,000 pairs per interval, and with its defaults (30, 120) on a
512 x 512 x 100 volume with 96³ cubes, 80,000 pairs. A pair "falls back" there when its IoU is outside the
interval (the reference returns its last rejected pair).
"""

from __future__ import annotations

import numpy as np
import pytest

from ioussl.errors import ConfigError, DataError
from ioussl.science.sampling.sampler import box_iou, check_interval_feasible, feasible_mask, sample_crop_pairs

# (image, cube side, interval, r1, r2, pairs the reference drew) -> (fallback rate, mean IoU of all pairs)
REFERENCE = {
    ((40, 34, 30), 16, (0.3, 0.6), 3, 2, 140_000): (0.44680, 0.27506),
    ((40, 34, 30), 16, (0.0, 0.0), 3, 2, 140_000): (0.37060, 0.06072),
    ((40, 34, 30), 16, (0.6, 1.0), 3, 2, 40_000): (0.89925, 0.19720),
    ((100, 512, 512), 96, (0.6, 1.0), 30, 4, 80_000): (0.0092875, 0.70478),
}


@pytest.mark.parametrize("case", list(REFERENCE), ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_algorithm1_in_3d_falls_back_as_the_reference_iou_cropd(case):
    image, side, interval, r1, r2, ref_n = case
    ref_fallback, ref_iou = REFERENCE[case]
    n = 200_000
    _, _, ious, fallback = sample_crop_pairs(np.random.default_rng(3), image, (side,) * 3, *interval, n,
                                             mode="algorithm1", r1=r1, r2=r2)  # fmt: skip
    sigma = np.sqrt(ref_fallback * (1 - ref_fallback) * (1 / n + 1 / ref_n))
    assert abs(fallback.mean() - ref_fallback) < 5 * sigma
    assert abs(ious.mean() - ref_iou) < 0.003  # the pairs' IoU law, fallbacks included
    inside = (ious >= interval[0]) & (ious <= interval[1])
    assert np.array_equal(fallback, ~inside)  # flagged exactly when outside, as the reference's failures


@pytest.mark.parametrize("mode", ["exact", "algorithm1"])
@pytest.mark.parametrize("interval", [(0.0, 0.0), (0.0001, 0.3), (0.3, 0.6), (0.6, 1.0), (0.0, 1.0)])
def test_cube_pairs_stay_inside_the_volume_and_the_interval(mode, interval):
    image, crop = (100, 200, 180), (64, 64, 64)
    s1, s2, ious, fallback = sample_crop_pairs(np.random.default_rng(1), image, crop, *interval, 3000, mode)
    limit = np.array(image) - 64
    assert np.all((s1 >= 0) & (s1 <= limit)) and np.all((s2 >= 0) & (s2 <= limit))
    recomputed = [box_iou(a, b, crop) for a, b in zip(s1[:100], s2[:100], strict=True)]
    assert np.allclose(recomputed, ious[:100])
    overlap = np.prod(np.maximum(64 - np.abs(s1 - s2), 0), axis=1)  # the cuboid IoU, by hand
    assert np.allclose(overlap / (2 * 64**3 - overlap), ious)
    if mode == "exact":
        assert not fallback.any() and np.all((ious >= interval[0]) & (ious <= interval[1]))


def test_cuboid_iou_known_values():
    assert box_iou((0, 0, 0), (0, 0, 0), (32, 32, 32)) == 1.0
    assert box_iou((0, 0, 0), (16, 16, 0), (32, 32, 32)) == pytest.approx(0.25 / 1.75)  # a quarter shared
    assert box_iou((0, 0, 0), (0, 0, 32), (32, 32, 32)) == 0.0  # touching faces


def test_feasibility_of_3d_intervals_is_checked_with_the_depth():
    # 96³ cubes in 100 slices: disjoint pairs need 192 voxels along some axis, here only in-plane
    check_interval_feasible((100, 512, 512), (96, 96, 96), 0.0, 0.0)
    with pytest.raises(ConfigError, match=r"cannot be met with crop \(96, 96, 96\) on image \(100, 150, 150\)"):
        check_interval_feasible((100, 150, 150), (96, 96, 96), 0.0, 0.0)
    shapes = [[100, 512, 512], [100, 150, 150], [96, 96, 96]]
    np.testing.assert_array_equal(feasible_mask(shapes, (96, 96, 96), 0.0, 0.0), [True, False, False])
    np.testing.assert_array_equal(feasible_mask(shapes, (96, 96, 96), 0.3, 0.6), [True, True, False])
    with pytest.raises(DataError, match="smaller than the crop"):
        feasible_mask([[64, 512, 512]], (96, 96, 96), 0.0, 1.0)


PLAN = """
[study]
name = "cubes"
[data]
store = "{store}"
crop = 64
[model]
feature_size = 12
spatial_dims = {dims}
[pretrain]
seeds = [1]
[finetune]
seeds = [1]
[[intervals]]
i_min = {i_min}
i_max = {i_max}
"""


@pytest.fixture(scope="module")
def volume_store(tmp_path_factory):
    from volumefix import write_volume_store

    shapes = {"L1": (70, 100, 96), "U1": (64, 130, 200), "U2": (80, 120, 120)}
    return write_volume_store(tmp_path_factory.mktemp("cubes"), shapes, labelled={"L1"})


def _plan(tmp_path, store, dims=3, i_min=0.0, i_max=0.0):  # type: ignore[no-untyped-def]
    from ioussl.plan.expand import check_data
    from ioussl.plan.study import load_study

    path = tmp_path / "s.toml"
    path.write_text(PLAN.format(store=store.root, dims=dims, i_min=i_min, i_max=i_max))
    return check_data(load_study(path))


def test_plan_time_checks_use_the_volumes_in_3d(tmp_path, volume_store):
    # disjoint 64³ cubes: U1 has 200 voxels across (>= 128), U2 none of its axes reaches 128
    warnings = _plan(tmp_path, volume_store)
    assert len(warnings) == 1 and "50.0% of the pretraining volumes cannot meet it" in warnings[0]
    assert _plan(tmp_path, volume_store, i_min=0.3, i_max=0.6) == []
    with pytest.raises(ConfigError, match=r"cannot be met with crop \(64, 64, 64\)"):
        _plan(tmp_path, volume_store, i_min=0.99, i_max=0.995)  # between the two largest achievable IoUs
    flat = _plan(tmp_path, volume_store, dims=2)  # 2D counts slices: U2's 80 of 144
    assert len(flat) == 1 and "55.6% of the pretraining slices cannot meet it" in flat[0]


def test_3d_fine_tuning_volumes_must_hold_a_cube(tmp_path):
    from volumefix import write_volume_store

    store = write_volume_store(tmp_path / "thin", {"L1": (40, 100, 100), "U1": (70, 140, 140)}, labelled={"L1"})
    with pytest.raises(DataError, match=r"volume L1 .* is \(40, 100, 100\) \(Z, H, W\), smaller than the 64³ crop"):
        _plan(tmp_path, store, i_min=0.3, i_max=0.6)


def test_analyze_pairs_works_on_cubes(tmp_path, volume_store):
    from typer.testing import CliRunner

    from ioussl.cli import app
    from ioussl.science.sampling.analysis import organ_overlap_3d

    rows = organ_overlap_3d(volume_store, ["L1"], [(0.0, 0.0), (0.6, 1.0)], crop=32, passes=40, seed=1)
    assert [r.pairs for r in rows] == [40, 40] and all(r.fallbacks == 0 for r in rows)
    assert rows[0].fraction < rows[1].fraction  # overlapping cubes share organs more often than disjoint ones
    result = CliRunner().invoke(app, ["analyze", "pairs", str(volume_store.root), "--spatial-dims", "3", "--crop",
                                      "32", "--passes", "2", "--plot", str(tmp_path / "p.png")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Pairs sharing an organ (1 cases, 2 passes, crop 32)" in result.output
