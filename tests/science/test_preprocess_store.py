"""Preprocessing into the slice store: real CT (skipped when absent), synthetic round trip, bad input."""

from __future__ import annotations

import gzip
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from datafix import *  # noqa: F403 (session fixtures; a conftest.py here would collide with other branches)

from ioussl.errors import DataError
from ioussl.science.data.preprocess import discover_cases, preprocess_dataset
from ioussl.science.data.store import SliceStore


def test_real_ct_geometry_from_header(real_ct_dir, real_store):
    image = nib.load(str(real_ct_dir / "images" / "TS_0001_0000.nii.gz"))
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    zooms = np.array(image.header.get_zooms())
    data = np.asarray(image.dataobj)
    # Expected extent: the foreground (HU > -500) bounding box in mm, resampled to 1 x 1 x 2.5 mm.
    extent = np.array([np.ptp(np.flatnonzero((data > -500).any(axis=tuple(a for a in range(3) if a != k))))
                       for k in range(3)]) + 1  # fmt: skip
    expected = extent * zooms / np.array([1.0, 1.0, 2.5])
    vol, label = real_store.volume("TS_0001")
    z, h, w = vol.shape
    assert abs(h - expected[0]) <= 4 and abs(w - expected[1]) <= 4 and abs(z - expected[2]) <= 3
    assert len(real_store.slice_ids(["TS_0001"])) == z
    assert vol.dtype == np.float32 and 0.0 <= vol.min() and vol.max() <= 1.0 and vol.max() > 0.9
    assert label.shape == vol.shape and label.dtype == np.uint8 and label.max() <= 13


def test_real_ct_label_aligned_with_image(real_store):
    vol, label = real_store.volume("TS_0001")
    hu = vol * 1000.0 - 500.0
    # Soft-tissue organs (liver 1, spleen 3) sit around 0..200 HU; air (< -500 HU) is never labelled.
    for organ in (1, 3):
        assert 0.0 < float(np.median(hu[label == organ])) < 250.0
    assert float(np.mean(vol[label > 0] == 0.0)) < 0.01


def test_orientation_does_not_change_the_store(real_ct_dir, real_store, tmp_path):
    # The same scan stored LPS (x and y flipped, affine adjusted) must give the same RAS arrays.
    ornt = np.array([[0, -1], [1, -1], [2, 1]], dtype=float)
    for sub, name in (("images", "TS_0001_0000.nii.gz"), ("labels", "TS_0001.nii.gz")):
        img = nib.load(str(real_ct_dir / sub / name))
        data = nib.orientations.apply_orientation(np.asarray(img.dataobj), ornt)
        affine = img.affine @ nib.orientations.inv_ornt_aff(ornt, img.shape)
        (tmp_path / "in" / sub).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "in" / sub / name))
    assert preprocess_dataset(tmp_path / "in", tmp_path / "out").failed == []
    flipped = SliceStore(tmp_path / "out").volume("TS_0001")
    original = real_store.volume("TS_0001")
    assert np.abs(flipped[0] - original[0]).max() < 1e-3
    assert np.mean(flipped[1] == original[1]) > 0.999


def test_store_index_matches_arrays(synth_store):
    store = synth_store
    assert set(store.labelled_cases()) == {"SYN_Tr_0001", "SYN_Tr_0002", "SYN_Tr_0003"}
    assert set(store.unlabelled_cases()) == {"SYN_Un_0001", "SYN_Un_0002"}
    assert len(store) == sum(store.volume(c)[0].shape[0] for c in store.cases)
    for idx in store.slice_ids(["SYN_Tr_0002"])[::3]:
        label = store.label(int(idx))
        assert store.organs(int(idx)) == frozenset(np.unique(label).tolist()) - {0}
        assert store.image(int(idx)).shape == store.shape(int(idx)) == label.shape
        np.testing.assert_array_equal(
            store.image_region(int(idx), (5, 7), (20, 30)), store.image(int(idx))[5:25, 7:37]
        )
    organs = set().union(*(store.organs(int(i)) for i in store.slice_ids(store.labelled_cases())))
    assert organs == set(range(1, 14))
    unlabelled = int(store.slice_ids(["SYN_Un_0001"])[0])
    with pytest.raises(DataError, match="unlabelled"):
        store.label(unlabelled)
    assert store.min_shape() == tuple(store.shapes(store.slice_ids()).min(axis=0))


def test_synthetic_round_trip_headers_vary(synth_dir, synth_store):
    headers = [nib.load(str(p)) for p in sorted((synth_dir / "images").glob("*.nii.gz"))]
    assert len({nib.aff2axcodes(h.affine) for h in headers}) > 1  # varied orientation
    assert len({tuple(np.round(h.header.get_zooms(), 2)) for h in headers}) == len(headers)  # varied spacing
    vol, label = synth_store.volume("SYN_Tr_0001")
    assert vol.shape[1] >= 96 and vol.shape[2] >= 96
    hu = vol * 1000 - 500
    from ioussl.science.data.synth import ORGANS

    for organ, code in (("aorta", 5), ("liver", 1)):  # the phantom's HU survive reorientation and resampling
        assert abs(float(np.median(hu[label == code])) - ORGANS[organ][1]) < 40, organ


def test_resume_skips_done_cases_and_redoes_missing(synth_dir, tmp_path):
    first = preprocess_dataset(synth_dir, tmp_path)
    fingerprint = SliceStore(tmp_path).fingerprint
    again = preprocess_dataset(synth_dir, tmp_path)
    assert again.done == [] and sorted(again.skipped) == sorted(first.done)
    assert SliceStore(tmp_path).fingerprint == fingerprint
    (tmp_path / "cases" / "SYN_Tr_0002.image.npy").write_bytes(b"truncated")  # simulate a broken write
    redo = preprocess_dataset(synth_dir, tmp_path)
    assert redo.done == ["SYN_Tr_0002"]
    assert SliceStore(tmp_path).fingerprint == fingerprint  # same inputs, same bytes


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="not a slice store"):
        SliceStore(tmp_path)


def _copy_case(synth_dir, dest, case="SYN_Tr_0001"):
    for sub, name in (("images", f"{case}_0000.nii.gz"), ("labels", f"{case}.nii.gz")):
        (dest / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(synth_dir / sub / name, dest / sub / name)


def _rewrite(path, change):
    img = nib.load(str(path))
    data, affine = change(np.asarray(img.dataobj), img.affine.copy())
    nib.save(nib.Nifti1Image(data, affine), str(path))


def test_bad_inputs_fail_alone_with_the_file_named(synth_dir, tmp_path):
    src = tmp_path / "in"
    for case in ("SYN_Tr_0001", "SYN_Tr_0002", "SYN_Tr_0003"):
        _copy_case(synth_dir, src, case)
    bad = {
        "corrupt": src / "images" / "BAD_A_0000.nii.gz",
        "truncated": src / "images" / "BAD_B_0000.nii.gz",
    }
    bad["corrupt"].write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    full = (src / "images" / "SYN_Tr_0001_0000.nii.gz").read_bytes()
    bad["truncated"].write_bytes(full[: len(full) // 2])
    for name in ("BAD_A", "BAD_B"):
        shutil.copy(src / "labels" / "SYN_Tr_0001.nii.gz", src / "labels" / f"{name}.nii.gz")
    _rewrite(
        src / "labels" / "SYN_Tr_0002.nii.gz", lambda d, a: (np.where(d == 3, 14, d).astype(np.uint8), a)
    )
    _rewrite(src / "labels" / "SYN_Tr_0003.nii.gz", lambda d, a: (d, a @ np.diag([2.0, 1, 1, 1])))
    report = preprocess_dataset(src, tmp_path / "out")
    reasons = dict(report.failed)
    assert report.done == ["SYN_Tr_0001"]
    assert "BAD_A_0000.nii.gz: cannot read NIfTI" in reasons["BAD_A"]
    assert "BAD_B_0000.nii.gz: cannot read NIfTI" in reasons["BAD_B"]
    assert "SYN_Tr_0002.nii.gz: label values 14 outside 0..13" in reasons["SYN_Tr_0002"]
    assert "SYN_Tr_0003.nii.gz: label affine differs" in reasons["SYN_Tr_0003"]
    assert all("\n" not in r for r in reasons.values())
    assert SliceStore(tmp_path / "out").cases == ["SYN_Tr_0001"]  # the good case is stored


def test_shape_mismatch_and_missing_label_and_empty_folder(synth_dir, tmp_path):
    src = tmp_path / "in"
    _copy_case(synth_dir, src)
    _rewrite(src / "labels" / "SYN_Tr_0001.nii.gz", lambda d, a: (d[:-1], a))
    shutil.copy(synth_dir / "images" / "SYN_Tr_0002_0000.nii.gz", src / "images")
    report = preprocess_dataset(src, tmp_path / "out")
    reasons = dict(report.failed)
    assert "SYN_Tr_0001.nii.gz: label shape" in reasons["SYN_Tr_0001"]
    assert "no label SYN_Tr_0002.nii.gz" in reasons["SYN_Tr_0002"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no cases found"):
        discover_cases(tmp_path / "empty")


def test_settings_change_refuses_to_mix_stores(synth_dir, tmp_path):
    from ioussl.science.data.preprocess import PreprocessSettings

    preprocess_dataset(synth_dir, tmp_path)
    with pytest.raises(DataError, match="other settings"):
        preprocess_dataset(synth_dir, tmp_path, PreprocessSettings(min_size=128))
    assert json.loads((tmp_path / "store.json").read_text())["format_version"] == 2


def test_a_format_1_store_folder_is_brought_up_to_format_2_on_resume(synth_dir, synth_store, tmp_path):
    # Stores made before the CT check and grid records: no allow_non_ct setting, no grid, no label copy.
    shutil.copytree(synth_store.root, tmp_path / "store")
    settings = json.loads((tmp_path / "store" / "settings.json").read_text())
    settings.pop("allow_non_ct")
    (tmp_path / "store" / "settings.json").write_text(json.dumps(settings))
    for meta_path in (tmp_path / "store" / "cases").glob("*.meta.json"):
        meta = json.loads(meta_path.read_text())
        meta.pop("grid")
        meta_path.write_text(json.dumps(meta))
    (tmp_path / "store" / "cases" / "SYN_Tr_0001.source_label.nii.gz").unlink()
    report = preprocess_dataset(synth_dir, tmp_path / "store")
    assert sorted(report.done) == sorted(synth_store.cases) and report.failed == []
    assert SliceStore(tmp_path / "store").fingerprint == synth_store.fingerprint


def test_the_store_keeps_each_labelled_case_original_label_and_grid(synth_dir, synth_store):
    for case in synth_store.labelled_cases():
        label, spacing = synth_store.source_label(case)
        original = nib.load(str(synth_dir / "labels" / f"{case}.nii.gz"))
        np.testing.assert_array_equal(label, np.asarray(original.dataobj))
        assert spacing == pytest.approx(original.header.get_zooms())
        grid = synth_store.source_grid(case)
        assert grid["source_shape"] == list(original.shape)
        assert grid["shape"] == list(np.transpose(synth_store.volume(case)[1], (1, 2, 0)).shape)
        assert all(s >= 0 and e <= r for s, e, r in zip(grid["crop_start"], grid["crop_end"],
                                                        grid["resampled_shape"], strict=True))  # fmt: skip
    with pytest.raises(DataError, match="no copy of its original label"):
        synth_store.source_label(synth_store.unlabelled_cases()[0])


def test_reference_imgs_naming_and_stray_files(synth_dir, tmp_path):
    _copy_case(synth_dir, tmp_path)
    (tmp_path / "images").rename(tmp_path / "imgs")
    (tmp_path / "imgs" / "notes.txt").write_text("not data")
    (tmp_path / "imgs" / ".DS_Store").write_bytes(b"")
    cases, problems = discover_cases(tmp_path)
    assert [c.case for c in cases] == ["SYN_Tr_0001"] and problems == []
    assert cases[0].label.name == "SYN_Tr_0001.nii.gz"


@pytest.mark.slow  # spawns two processes that each import torch and MONAI (~10 s on 2 cores)
def test_parallel_workers_give_the_same_store(synth_dir, synth_store, tmp_path):
    report = preprocess_dataset(synth_dir, tmp_path, workers=2)
    assert sorted(report.done) == sorted(synth_store.cases) and report.failed == []
    assert SliceStore(tmp_path).fingerprint == synth_store.fingerprint
