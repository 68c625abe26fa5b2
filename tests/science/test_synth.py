"""The synthetic phantom the demo learns from: deterministic by seed, every organ present and large enough to
find, each organ's HU set apart from what surrounds it, and a body size that follows ``spacing_mm``."""

from __future__ import annotations

import numpy as np
import pytest

from ioussl.errors import DataError
from ioussl.science.data.synth import FAT_HU, MUSCLE_HU, ORGANS, VISCERAL_FAT_HU, synth_dataset, synth_volume

SHAPE = (144, 120, 24)


def _volume(seed: int) -> tuple[np.ndarray, np.ndarray]:
    return synth_volume(np.random.default_rng(seed), SHAPE)


def test_same_seed_same_volume_other_seed_other_volume():
    (a, la), (b, lb), (c, lc) = _volume(3), _volume(3), _volume(4)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, c) and not np.array_equal(la, lc)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_organ_is_present_and_big_enough_to_learn(seed):
    _, label = _volume(seed)
    body = label.size
    for name, (code, *_rest) in ORGANS.items():
        voxels = int((label == code).sum())
        # the smallest organ (an adrenal) keeps at least ~0.05% of the volume, some 200 voxels here
        assert voxels >= 0.0005 * body, f"{name}: {voxels} voxels"
        slices = np.flatnonzero((label == code).any(axis=(0, 1)))
        assert len(slices) >= 3, f"{name} is on {len(slices)} slice(s) only"
        # the largest in-plane extent of the organ: at least 5 voxels across at this size
        widest = max(int((label[:, :, z] == code).any(axis=1).sum()) for z in slices)
        assert widest >= 5, f"{name}: {widest} voxels wide"


@pytest.mark.parametrize("seed", [0, 1])
def test_organs_stand_out_from_their_surroundings(seed):
    """Each organ's edge is visible: its mean HU differs from the voxels just outside it by several times the
    noise (12 HU), on average over that shell."""
    from scipy.ndimage import binary_dilation

    image, label = _volume(seed)
    for name, (code, *_rest) in ORGANS.items():
        organ = label == code
        shell = binary_dilation(organ, iterations=2) & ~organ & (label != code)
        contrast = float(np.abs(image[shell].astype(np.float32) - image[organ].mean()).mean())
        assert contrast >= 30.0, f"{name}: {contrast:.1f} HU against its surroundings"


def test_organs_have_their_own_hu_spread_over_the_window():
    """Every organ, left and right included, has its own HU, 60 HU or more from any other organ's and 45 or
    more from fat, visceral fat and muscle; together they span most of the [-500, 500] window."""
    values = sorted(hu for _, hu, *_ in ORGANS.values())
    assert len(set(values)) == len(values) == 13
    assert min(b - a for a, b in zip(values, values[1:], strict=False)) >= 60.0
    assert all(abs(hu - tissue) >= 45 for hu in values for tissue in (FAT_HU, VISCERAL_FAT_HU, MUSCLE_HU))
    assert values[0] <= -400 and values[-1] >= 400


def test_spacing_sets_the_body_size_in_mm(tmp_path):
    import nibabel as nib

    small = synth_dataset(tmp_path / "small", cases=1, seed=5, size=64, slices=6, spacing_mm=1.0)
    large = synth_dataset(tmp_path / "large", cases=1, seed=5, size=64, slices=6, spacing_mm=2.0)
    assert small.labelled == large.labelled == ["SYN_Tr_0001"]
    zooms = [sorted(nib.load(str(p / "images" / "SYN_Tr_0001_0000.nii.gz")).header.get_zooms())
             for p in (tmp_path / "small", tmp_path / "large")]
    # the two in-plane spacings are the smaller ones (slices are 2.5-5 mm apart)
    assert all(0.85 <= z <= 1.15 for z in zooms[0][:2]) and all(1.7 <= z <= 2.3 for z in zooms[1][:2])
    with pytest.raises(DataError, match="spacing"):
        synth_dataset(tmp_path / "bad", cases=1, size=64, slices=6, spacing_mm=0.0)
