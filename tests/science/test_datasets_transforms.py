"""Transforms and datasets over the store: the same boxes on every key, shapes, seeding, fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datafix import *  # noqa: F403 (session fixtures; a conftest.py here would collide with other branches)

from ioussl.config import ViewAugmentConfig
from ioussl.errors import DataError
from ioussl.science.augment.transforms import RandIoUCropPaird, pretrain_view_augment
from ioussl.science.sampling.sampler import box_iou, pair_exists, sample_crop_pairs
from ioussl.science.train.datasets import (
    FinetuneSliceDataset,
    PretrainPairDataset,
    ValSliceDataset,
    make_finetune_loader,
    make_pretrain_loader,
    make_val_loader,
)


def test_iou_crop_applies_the_same_boxes_to_every_key():
    image = np.arange(150 * 130, dtype=np.float32).reshape(1, 150, 130)
    label = (image % 7).astype(np.float32)
    crop = RandIoUCropPaird(["image", "label"], 64, 0.3, 0.6)
    crop.set_random_state(seed=3)
    for _ in range(20):
        out = crop({"image": image, "label": label})
        (y1, x1), (y2, x2) = crop.pair.box1, crop.pair.box2
        np.testing.assert_array_equal(out["image_view1"], image[:, y1 : y1 + 64, x1 : x1 + 64])
        np.testing.assert_array_equal(out["label_view2"], label[:, y2 : y2 + 64, x2 : x2 + 64])
        assert 0.3 <= out["iou"] <= 0.6 and out["iou"] == box_iou(crop.pair.box1, crop.pair.box2, (64, 64))
        assert not out["fallback"] and "image" not in out


def test_iou_crop_single_key_views_and_seeding():
    data = {"image": np.random.default_rng(0).random((1, 120, 120), dtype=np.float32)}
    a, b = RandIoUCropPaird("image", 96, 0.0, 1.0), RandIoUCropPaird("image", 96, 0.0, 1.0)
    a.set_random_state(seed=1)
    b.set_random_state(seed=1)
    out_a, out_b = a(data), b(data)
    assert out_a["view1"].shape == (1, 96, 96)
    np.testing.assert_array_equal(out_a["view2"], out_b["view2"])


def test_view_augment_keeps_shape_and_changes_views():
    augment = pretrain_view_augment()
    # protocol §3, in the reference order: which transforms, how likely, how strong
    kinds = [type(t).__name__ for t in augment.transforms]
    assert kinds == ["RandZoom", "RandFlip", "RandFlip", "RandRotate90", "RandScaleIntensity", "RandShiftIntensity",
                     "RandGaussianSmooth", "RandGaussianNoise"]  # fmt: skip
    assert [t.prob for t in augment.transforms] == [0.75, 0.5, 0.5, 0.5, 0.75, 0.75, 0.25, 0.25]
    zoom, flip0, flip1, rot, scale, shift, smooth, noise = augment.transforms
    assert (tuple(zoom.min_zoom), tuple(zoom.max_zoom), zoom.keep_size) == ((0.8,), (1.2,), True)
    assert (flip0.flipper.spatial_axis, flip1.flipper.spatial_axis, rot.max_k) == (0, 1, 3)
    assert tuple(scale.factors) == (-0.1, 0.1) and tuple(shift.offsets) == (-0.1, 0.1)
    assert tuple(smooth.sigma_x) == tuple(smooth.sigma_y) == (0.25, 1.5) and (noise.mean, noise.std) == (0.0, 0.01)
    augment.set_random_state(seed=0)
    view = torch.rand(1, 96, 96)
    outs = [torch.as_tensor(augment(view)).as_subclass(torch.Tensor) for _ in range(20)]
    assert all(o.shape == (1, 96, 96) and o.dtype == torch.float32 for o in outs)
    assert len({o.numpy().tobytes() for o in [view, *outs]}) == 21  # each view its own draws, none the input
    flip_only = pretrain_view_augment(spec=ViewAugmentConfig(order=("flip",), flip_prob=1.0))  # a run's own spec
    assert torch.equal(torch.as_tensor(flip_only(view)).as_subclass(torch.Tensor), view.flip(1, 2))


def test_pretrain_dataset_items_and_reproducible_loader(synth_store):
    ids = synth_store.slice_ids(synth_store.unlabelled_cases())
    make = lambda: PretrainPairDataset(synth_store, ids, 96, 0.3, 0.6, seed=5)  # noqa: E731
    item = make()[0]
    assert item["view1"].shape == (1, 96, 96) and item["view1"].dtype == torch.float32
    assert 0.3 <= item["iou"] <= 0.6 and item["fallback"] is False
    batches = [next(iter(make_pretrain_loader(make(), 8, num_workers=0, seed=1))) for _ in range(2)]
    assert torch.equal(batches[0]["view1"], batches[1]["view1"])
    assert batches[0]["fallback"].dtype == torch.bool and batches[0]["iou"].shape == (8,)
    other = next(iter(make_pretrain_loader(make(), 8, num_workers=0, seed=2)))
    assert not torch.equal(other["view1"], batches[0]["view1"])


def test_pretrain_dataset_views_are_the_sampled_crops(synth_store, monkeypatch):
    # Record the boxes the sampler hands the dataset, then check each view is the crop at its box.
    from ioussl.science.train import datasets

    drawn = []

    def recording(*args, **kwargs):
        out = sample_crop_pairs(*args, **kwargs)
        drawn.append(out)
        return out

    monkeypatch.setattr(datasets, "sample_crop_pairs", recording)
    ids = synth_store.slice_ids()[:20]
    ds = PretrainPairDataset(synth_store, ids, 96, 0.6, 1.0, augment=False, seed=0)
    items = ds.__getitems__(list(range(20)))
    assert len(drawn) == 1  # one vectorised draw for the whole batch
    starts1, starts2, ious, fallback = drawn[0]
    for k, item in enumerate(items):
        assert item["slice"] == int(ids[k]) and item["fallback"] == bool(fallback[k])
        for view, start in (("view1", starts1[k]), ("view2", starts2[k])):
            expected = synth_store.image_region(int(ids[k]), start, (96, 96))
            np.testing.assert_array_equal(item[view][0].numpy(), expected)
        assert item["iou"] == ious[k] == box_iou(starts1[k], starts2[k], (96, 96))
        assert 0.6 <= item["iou"] <= 1.0 and not item["fallback"]
    assert any(tuple(a) != tuple(b) for a, b in zip(starts1, starts2, strict=True))  # not all identical boxes


def test_pretrain_fallback_is_visible(synth_store):
    # [0, 0] needs a side >= 192; slices without such a pair are flagged, every other pair is disjoint.
    ids = synth_store.slice_ids()
    ds = PretrainPairDataset(synth_store, ids, 96, 0.0, 0.0, augment=False, seed=0)
    items = ds.__getitems__(list(range(len(ids))))
    flags = np.array([i["fallback"] for i in items])
    expected = np.array(
        [not pair_exists(tuple(s), (96, 96), 0.0, 0.0) for s in synth_store.shapes(ids).tolist()]
    )
    np.testing.assert_array_equal(flags, expected)
    assert all(i["iou"] == 0.0 for i in items if not i["fallback"])


def test_interval_no_slice_admits_is_rejected(synth_store):
    from ioussl.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot be met with crop"):
        PretrainPairDataset(synth_store, synth_store.slice_ids(), 96, 1.0 - 1e-9, 1.0 - 1e-10)


def test_crop_larger_than_slices_is_a_clear_error(synth_store):
    with pytest.raises(DataError, match="smaller than the crop 512"):
        PretrainPairDataset(synth_store, synth_store.slice_ids(), 512, 0.0, 1.0)


def test_finetune_dataset_crops_and_positive_centres(synth_store):
    ids = synth_store.slice_ids(synth_store.labelled_cases())
    ds = FinetuneSliceDataset(synth_store, ids, 96, crops_per_slice=2, augment=False, seed=0)
    crops = ds[len(ids) // 2]
    assert len(crops) == 2 and crops[0]["image"].shape == (1, 96, 96) == crops[0]["label"].shape
    batch = next(iter(make_finetune_loader(FinetuneSliceDataset(synth_store, ids, 96, seed=0), 4)))
    assert batch["image"].shape == (8, 1, 96, 96) and batch["label"].max() <= 13
    pos_only = FinetuneSliceDataset(synth_store, ids, 96, pos=1.0, neg=0.0, augment=False, seed=1)
    organ_slices = [k for k, i in enumerate(ids) if synth_store.organs(int(i))]
    for k in organ_slices[:10]:
        for crop in pos_only[k]:
            assert crop["label"].max() > 0  # centred on an organ (MONAI shifts centres off the border)


def test_val_dataset_whole_slices(synth_store):
    case = synth_store.labelled_cases()[0]
    ds = ValSliceDataset(synth_store, synth_store.slice_ids([case]))
    item = ds[2]
    assert item["case"] == case and item["z"] == 2
    assert item["image"].shape == (1, *synth_store.shape(int(ds.ids[2])))
    batch = next(iter(make_val_loader(ds)))
    assert batch["image"].shape[0] == 1 and batch["case"] == [case]


def test_augmentations_without_metatensor_bookkeeping_give_identical_items(synth_store, monkeypatch):
    import contextlib

    from monai.data import get_track_meta

    import ioussl.science.train.datasets as datasets

    def items():
        pre = datasets.PretrainPairDataset(synth_store, synth_store.slice_ids(synth_store.unlabelled_cases()), 64,
                                           0.3, 0.6, augment=True, seed=3)
        ft = datasets.FinetuneSliceDataset(synth_store, synth_store.slice_ids(synth_store.labelled_cases()), 64,
                                           augment=True, seed=3)
        tensors = [t for i in range(6) for t in (pre[i]["view1"], pre[i]["view2"])]
        tensors += [c[k] for i in range(3) for c in ft[i] for k in ("image", "label")]
        return tensors

    fast = items()
    assert get_track_meta()  # the global MONAI setting is restored
    monkeypatch.setattr(datasets, "_plain_tensors", contextlib.nullcontext)
    tracked = items()
    assert len(fast) == len(tracked) and all(torch.equal(a, b) for a, b in zip(fast, tracked, strict=True))


def test_crop_batches_are_the_item_crops_as_stored(synth_store):
    from ioussl.science.data.store import dequantise_tensor, widen_uint16
    from ioussl.science.train.datasets import PretrainCropBatches

    ids = synth_store.slice_ids(synth_store.unlabelled_cases())
    items = PretrainPairDataset(synth_store, ids, 96, 0.3, 0.6, augment=False, seed=5).__getitems__(range(12))
    batch = PretrainCropBatches(synth_store, ids, 96, 0.3, 0.6, seed=5).__getitems__(range(12))
    assert batch["views"].dtype == torch.uint16 and batch["views"].shape == (24, 1, 96, 96)
    views = dequantise_tensor(batch["views"])  # the same float32 product as the loader's NumPy conversion
    every = torch.arange(65536, dtype=torch.int32)
    assert torch.equal(widen_uint16(every.to(torch.uint16)), every)  # the GPU's way to widen stored values
    assert torch.equal(views[:12], torch.stack([i["view1"] for i in items]))
    assert torch.equal(views[12:], torch.stack([i["view2"] for i in items]))
    assert batch["iou"].tolist() == [i["iou"] for i in items]
    assert batch["fallback"].tolist() == [i["fallback"] for i in items]


def test_crop_batch_loader_passes_whole_batches_and_is_reproducible(synth_store):
    from ioussl.science.train.datasets import PretrainCropBatches

    ids = synth_store.slice_ids(synth_store.unlabelled_cases())
    make = lambda: make_pretrain_loader(PretrainCropBatches(synth_store, ids, 96, 0.3, 0.6, seed=2), 4, 1, 7)  # noqa: E731
    a, b = next(iter(make())), next(iter(make()))
    assert a["views"].shape == (8, 1, 96, 96) and a["fallback"].shape == (4,)
    assert torch.equal(a["views"], b["views"]) and torch.equal(a["slice"], b["slice"])
