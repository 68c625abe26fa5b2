"""The run config's augmentation specs reach the augmentations: the defaults are the thesis protocol's, and
a changed spec changes what the batched (device) and the MONAI (loader) pipelines do to a batch."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from datafix import *  # noqa: F403 (session fixtures; a conftest.py here would collide with other branches)

from ioussl import profiles
from ioussl.config import CropAugmentConfig, RuntimeConfig, ViewAugmentConfig
from ioussl.science.augment.batchaug import FINETUNE, PRETRAIN_VIEW, AugmentSpec
from ioussl.science.data.store import dequantise_tensor
from ioussl.science.runtime import resolve_runtime
from ioussl.science.train.trainingdata import finetune_feed, finetune_loader, pretrain_feed, pretrain_loader

FLIP_ONLY = ViewAugmentConfig(order=("flip",), flip_prob=1.0)  # both axes, always: a known output
NOTHING = ViewAugmentConfig(order=())


def test_the_default_specs_are_the_thesis_protocol():
    # thesis-protocol.md §3 (each view) and §4 (fine-tuning crops, the reference code's order)
    assert PRETRAIN_VIEW == AugmentSpec.of(ViewAugmentConfig()) and FINETUNE == AugmentSpec.of(CropAugmentConfig())
    view = ViewAugmentConfig()
    assert view.order == ("zoom", "flip", "rot90", "scale", "shift", "smooth", "noise")
    assert (view.zoom_prob, view.zoom_range, view.flip_prob, view.rot90_prob) == (0.75, (0.8, 1.2), 0.5, 0.5)
    assert (view.scale_prob, view.scale_range, view.shift_prob, view.shift_range) == (0.75, 0.1, 0.75, 0.1)
    assert (view.smooth_prob, view.sigma_range, view.noise_prob, view.noise_std) == (0.25, (0.25, 1.5), 0.25, 0.01)
    crop = CropAugmentConfig()
    assert crop.order == ("smooth", "scale", "shift", "noise", "flip", "rot90") and crop.zoom_prob == 0.0
    assert (crop.smooth_prob, crop.sigma_range, crop.scale_prob, crop.scale_range) == (0.15, (0.25, 1.5), 0.15, 0.1)
    assert (crop.shift_prob, crop.shift_range, crop.noise_prob, crop.noise_std) == (0.15, 0.1, 0.15, 0.01)
    assert (crop.flip_prob, crop.rot90_prob) == (0.25, 0.25)


def _pretrain_cfg(spec: ViewAugmentConfig, store: str = "store", augment_on: str = "device"):  # type: ignore[no-untyped-def]
    cfg = profiles.tiny("pretrain", store=store)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, augment_on=augment_on),
                               pretrain=dataclasses.replace(cfg.pretrain, augment=spec))  # fmt: skip


def _finetune_cfg(spec: CropAugmentConfig, store: str = "store", augment_on: str = "device"):  # type: ignore[no-untyped-def]
    cfg = profiles.tiny("finetune", store=store)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, augment_on=augment_on),
                               finetune=dataclasses.replace(cfg.finetune, augment=spec))  # fmt: skip


CPU = resolve_runtime(RuntimeConfig(device="cpu", precision="fp32", channels_last=False), amp=False)


def _stored_views(pairs: int = 3, side: int = 64) -> torch.Tensor:
    """A batch as PretrainCropBatches hands it over: uint16 [2B, 1, side, side], first views then second."""
    return torch.randint(0, 4000, (2 * pairs, 1, side, side), generator=torch.Generator().manual_seed(0)).to(
        torch.uint16
    )


def test_the_device_views_follow_the_run_configs_spec():
    stored = _stored_views()
    views = dequantise_tensor(stored)
    flipped = pretrain_feed(_pretrain_cfg(FLIP_ONLY), CPU)({"views": stored}, 0, 0)
    assert torch.equal(torch.cat(flipped), views.flip(2, 3))
    untouched = pretrain_feed(_pretrain_cfg(NOTHING), CPU)({"views": stored}, 0, 0)
    assert torch.equal(torch.cat(untouched), views)
    half = dataclasses.replace(FLIP_ONLY, flip_prob=0.5)
    drawn = pretrain_feed(_pretrain_cfg(half), CPU)({"views": _stored_views(pairs=40)}, 0, 0)
    plain = dequantise_tensor(_stored_views(pairs=40))
    flips = [(a == b.flip(1)).all().item() for a, b in zip(torch.cat(drawn)[:, 0], plain[:, 0], strict=True)]
    assert 0 < sum(flips) < len(flips)  # probability 0.5 per axis: some samples flipped on the row axis, some not


def test_the_device_crops_follow_the_run_configs_spec():
    image = torch.rand((6, 1, 64, 64), generator=torch.Generator().manual_seed(1))
    label = (image > 0.5).float()
    spec = CropAugmentConfig(order=("rot90",), rot90_prob=1.0)
    out, moved = finetune_feed(_finetune_cfg(spec), CPU)({"image": image, "label": label}, 0, 0)
    for i in range(len(image)):
        turns = [k for k in (1, 2, 3) if torch.equal(out[i], torch.rot90(image[i], k, dims=(1, 2)))]
        assert len(turns) == 1, i  # rotated by one quarter turn or more, never left as it was
        assert torch.equal(moved[i], torch.rot90(label[i], turns[0], dims=(1, 2)))  # the label moved with it
    default, _ = finetune_feed(_finetune_cfg(CropAugmentConfig()), CPU)({"image": image, "label": label}, 0, 0)
    assert not torch.equal(default, out)


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_the_loader_augmentations_follow_the_run_configs_spec(synth_store, stage):
    if stage == "pretrain":
        ids = synth_store.slice_ids(synth_store.unlabelled_cases())[:8]  # one batch of the tiny profile
        make = lambda spec: pretrain_loader(synth_store, ids, _pretrain_cfg(spec, "s", "loader"), 0, 0)  # noqa: E731
        keys, specs = ("view1", "view2"), (FLIP_ONLY, NOTHING)
    else:
        ids = synth_store.slice_ids(synth_store.labelled_cases())[:4]
        make = lambda spec: finetune_loader(synth_store, ids, _finetune_cfg(spec, "s", "loader"), 0, 0)  # noqa: E731
        keys = ("image", "label")
        specs = (CropAugmentConfig(order=("flip",), flip_prob=1.0), CropAugmentConfig(order=()))
    flipped, plain = (next(iter(make(spec))) for spec in specs)  # the same seeds: the same crops
    for key in keys:
        assert torch.equal(flipped[key], plain[key].flip(2, 3)), key
