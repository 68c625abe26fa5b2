"""End-to-end tiny runs: pretrain then fine-tune on synthetic and real CT, resume equivalence, bad input.

Stores are built with the data layer (synth_dataset / preprocess_dataset). The real example folder has one
labelled CT; its upper and lower halves become two cases so fine-tuning has a train and a val case.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import signal
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from ioussl import profiles, runfiles
from ioussl.config import RunConfig
from ioussl.errors import DataError, TrainingError
from ioussl.science.train import checkpoint as ckpt
from ioussl.science.train import losses, pretrain
from ioussl.science.train.finetune import run_finetune
from ioussl.science.train.pretrain import run_pretrain

REAL_CT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "totalseg-example"


def _store(source: Path, out: Path) -> Path:
    from ioussl.science.data.preprocess import preprocess_dataset

    report = preprocess_dataset(source, out)
    assert report.failed == []
    return out


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict[str, str]:
    from ioussl.science.data.synth import synth_dataset

    root = tmp_path_factory.mktemp("synthetic")
    synth_dataset(root / "nifti", cases=3, unlabelled=1, seed=0, size=96, slices=10)
    split = root / "split.json"
    split.write_text(json.dumps({"train": ["SYN_Tr_0001"], "val": ["SYN_Tr_0002"], "test": ["SYN_Tr_0003"]}))
    return {"store": str(_store(root / "nifti", root / "store")), "split": str(split)}


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> dict[str, str]:
    if not (REAL_CT / "labels").is_dir():
        pytest.skip(f"real CT volumes absent: expected {REAL_CT} (../shared/data beside the repository)")
    import nibabel as nib

    root = tmp_path_factory.mktemp("real")
    (root / "nifti" / "images").mkdir(parents=True)
    (root / "nifti" / "labels").mkdir()
    (root / "nifti" / "unlabelled").mkdir()
    for image in (REAL_CT / "unlabelled").glob("*.nii.gz"):
        (root / "nifti" / "unlabelled" / image.name).symlink_to(image)
    image, label = (
        nib.load(REAL_CT / "images" / "TS_0001_0000.nii.gz"),
        nib.load(REAL_CT / "labels" / "TS_0001.nii.gz"),
    )
    half = image.shape[2] // 2
    for name, cut in (("TS_0001lo", slice(0, half)), ("TS_0001hi", slice(half, None))):
        nib.save(image.slicer[:, :, cut], root / "nifti" / "images" / f"{name}_0000.nii.gz")
        nib.save(label.slicer[:, :, cut], root / "nifti" / "labels" / f"{name}.nii.gz")
    split = root / "split.json"
    split.write_text(json.dumps({"train": ["TS_0001lo"], "val": ["TS_0001hi"]}))
    return {"store": str(_store(root / "nifti", root / "store")), "split": str(split)}


class Run(NamedTuple):
    """A finished run that several tests read (and none changes): its config, directory, result and what it
    printed."""

    cfg: RunConfig
    run_dir: Path
    result: dict
    printed: str


def _run(train, cfg: RunConfig, run_dir: Path) -> Run:  # type: ignore[no-untyped-def]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        result = train(cfg, run_dir)
    return Run(cfg, run_dir, result, printed.getvalue())


@pytest.fixture(scope="module")
def pretrained(synthetic, tmp_path_factory) -> Run:
    """The tiny profile's pretraining on the synthetic store, run once for the tests that read it."""
    return _run(run_pretrain, profiles.tiny("pretrain", store=synthetic["store"]), tmp_path_factory.mktemp("pre"))


@pytest.fixture(scope="module")
def finetuned(synthetic, tmp_path_factory) -> Run:
    """The tiny profile's fine-tuning from scratch on the synthetic split, run once for the tests that read it."""
    cfg = profiles.tiny("finetune", store=synthetic["store"], split=synthetic["split"])
    return _run(run_finetune, cfg, tmp_path_factory.mktemp("ft"))


def _pretrain_then_finetune(data: dict[str, str], tmp_path: Path) -> tuple[dict, dict]:
    pre = run_pretrain(profiles.tiny("pretrain", store=data["store"]), tmp_path / "pre")
    cfg = profiles.tiny("finetune", store=data["store"], split=data["split"])
    return pre, run_finetune(cfg, tmp_path / "ft", Path(pre["checkpoint"]))


def _check_finetune_result(result: dict) -> None:
    assert 0.0 <= result["dsc"] <= 1.0 and 0.0 <= result["dsc_3d"] <= 1.0
    assert result["encoder"]["matched"] > 0 and result["encoder"]["missing"] == []
    organs = set(result["per_organ"])
    assert len(organs) == 13 and "background" not in organs
    for scores in result["per_case"].values():
        assert all(0.0 <= v <= 1.0 for v in scores.values())
    lines = list(runfiles.read_jsonl(Path(result["checkpoint"]).parents[1] / runfiles.METRICS))
    assert [r["epoch"] for r in lines] == [0, 1, 2]
    assert all(math.isfinite(r["loss"]) and "val_dsc" in r for r in lines)
    best = max(r["val_dsc"] for r in lines)
    assert result["dsc"] == pytest.approx(best)  # the run's score is the best checkpoint's
    assert lines[0]["lr"] < lines[1]["lr"]  # still warming up in epoch 0
    _check_flare_section(result)


def _check_flare_section(result: dict) -> None:
    """FLARE 2022's scores of the best checkpoint: on the test cases when the split has them, else val."""
    flare = result["flare"]
    part = "test" if "test" in result else "val"
    assert flare["part"] == part
    assert set(flare["per_case"]) == set(result[part]["per_case"] if part == "test" else result["per_case"])
    assert 0.0 <= flare["dsc"] <= 1.0 and 0.0 <= flare["nsd"] <= 1.0
    assert set(flare["per_organ"]) == set(result["per_organ"])
    for organs in flare["per_case"].values():
        assert all(v is None or 0.0 <= v <= 1.0 for scores in organs.values() for v in scores.values())
    json.dumps(flare, allow_nan=False)


@pytest.mark.slow
def test_tiny_pretrain_then_finetune_on_synthetic_data(synthetic, pretrained, tmp_path):
    pre = pretrained.result
    cfg = profiles.tiny("finetune", store=synthetic["store"], split=synthetic["split"])
    result = run_finetune(cfg, tmp_path / "ft", Path(pre["checkpoint"]))
    assert math.isfinite(pre["final_loss"]) and -1.0 <= pre["final_loss"] <= 1.0
    assert 0.0 <= pre["final_collapse"] <= 1.0 and pre["steps"] == 6
    lines = list(runfiles.read_jsonl(pretrained.run_dir / runfiles.METRICS))
    keys = {"stage", "epoch", "step", "loss", "lr", "collapse", "fallback_rate", "pairs_per_s", "time"}
    assert len(lines) == 2 and all(keys <= set(r) for r in lines)
    _check_finetune_result(result)
    assert set(result["test"]["per_case"]) == {"SYN_Tr_0003"} and 0.0 <= result["test"]["dsc"] <= 1.0
    # The fine-tune started from this pretrain's encoder, all of it (not a fresh network with a matching name).
    encoder = ckpt.load(Path(pre["checkpoint"]))
    assert result["encoder"]["matched"] == len(encoder["model"]) and result["encoder"]["unexpected"] == []
    assert result["encoder"]["source_config_hash"] == encoder["config_hash"]
    assert len({line["loss"] for line in lines}) == 2  # the pretraining epochs differ: it trained
    # Learning itself (the loss falls, weights move, the DSC rises) is tested in test_learning.py.


@pytest.mark.slow
def test_tiny_pretrain_then_finetune_on_real_ct(real, tmp_path):
    pre, result = _pretrain_then_finetune(real, tmp_path)
    assert math.isfinite(pre["final_loss"])
    _check_finetune_result(result)
    assert set(result["per_case"]) == {"TS_0001hi"}
    assert "test" not in result


class Interrupted(Exception):
    """Stands in for SLURM preempting the job in the middle of an epoch."""


def _interrupt_on_call(monkeypatch, module, name: str, call: int) -> None:
    real_fn, calls = getattr(module, name), []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise Interrupted
        return real_fn(*args, **kwargs)

    monkeypatch.setattr(module, name, flaky)


TIMING = {"time", "elapsed_s", "items_per_s", "pairs_per_s", "crops_per_s", "seconds"}


def _curve(run_dir: Path) -> list[dict]:
    """The metrics lines without their timings: everything else must repeat bit for bit."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in runfiles.read_jsonl(run_dir / runfiles.METRICS)]


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            _assert_same_tensors(a[key], b[key])
        elif hasattr(a[key], "dtype"):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def _events(run_dir: Path) -> list[dict]:
    return list(runfiles.read_jsonl(run_dir / runfiles.EVENTS))


def _with_augment_on(cfg: RunConfig, where: str) -> RunConfig:
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, augment_on=where))


@pytest.mark.slow
@pytest.mark.parametrize("augment_on", ["device", "loader"])
def test_interrupted_pretraining_resumes_bit_for_bit(synthetic, pretrained, tmp_path, monkeypatch, augment_on):
    cfg = _with_augment_on(profiles.tiny("pretrain", store=synthetic["store"]), augment_on)
    if cfg == pretrained.cfg:  # the profile's default: the module's pretraining is this straight run
        (tmp_path / "straight").symlink_to(pretrained.run_dir)
        straight = pretrained.result
    else:
        straight = run_pretrain(cfg, tmp_path / "straight")
    with monkeypatch.context() as patch:
        _interrupt_on_call(patch, pretrain, "train_one_epoch_pretrain", call=2)
        with pytest.raises(Interrupted):
            run_pretrain(cfg, tmp_path / "resumed")
    assert len(_curve(tmp_path / "resumed")) == 1  # epoch 0 finished and checkpointed
    assert not any(e["event"] == "resumed" for e in _events(tmp_path / "resumed"))
    resumed = run_pretrain(cfg, tmp_path / "resumed")
    assert [e for e in _events(tmp_path / "resumed") if e["event"] == "resumed"][0]["epoch"] == 1
    assert resumed["steps"] == straight["steps"] and resumed["final_loss"] == straight["final_loss"]
    assert _curve(tmp_path / "straight") == _curve(tmp_path / "resumed")
    for name in (ckpt.LAST, ckpt.ENCODER):
        a, b = (ckpt.load(tmp_path / run / runfiles.CHECKPOINTS / name) for run in ("straight", "resumed"))
        _assert_same_tensors(a["model"], b["model"])
    a, b = (ckpt.load(tmp_path / run / runfiles.CHECKPOINTS / ckpt.LAST) for run in ("straight", "resumed"))
    _assert_same_tensors(a["optimizer"]["state"], b["optimizer"]["state"])


@pytest.mark.slow
def test_interrupted_finetuning_resumes_bit_for_bit(synthetic, finetuned, tmp_path, monkeypatch):
    from ioussl.science.train import finetune

    cfg = profiles.tiny("finetune", store=synthetic["store"], split=synthetic["split"])
    assert cfg.data.augment_on == "device" and cfg == finetuned.cfg  # the module's fine-tune is the straight run
    (tmp_path / "straight").symlink_to(finetuned.run_dir)
    straight = finetuned.result
    with monkeypatch.context() as patch:
        _interrupt_on_call(patch, finetune, "train_one_epoch_seg", call=3)
        with pytest.raises(Interrupted):
            run_finetune(cfg, tmp_path / "resumed")
    resumed = run_finetune(cfg, tmp_path / "resumed")
    assert (resumed["steps"], resumed["best_epoch"], resumed["dsc"]) == (
        straight["steps"], straight["best_epoch"], straight["dsc"])  # fmt: skip
    assert resumed["per_case"] == straight["per_case"]
    assert _curve(tmp_path / "straight") == _curve(tmp_path / "resumed")
    for name in (ckpt.LAST, ckpt.BEST):
        a, b = (ckpt.load(tmp_path / run / runfiles.CHECKPOINTS / name) for run in ("straight", "resumed"))
        _assert_same_tensors(a["model"], b["model"])


class Requeued(BaseException):
    """Stands in for submitit's handler of the warning signal: it requeues the job and ends the process."""


@contextlib.contextmanager
def _warned_at(monkeypatch, trainingdata_name: str, module, epoch: int, step: int, signum=signal.SIGUSR2):
    """Under stand-ins for submitit's handlers (USR2: requeue; SIGTERM: ignored), send ``signum`` while the
    batch of (``epoch``, global ``step``) is fed: the job bridge defers both to the next step boundary."""
    from ioussl.science.train import trainingdata

    real_feed = getattr(trainingdata, trainingdata_name)

    def warning_feed(cfg, runtime):
        feed = real_feed(cfg, runtime)

        def fed(batch, at_epoch, at_step):
            if (at_epoch, at_step) == (epoch, step):
                os.kill(os.getpid(), signum)
            return feed(batch, at_epoch, at_step)

        return fed

    def requeue(signum, frame):
        raise Requeued

    def bypass(signum, frame):
        pass

    monkeypatch.setattr(module, trainingdata_name, warning_feed)
    previous = signal.signal(signal.SIGUSR2, requeue), signal.signal(signal.SIGTERM, bypass)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR2, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def _resumed_event(run_dir: Path) -> dict:
    return [e for e in _events(run_dir) if e["event"] == "resumed"][0]


def _warned_run(straight: Run, run_dir: Path, monkeypatch, feed: str, module, epoch: int, step: int,
                signum=signal.SIGUSR2, ends=Requeued) -> dict:  # fmt: skip
    """Run ``straight``'s config through the job bridge, signalled during (``epoch``, ``step``); return the
    ``last.pt`` it left when ``ends`` ended it."""
    from ioussl.submit.entrypoint import run_stage

    run_dir.mkdir()
    (run_dir / runfiles.CONFIG).write_text(straight.cfg.to_json())
    with monkeypatch.context() as patch, _warned_at(patch, feed, module, epoch, step, signum):
        with pytest.raises(ends):
            run_stage(run_dir)
    return ckpt.load(run_dir / runfiles.CHECKPOINTS / ckpt.LAST)


@pytest.mark.slow
def test_a_warned_pretraining_stops_at_the_next_step_checkpoints_it_and_resumes_bit_for_bit(
    pretrained, tmp_path, monkeypatch
):
    from ioussl.submit.entrypoint import run_stage

    run_dir = tmp_path / "warned"
    stopped = _warned_run(pretrained, run_dir, monkeypatch, "pretrain_feed", pretrain, epoch=1, step=4)
    # Epoch 1 holds steps 3-5: warned during step 4, the job wrote step 4's state and requeued (not epoch 0's).
    assert (stopped["epoch"], stopped["step"], stopped["part"]["done"]) == (1, 5, 2)
    assert [e["event"] for e in _events(run_dir)] == ["started", "interrupted"]
    assert len(_curve(run_dir)) == 1  # epoch 1's line comes when the epoch ends
    resumed = run_stage(run_dir)
    assert _resumed_event(run_dir) == {**_resumed_event(run_dir), "epoch": 1, "step": 5, "epoch_steps_done": 2}
    assert resumed["final_loss"] == pretrained.result["final_loss"]
    assert resumed["final_collapse"] == pretrained.result["final_collapse"]
    assert _curve(run_dir) == _curve(pretrained.run_dir)
    for name in (ckpt.LAST, ckpt.ENCODER):
        a, b = (ckpt.load(run / runfiles.CHECKPOINTS / name) for run in (pretrained.run_dir, run_dir))
        _assert_same_tensors(a["model"], b["model"])
    a, b = (ckpt.load(run / runfiles.CHECKPOINTS / ckpt.LAST) for run in (pretrained.run_dir, run_dir))
    _assert_same_tensors(a["optimizer"]["state"], b["optimizer"]["state"])
    assert "part" not in b


@pytest.mark.slow
def test_a_warned_fine_tune_stops_at_the_next_step_and_resumes_bit_for_bit(finetuned, tmp_path, monkeypatch):
    from ioussl.science.train import finetune
    from ioussl.submit.entrypoint import run_stage

    run_dir = tmp_path / "warned"
    stopped = _warned_run(finetuned, run_dir, monkeypatch, "finetune_feed", finetune, epoch=1, step=3)
    assert (stopped["epoch"], stopped["step"], stopped["part"]["done"]) == (1, 4, 1)
    assert stopped["progress"]["step"] == 3 and stopped["progress"]["last_epoch"] == 0
    resumed = run_stage(run_dir)
    assert _resumed_event(run_dir)["epoch_steps_done"] == 1
    straight = finetuned.result
    assert (resumed["steps"], resumed["best_epoch"], resumed["dsc"], resumed["per_case"]) == (
        straight["steps"], straight["best_epoch"], straight["dsc"], straight["per_case"])  # fmt: skip
    assert _curve(run_dir) == _curve(finetuned.run_dir)
    for name in (ckpt.LAST, ckpt.BEST):
        a, b = (ckpt.load(run / runfiles.CHECKPOINTS / name) for run in (finetuned.run_dir, run_dir))
        _assert_same_tensors(a["model"], b["model"])


def test_a_warning_on_an_epoch_s_last_step_requeues_after_its_checkpoint(pretrained, tmp_path, monkeypatch):
    run_dir = tmp_path / "warned"
    stopped = _warned_run(pretrained, run_dir, monkeypatch, "pretrain_feed", pretrain, epoch=0, step=2)
    assert (stopped["epoch"], stopped["step"]) == (0, 3) and "part" not in stopped  # the epoch's own checkpoint
    assert len(_curve(run_dir)) == 1


def test_sigterm_stops_at_the_next_step_and_leaves_the_requeue_to_slurm(pretrained, tmp_path, monkeypatch):
    """SLURM sends SIGTERM when a preemption starts (SLURM 22.05 sends no USR2 then), and kills the job after
    the grace time: the run checkpoints the step, then waits for the kill (here cut short) without requeueing."""
    from ioussl.science.train.stopping import StopNow
    from ioussl.submit import entrypoint

    monkeypatch.setattr(entrypoint, "TERMINATED_WAIT_S", 0.0)
    run_dir = tmp_path / "terminated"
    stopped = _warned_run(pretrained, run_dir, monkeypatch, "pretrain_feed", pretrain, epoch=1, step=3,
                          signum=signal.SIGTERM, ends=StopNow)  # fmt: skip
    assert (stopped["epoch"], stopped["step"], stopped["part"]["done"]) == (1, 4, 1)
    assert [e["event"] for e in _events(run_dir)] == ["started", "interrupted"]  # no "requeued": SLURM does it


def test_metrics_lines_carry_what_a_live_status_needs(pretrained, finetuned):
    lines = list(runfiles.read_jsonl(pretrained.run_dir / runfiles.METRICS))
    status = {"epoch", "epochs", "step", "steps_total", "time", "elapsed_s", "items_per_s", "loss"}
    kept = {"stage", "lr", "collapse", "fallback_rate", "mean_iou", "pairs_per_s", "seconds"}
    assert all(status | kept <= set(r) for r in lines)
    assert [(r["epoch"], r["epochs"], r["step"], r["steps_total"]) for r in lines] == [(0, 2, 3, 6), (1, 2, 6, 6)]
    assert lines[0]["elapsed_s"] <= lines[1]["elapsed_s"] and lines[1]["items_per_s"] == lines[1]["pairs_per_s"]
    out = pretrained.printed.splitlines()
    assert out[0].startswith("[ioussl pretrain] starting 2 epochs x 3 steps on cpu")
    assert [line.split(" step ")[0] for line in out[1:3]] == [f"[ioussl pretrain] epoch {e}/2" for e in (1, 2)]
    assert out[3].startswith("[ioussl pretrain] done: 2 epochs, 6 steps, final loss")
    ft = finetuned.cfg
    lines = list(runfiles.read_jsonl(finetuned.run_dir / runfiles.METRICS))
    kept = {"stage", "lr", "crops_per_s", "seconds", "val_dsc", "val_dsc_3d", "best_dsc", "bad_evals"}
    assert all(status | kept | {"last_val_dsc", "last_val_epoch"} <= set(r) for r in lines)
    assert all(r["last_val_dsc"] == r["val_dsc"] and r["last_val_epoch"] == r["epoch"] for r in lines)
    crops_per_slice = ft.finetune.crops_per_slice
    assert all(r["items_per_s"] == pytest.approx(r["crops_per_s"] / crops_per_slice) for r in lines)
    assert "val DSC" in finetuned.printed


def test_non_finite_loss_stops_naming_the_step(synthetic, tmp_path, monkeypatch):
    monkeypatch.setattr(losses, "simsiam_loss", lambda *tensors: tensors[1].sum() * float("nan"))
    with pytest.raises(TrainingError, match="non-finite loss nan at step 0"):
        run_pretrain(profiles.tiny("pretrain", store=synthetic["store"]), tmp_path)
    assert not (tmp_path / runfiles.RESULT).exists()


def test_store_that_does_not_match_the_config_is_refused(synthetic, tmp_path):
    big = profiles.tiny("pretrain", store=synthetic["store"])
    big = dataclasses.replace(big, data=dataclasses.replace(big.data, crop=160))
    with pytest.raises(DataError, match="smaller than the configured crop 160"):
        run_pretrain(big, tmp_path / "a")
    with pytest.raises(DataError, match="does not exist"):
        run_pretrain(profiles.tiny("pretrain", store=str(tmp_path / "nowhere")), tmp_path / "b")
    bad_split = tmp_path / "split.json"
    bad_split.write_text(json.dumps({"train": ["SYN_Tr_0001"], "val": ["FLARE22_Tr_0001"]}))
    cfg = profiles.tiny("finetune", store=synthetic["store"], split=str(bad_split))
    with pytest.raises(DataError, match="FLARE22_Tr_0001"):
        run_finetune(cfg, tmp_path / "c")
    cfg = profiles.tiny("finetune", store=synthetic["store"], split=synthetic["split"])
    few = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, out_channels=4))
    with pytest.raises(DataError, match="out_channels is 4"):
        run_finetune(few, tmp_path / "d")


def test_resume_from_a_truncated_or_foreign_checkpoint_fails_clearly(synthetic, tmp_path):
    cfg = profiles.tiny("pretrain", store=synthetic["store"])
    last = tmp_path / runfiles.CHECKPOINTS / ckpt.LAST
    last.parent.mkdir(parents=True)
    last.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(TrainingError, match=r"last\.pt is truncated or corrupt"):
        run_pretrain(cfg, tmp_path)
    other: RunConfig = dataclasses.replace(cfg, seed=cfg.seed + 1)
    ckpt.save_atomic({**ckpt.describe(other, "last")}, last)
    with pytest.raises(TrainingError, match="another config"):
        run_pretrain(cfg, tmp_path)
    ckpt.save_atomic({**ckpt.describe(cfg, "last"), "store": "0123456789abcdef"}, last)
    with pytest.raises(TrainingError, match="store changed"):
        run_pretrain(cfg, tmp_path)
    from ioussl.science.data.store import SliceStore

    store = SliceStore(synthetic["store"]).fingerprint
    ckpt.save_atomic({**ckpt.describe(cfg, "last"), "store": store, "epoch": "0", "model": {}}, last)
    with pytest.raises(TrainingError, match=r"lacks a valid optimizer, scaler, rng, epoch, step"):
        run_pretrain(cfg, tmp_path)
    assert not (tmp_path / runfiles.EVENTS).exists()  # nothing resumed


def test_compile_switch_plumbing_trains_through_the_wrapper_and_keeps_plain_checkpoints(
    synthetic, tmp_path, monkeypatch
):
    """The loops' side of ``runtime.compile = true``: every training forward goes through the wrapper
    torch.compile returns, evaluation and checkpoints use the plain model. The wrapper is a stand-in here
    (compiling the SwinUNETR takes minutes on a CPU); test_compile.py compiles a tiny model for real and
    makes the compiler fail to show the eager fallback."""
    import torch

    calls = []

    class Compiled(torch.nn.Module):  # the shape of torch.compile's OptimizedModule, counting calls
        def __init__(self, module):
            super().__init__()
            self._orig_mod = module

        def forward(self, x):
            calls.append(x.shape[0])
            return self._orig_mod(x)

    monkeypatch.setattr(torch, "compile", Compiled)
    base = profiles.tiny("pretrain", store=synthetic["store"])
    cfg = dataclasses.replace(base, runtime=dataclasses.replace(base.runtime, compile=True))
    result = run_pretrain(cfg, tmp_path / "pre")
    assert len(calls) == 2 * result["steps"]  # two views per step, all through the compiled module
    saved = ckpt.load(tmp_path / "pre" / "checkpoints" / "last.pt")["model"]
    assert saved and not any("_orig_mod" in key for key in saved)
    ft = profiles.tiny("finetune", store=synthetic["store"], split=synthetic["split"])
    ft = dataclasses.replace(ft, runtime=dataclasses.replace(ft.runtime, compile=True))
    calls.clear()
    out = run_finetune(ft, tmp_path / "ft", Path(result["checkpoint"]))
    assert len(calls) == out["steps"] and 0.0 <= out["dsc"] <= 1.0
