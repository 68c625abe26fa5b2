"""Learning smoke tests through the real ``run_pretrain`` and ``run_finetune`` on a tiny synthetic store: the
SimSiam loss falls and the encoder's weights move; fine-tuning moves the network and raises its DSC on its own
training slices. A loop that runs but does not learn (a dropped ``optimizer.step``, a zero learning rate, a
detached loss, labels cut differently from their images) fails here, where value-range checks pass.

Tiny but not minimal: Swin depth 1 per stage, 64-pixel crops; a few steps at a learning rate high enough that
learning shows within them (measured: the loss goes from 0.001 to -0.11 in 10 steps, the DSC from 0.02 to
0.18 in 12).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from ioussl import profiles, runfiles
from ioussl.config import RunConfig
from ioussl.science.train import checkpoint as ckpt
from ioussl.science.train import finetune, pretrain
from ioussl.science.train.finetune import run_finetune
from ioussl.science.train.pretrain import run_pretrain

TRAIN, COPY = "SYN_Tr_0001", "SYN_Tr_0002"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict[str, str]:
    """One labelled case, the same case again under another id (the split refuses a case in both parts, so
    the copy is how validation scores the training slices), and one unlabelled case to pretrain on."""
    from ioussl.science.data.preprocess import preprocess_dataset
    from ioussl.science.data.synth import synth_dataset

    root = tmp_path_factory.mktemp("learning")
    synth_dataset(root / "nifti", cases=1, unlabelled=1, seed=0, size=96, slices=10)
    for folder, suffix in (("images", "_0000.nii.gz"), ("labels", ".nii.gz")):
        shutil.copy(root / "nifti" / folder / f"{TRAIN}{suffix}", root / "nifti" / folder / f"{COPY}{suffix}")
    assert preprocess_dataset(root / "nifti", root / "store").failed == []
    split = root / "split.json"
    split.write_text(json.dumps({"train": [TRAIN], "val": [COPY]}))
    return {"store": str(root / "store"), "split": str(split)}


def _small(cfg: RunConfig, **stage: Any) -> RunConfig:
    model = dataclasses.replace(cfg.model, depths=(1, 1, 1, 1))
    if cfg.stage == "pretrain":
        return dataclasses.replace(cfg, model=model, pretrain=dataclasses.replace(cfg.pretrain, **stage))
    return dataclasses.replace(cfg, model=model, finetune=dataclasses.replace(cfg.finetune, **stage))


def _initial_weights(monkeypatch, module) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    """Filled with the trainable weights of the model the run builds, as built (before any step)."""
    weights: dict[str, torch.Tensor] = {}
    real = module.build_state

    def build_state(*args, **kwargs):  # type: ignore[no-untyped-def]
        built = real(*args, **kwargs)
        state = built[0] if isinstance(built, tuple) else built
        weights.update({k: p.detach().clone() for k, p in state.model.named_parameters() if p.requires_grad})
        return built

    monkeypatch.setattr(module, "build_state", build_state)
    return weights


def _moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    """The share of ``before``'s tensors whose values changed in ``after`` (same names)."""
    assert before and set(before) <= set(after)
    return sum(not torch.equal(before[k], after[k].to(before[k].dtype)) for k in before) / len(before)


@pytest.mark.slow
def test_pretraining_lowers_the_simsiam_loss_and_moves_the_encoder(store, tmp_path, monkeypatch):
    cfg = _small(profiles.tiny("pretrain", store=store["store"]), epochs=5, steps_per_epoch=2, base_lr=0.3)
    initial = _initial_weights(monkeypatch, pretrain)
    result = run_pretrain(cfg, tmp_path / "pre")
    losses = [line["loss"] for line in runfiles.read_jsonl(tmp_path / "pre" / runfiles.METRICS)]
    assert len(losses) == 5 and result["final_loss"] == losses[-1]
    assert losses[-1] < losses[0] - 0.05, losses  # SimSiam's loss is -cos: it falls towards -1
    encoder = ckpt.load(Path(result["checkpoint"]))["model"]  # the swinViT state dict handed to fine-tuning
    backbone = {k.removeprefix("backbone.swin."): v for k, v in initial.items() if k.startswith("backbone.swin.")}
    assert _moved(backbone, encoder) == 1.0  # every encoder weight was trained
    heads = {k: v for k, v in initial.items() if not k.startswith("backbone.")}
    last = ckpt.load(tmp_path / "pre" / runfiles.CHECKPOINTS / ckpt.LAST)["model"]
    assert _moved(heads, last) > 0.9  # projector and predictor too


@pytest.mark.slow
def test_finetuning_moves_the_network_and_raises_the_dsc_on_its_training_slices(store, tmp_path, monkeypatch):
    cfg = profiles.tiny("finetune", store=store["store"], split=store["split"])
    cfg = _small(cfg, epochs=4, steps_per_epoch=3, base_lr=3e-3, warmup_epochs=0, patience=4)
    initial = _initial_weights(monkeypatch, finetune)
    result = run_finetune(cfg, tmp_path / "ft")
    lines = list(runfiles.read_jsonl(tmp_path / "ft" / runfiles.METRICS))
    dsc = [line["val_dsc"] for line in lines]  # the copy of the training case: its own slices
    assert len(dsc) == 4 and dsc[-1] > dsc[0] + 0.08, dsc
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert result["dsc"] == pytest.approx(max(dsc))
    last = ckpt.load(tmp_path / "ft" / runfiles.CHECKPOINTS / ckpt.LAST)["model"]
    assert _moved(initial, last) > 0.9
