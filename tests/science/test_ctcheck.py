"""CT-only input: real and synthetic CTs pass the check; an MR-like volume and other non-HU data are refused
in one line naming the file, unless --allow-non-ct, which the store records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from datafix import *  # noqa: F403 (session fixtures; a conftest.py here would collide with other branches)
from typer.testing import CliRunner

from ioussl.cli import app
from ioussl.errors import DataError
from ioussl.science.data.ctcheck import CT, check_ct, ct_statistics, implausible_reason
from ioussl.science.data.preprocess import PreprocessSettings, preprocess_dataset
from ioussl.science.data.synth import synth_volume


def _nifti(path: Path, volume: np.ndarray, spacing=(2.0, 2.0, 3.0)) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, np.diag([*spacing, 1.0])), str(path))


def _mr_like(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic abdomen with MR-like intensities: dark air, bright fat, grey organs, all >= 0."""
    rng = np.random.default_rng(seed)
    hu, label = synth_volume(rng, (96, 80, 20))
    mr = np.interp(hu.astype(np.float32), [-1000, -100, 50, 200, 500], [5, 900, 350, 600, 80])
    return np.clip(mr + rng.normal(0, 10, mr.shape), 0, None).astype(np.float32), label


def _images(root: Path) -> list[Path]:
    return sorted(root.glob("*/*_0000.nii.gz"))


def test_real_cts_pass_with_margin(real_ct_dir):
    import nibabel as nib

    for path in _images(real_ct_dir):
        stats = check_ct(np.asarray(nib.load(path).dataobj, dtype=np.float32), path)
        assert stats["air_share"] > 10 * CT.min_air_share and stats["darkest_hu"] <= -1000
        assert -50 <= stats["body_median_hu"] <= 50 and stats["bright_hu"] < 400


def test_synthetic_cts_pass(synth_dir):
    import nibabel as nib

    for path in _images(synth_dir):
        stats = check_ct(np.asarray(nib.load(path).dataobj, dtype=np.float32), path)
        assert stats["air_share"] > 0.5 and stats["darkest_hu"] == -1024


def test_an_mr_like_volume_is_refused_in_one_line_naming_the_file(tmp_path):
    image, label = _mr_like()
    _nifti(tmp_path / "raw" / "images" / "MR_0001_0000.nii.gz", image)
    _nifti(tmp_path / "raw" / "labels" / "MR_0001.nii.gz", label)
    report = preprocess_dataset(tmp_path / "raw", tmp_path / "store")
    assert report.done == [] and len(report.failed) == 1
    case, reason = report.failed[0]
    assert case == "MR_0001" and "\n" not in reason
    assert reason.startswith(str(tmp_path / "raw" / "images" / "MR_0001_0000.nii.gz"))
    assert "not a CT in Hounsfield units: 0.0% of voxels lie below -500 HU" in reason
    assert "--allow-non-ct" in reason


def test_allow_non_ct_preprocesses_it_and_the_store_records_it(tmp_path):
    image, label = _mr_like(1)
    _nifti(tmp_path / "raw" / "images" / "MR_0001_0000.nii.gz", image)
    _nifti(tmp_path / "raw" / "labels" / "MR_0001.nii.gz", label)
    store = tmp_path / "store"
    report = preprocess_dataset(tmp_path / "raw", store, PreprocessSettings(allow_non_ct=True))
    assert report.done == ["MR_0001"] and report.failed == []
    assert json.loads((store / "store.json").read_text())["settings"]["allow_non_ct"] is True
    assert json.loads((store / "settings.json").read_text())["allow_non_ct"] is True
    entry = json.loads((store / "store.json").read_text())["cases"][0]
    assert entry["ct"]["air_share"] == 0.0  # the statistics are kept even when the check is skipped
    with pytest.raises(DataError, match="other settings"):  # resuming without the flag would mix stores
        preprocess_dataset(tmp_path / "raw", store)


def test_the_cli_refuses_non_ct_and_takes_the_override(tmp_path):
    image, label = _mr_like(2)
    _nifti(tmp_path / "raw" / "images" / "MR_0001_0000.nii.gz", image)
    _nifti(tmp_path / "raw" / "labels" / "MR_0001.nii.gz", label)
    runner = CliRunner()
    refused = runner.invoke(app, ["data", "preprocess", str(tmp_path / "raw"), str(tmp_path / "a")])
    assert refused.exit_code == 1 and "0 done, 0 already done, 1 failed" in refused.output
    assert "failed MR_0001:" in refused.output and "not a CT in Hounsfield units" in refused.output
    assert "Traceback" not in refused.output
    allowed = runner.invoke(app, ["data", "preprocess", str(tmp_path / "raw"), str(tmp_path / "b"), "--allow-non-ct"])
    assert allowed.exit_code == 0, allowed.output
    assert "1 done, 0 already done, 0 failed" in allowed.output


def _ct(seed: int = 0) -> np.ndarray:
    hu, _ = synth_volume(np.random.default_rng(seed), (96, 80, 20))
    return hu.astype(np.float32)


def _with_block(volume: np.ndarray, value: float) -> np.ndarray:
    volume[38:58, 30:50, :] = value
    return volume


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: _ct() + 1024.0, "0.0% of voxels lie below -500 HU"),  # stored without the rescale intercept
        (lambda: (_ct() + 1000.0) / 1500.0, "0.0% of voxels lie below -500 HU"),  # already normalised to ~[0, 1]
        (lambda: np.random.default_rng(0).normal(0, 1, (64, 64, 16)), "0.0% of voxels lie below -500 HU"),  # z-scores
        (lambda: _ct() + 400.0, "darkest voxels (0.1th percentile) are at -624"),  # air at -600
        (lambda: np.random.default_rng(0).uniform(-4096, 4096, (64, 64, 16)), "median above -500 HU"),  # phase
        (lambda: _with_block(_ct(), 3500.0), "99th percentile is 3500"),  # 5% of the voxels at 3500
        (lambda: np.full((8, 8, 8), np.nan), "NaN or infinite"),
    ],
)
def test_non_hu_data_is_refused_naming_the_failed_fact(make, reason):
    volume = np.asarray(make(), dtype=np.float32)
    assert reason in (implausible_reason(ct_statistics(volume)) or "")
    with pytest.raises(DataError, match=r"^scan\.nii\.gz: not a CT in Hounsfield units: "):
        check_ct(volume, "scan.nii.gz")
