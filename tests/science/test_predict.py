"""`ioussl predict`: NIfTI files on the case's original grid and overlay pictures, on the synthetic store.

The geometry is checked with a perfect predictor (the store's own labels): the written NIfTI must be the
original label file voxel for voxel, with the CT's affine. The command is run end to end on a planned study
whose fine-tune has a real best checkpoint (an untrained network of the run's architecture).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from datafix import *  # noqa: F403 (session fixtures; a conftest.py here would collide with other branches)
from PIL import Image
from registryfix import valid_result
from typer.testing import CliRunner

from ioussl import runfiles
from ioussl.cli import app
from ioussl.errors import ConfigError, DataError
from ioussl.science.evaluate import overlays
from ioussl.science.evaluate.prediction import predict_cases


def _oracle(store):  # type: ignore[no-untyped-def]
    return lambda case: np.asarray(store.volume(case)[1])


def test_a_perfect_prediction_is_the_original_label_file_with_the_cts_affine(synth_store, synth_dir, tmp_path):
    cases = synth_store.labelled_cases()[:2]
    written = predict_cases(synth_store, cases, _oracle(synth_store), tmp_path / "out")
    assert [w.case for w in written] == cases
    for case in written:
        saved = nib.load(case.nifti)
        truth = nib.load(synth_dir / "labels" / f"{case.case}.nii.gz")
        ct = nib.load(synth_dir / "images" / f"{case.case}_0000.nii.gz")
        np.testing.assert_array_equal(np.asarray(saved.dataobj), np.asarray(truth.dataobj))
        np.testing.assert_allclose(saved.affine, ct.affine, atol=1e-6)
        assert saved.header.get_data_dtype() == np.uint8 and int(saved.header["sform_code"]) == 1
        assert sum(case.voxels.values()) == int((np.asarray(truth.dataobj) > 0).sum())


def test_pictures_show_the_ct_the_truth_and_the_prediction(synth_store, tmp_path):
    case = synth_store.labelled_cases()[0]
    ct, truth = synth_store.volume(case)
    nothing = lambda _case: np.zeros_like(truth)  # noqa: E731
    (perfect,) = predict_cases(synth_store, [case], _oracle(synth_store), tmp_path / "perfect")
    (empty,) = predict_cases(synth_store, [case], nothing, tmp_path / "empty", slices=[perfect.slices[0]])
    area = (truth > 0).reshape(len(truth), -1).sum(axis=1)
    assert int(np.argmax(area)) in perfect.slices and len(perfect.slices) == 3  # the fullest slice, two more
    assert [p.name for p in perfect.pictures] == [f"{case}_z{z:03d}.png" for z in perfect.slices]
    shot, blank = (np.asarray(Image.open(io.BytesIO(p.pictures[0].read_bytes())).convert("RGB")) for p in (perfect,
                                                                                                           empty))
    height, width = truth.shape[2], truth.shape[1]  # a stored slice is (X, Y); shown with Y as rows
    scale = max(1, -(-overlays.MIN_PANEL // min(height, width)))
    top, side = overlays.TITLE_HEIGHT, width * scale + 6
    panel = lambda image, i: image[top:top + height * scale, i * side:i * side + width * scale]  # noqa: E731
    # A perfect prediction looks like the ground truth; no prediction looks like the bare CT; the truth has colour.
    np.testing.assert_array_equal(panel(shot, 2), panel(shot, 1))
    np.testing.assert_array_equal(panel(blank, 2), panel(blank, 0))
    assert not np.array_equal(panel(shot, 1), panel(shot, 0))
    assert shot.shape[1] == 3 * side - 6


def test_slices_are_shown_anterior_up_and_the_patients_right_on_the_left():
    stored = np.zeros((4, 3))  # (X: right-left axis of RAS, Y: posterior-anterior)
    stored[3, 2] = 1  # the most right (X max) and most anterior (Y max) voxel
    shown = overlays.radiological(stored)
    assert shown.shape == (3, 4) and shown[0, 0] == 1  # top row (anterior), first column (patient's right)


def test_the_legend_names_the_organs_present_and_never_the_background():
    labels = np.zeros((5, 5), dtype=np.uint8)
    labels[1, 1], labels[2, 2] = 1, 13
    assert overlays.present_organs(labels) == {1, 13} and overlays.present_organs(np.zeros((2, 2))) == set()


def test_unknown_cases_and_slices_out_of_range_are_one_line(synth_store, tmp_path):
    case = synth_store.labelled_cases()[0]
    with pytest.raises(DataError, match="unknown case 'nope'"):
        predict_cases(synth_store, [case, "nope"], _oracle(synth_store), tmp_path)
    assert not list(tmp_path.iterdir())  # checked before anything is written
    depth = synth_store.volume(case)[0].shape[0]
    with pytest.raises(ConfigError, match=f"has slices 0..{depth - 1} on the stored grid; got {depth}"):
        predict_cases(synth_store, [case], _oracle(synth_store), tmp_path, slices=[depth])


def test_an_unlabelled_case_gets_ct_and_prediction_only(synth_store, tmp_path):
    case = synth_store.unlabelled_cases()[0]
    ct, _ = synth_store.volume(case)
    stripe = np.zeros(ct.shape, dtype=np.uint8)
    stripe[len(ct) // 3, 5:20, 5:20] = 1
    (written,) = predict_cases(synth_store, [case], lambda _c: stripe, tmp_path)
    assert written.slices == (len(ct) // 3,) and written.voxels.keys() == {"liver"}
    picture = Image.open(written.pictures[0])
    width = ct.shape[1] * max(1, -(-overlays.MIN_PANEL // min(ct.shape[1:])))
    assert picture.width == 2 * width + 6  # two panels and the gap between them


# ---- the command, end to end ----

STUDY = """
[study]
name = "pred"
runs_dir = "runs"
[data]
store = "{store}"
crop = 96
[model]
feature_size = 12
[runtime]
device = "cpu"
precision = "fp32"
[pretrain]
seeds = [1]
[finetune]
seeds = [1]
baseline_seeds = [1]
sw_batch_size = 8
amp = false
[[intervals]]
i_min = 0.3
i_max = 0.6
"""


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):  # type: ignore[no-untyped-def]
    """One small labelled case (96 x 96 x 12 stored voxels): a whole-case prediction takes seconds on CPU."""
    from ioussl.science.data.preprocess import preprocess_dataset
    from ioussl.science.data.store import SliceStore
    from ioussl.science.data.synth import synth_dataset

    root = tmp_path_factory.mktemp("small")
    synth_dataset(root / "nifti", cases=1, seed=0, size=56, slices=8, spacing_mm=1.0)
    assert preprocess_dataset(root / "nifti", root / "store").failed == []
    return SliceStore(root / "store"), root / "nifti"


@pytest.fixture
def completed(small_store, tmp_path, db):  # type: ignore[no-untyped-def]
    """A planned study whose baseline fine-tune completed with a real best.pt (untrained weights)."""
    import torch

    synth_store = small_store[0]

    from ioussl.config import RunConfig
    from ioussl.plan.expand import job_config_json
    from ioussl.plan.service import plan_grid
    from ioussl.registry import open_registry, repo
    from ioussl.science.models.swin import build_swin_unetr
    from ioussl.science.train import checkpoint as ckpt
    from ioussl.status import RunStatus
    from ioussl.track.sync import sync

    (tmp_path / "pred.toml").write_text(STUDY.format(store=synth_store.root))
    plan_grid(tmp_path / "pred.toml", db, check_data=False)
    registry = open_registry(db)
    with registry.session() as session:
        runs = repo.study_runs(session, "pred")
        tuned = next(r for r in runs if r.stage == "finetune" and r.parent_id is None)  # the baseline
        cfg = RunConfig.from_json(job_config_json(tuned.config, tuned.study.base_dir))
        torch.manual_seed(0)
        best = Path(tuned.run_dir) / runfiles.CHECKPOINTS / ckpt.BEST
        best.parent.mkdir(parents=True)
        ckpt.save_atomic({**ckpt.describe(cfg, "best"), "model": build_swin_unetr(cfg.model, 0.0).state_dict()}, best)
        repo.set_status(session, tuned, RunStatus.SUBMITTING)
        repo.add_attempt(session, run_id=tuned.id, executor="local", job_id="999999", status=RunStatus.PENDING)
        repo.set_status(session, tuned, RunStatus.PENDING)
        payload = valid_result(tuned, checkpoint=str(best), checkpoint_sha256=runfiles.sha256_file(best))
        (Path(tuned.run_dir) / "result.json").write_text(json.dumps(payload))
        ids = {"tuned": tuned.id, "pretrain": next(r.id for r in runs if r.stage == "pretrain"),
               "run_dir": tuned.run_dir, "best": str(best)}
    with registry.session() as session:
        sync(session)
    registry.dispose()
    return db, ids


def _predict(db: str, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["predict", "--db", db, *args])


@pytest.mark.slow
def test_predict_writes_each_case_on_its_original_grid(completed, small_store):
    db, ids = completed
    synth_store, synth_dir = small_store
    case = synth_store.labelled_cases()[0]
    result = _predict(db, ids["tuned"][:6], case, "--slice", "3", "--device", "cpu")
    assert synth_store.volume(case)[0].shape[1:] == (96, 96)  # one window (the crop) per slice
    assert result.exit_code == 0, result.output
    out = Path(ids["run_dir"]) / "predictions"
    assert sorted(p.name for p in out.iterdir()) == [f"{case}.nii.gz", f"{case}_z003.png"]
    assert result.stdout.startswith(f"{case}: {out / (case + '.nii.gz')} (") and "slice(s) 3:" in result.stdout
    saved, ct = nib.load(out / f"{case}.nii.gz"), nib.load(synth_dir / "images" / f"{case}_0000.nii.gz")
    assert saved.shape == ct.shape and np.allclose(saved.affine, ct.affine, atol=1e-6)
    labels = np.asarray(saved.dataobj)
    assert labels.dtype == np.uint8 and labels.max() <= 13


def test_predict_refuses_what_it_cannot_predict_with_in_one_line(completed, small_store, tmp_path):
    db, ids = completed
    synth_store = small_store[0]
    case = synth_store.labelled_cases()[0]
    checks = [
        ((ids["pretrain"], case), f"run {ids['pretrain']} is a pretraining run; predictions come from a fine-tune"),
        ((ids["tuned"], "nope"), "unknown case 'nope'"),
        ((ids["tuned"], case, "--slice", "-1"), "--slice counts from 0; got -1"),
        (("ffffffff", case), "unknown run 'ffffffff'"),
        ((ids["tuned"], case, "--out", str(tmp_path / "study.toml")), "it is a file; give a folder"),
    ]
    (tmp_path / "study.toml").write_text("")
    for args, message in checks:
        result = _predict(db, *args)
        assert result.exit_code == 1 and message in result.stderr and len(result.stderr.splitlines()) == 1, (
            args, result.output)
    Path(ids["best"]).write_bytes(Path(ids["best"]).read_bytes() + b"\0")  # changed after it was recorded
    result = _predict(db, ids["tuned"], case)
    assert result.exit_code == 1 and "has changed since its result was recorded" in result.stderr
    assert not (Path(ids["run_dir"]) / "predictions").exists()
