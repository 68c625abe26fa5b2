"""3D training (issue 20.5) through the real loops on a tiny volume store: SimSiam on 32³ cube pairs, exact
resume, and fine-tuning on 64³ pos/neg-balanced cubes scored by sliding windows over whole volumes (3D DSC)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from volumefix import write_volume_store

from ioussl import profiles, runfiles
from ioussl.config import ModelConfig, RunConfig
from ioussl.science.train import checkpoint as ckpt
from ioussl.science.train import pretrain, volumes
from ioussl.science.train.finetune import run_finetune
from ioussl.science.train.pretrain import run_pretrain

SHAPES = {"L1": (64, 72, 70), "L2": (66, 70, 72), "L3": (64, 68, 68), "U1": (40, 48, 56), "U2": (36, 60, 44)}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("vol")
    store = write_volume_store(root / "store", SHAPES, labelled={"L1", "L2", "L3"})
    (root / "split.json").write_text(json.dumps({"train": ["L1", "L2"], "val": ["L3"]}))
    return store


def _cubes(cfg: RunConfig, crop: int, **changes) -> RunConfig:  # type: ignore[no-untyped-def]
    data = dataclasses.replace(cfg.data, crop=crop)
    model = dataclasses.replace(cfg.model, spatial_dims=3)
    return dataclasses.replace(cfg, data=data, model=model, **changes)


def pretrain_3d(store) -> RunConfig:  # type: ignore[no-untyped-def]
    cfg = profiles.tiny("pretrain", store=str(store.root))
    # deterministic: torch's CPU backward of the 3D relative-position-bias lookup (an accumulating index_put)
    # may otherwise differ in the last bit between two runs of the same step
    return _cubes(cfg, 32, pretrain=dataclasses.replace(cfg.pretrain, batch_size=2, steps_per_epoch=1),
                  sampler=dataclasses.replace(cfg.sampler, i_min=0.3, i_max=0.6),
                  runtime=dataclasses.replace(cfg.runtime, deterministic=True))  # fmt: skip


def test_cube_pairs_come_from_the_volumes_with_their_iou(store):
    cfg = pretrain_3d(store)
    ids = volumes.pretrain_case_ids(store, cfg)
    assert [store.cases[i] for i in ids] == ["U1", "U2"]  # the unlabelled volumes
    batch = volumes.pretrain_loader(store, ids, cfg, epoch=0, workers=0)
    first = next(iter(batch))
    assert first["views"].shape == (4, 1, 32, 32, 32) and first["views"].dtype == torch.uint16
    assert ((first["iou"] >= 0.3) & (first["iou"] <= 0.6)).all() and not first["fallback"].any()
    case = store.cases[int(first["slice"][0])]
    view = first["views"][0, 0].numpy()
    image = np.asarray(store.stored_subvolume(case, (0, 0, 0), store.volume_shape(case)))
    hits = [(z, y, x) for z in range(image.shape[0] - 31) for y in range(image.shape[1] - 31)
            for x in range(image.shape[2] - 31) if image[z, y, x] == view[0, 0, 0]
            and np.array_equal(image[z : z + 32, y : y + 32, x : x + 32], view)]  # fmt: skip
    assert hits  # the view is a cube of its own volume, as stored


@pytest.mark.slow
def test_3d_pretraining_trains_and_resumes_bit_for_bit(store, tmp_path, monkeypatch):
    cfg = pretrain_3d(store)
    straight = run_pretrain(cfg, tmp_path / "straight")
    assert straight["steps"] == 2 and np.isfinite(straight["final_loss"]) and straight["final_fallback_rate"] == 0
    encoder = ckpt.load(tmp_path / "straight" / runfiles.CHECKPOINTS / ckpt.ENCODER)["model"]
    assert encoder["patch_embed.proj.weight"].ndim == 5  # a Conv3d patch embedding: the 3D Swin UNETR
    calls = []
    real = pretrain.train_one_epoch_pretrain

    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(pretrain, "train_one_epoch_pretrain", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_pretrain(cfg, tmp_path / "resumed")
    resumed = run_pretrain(cfg, tmp_path / "resumed")
    assert resumed["final_loss"] == straight["final_loss"]
    assert [e for e in runfiles.read_jsonl(tmp_path / "resumed" / runfiles.EVENTS) if e["event"] == "resumed"]
    again = ckpt.load(tmp_path / "resumed" / runfiles.CHECKPOINTS / ckpt.ENCODER)["model"]
    assert all(torch.equal(encoder[k], again[k]) for k in encoder)


def test_pos_neg_centres_follow_the_ratio_and_stay_inside():
    label = np.zeros((40, 50, 60), dtype=np.uint8)
    label[10:14, 20:25, 30:33] = 3  # a small organ: 60 voxels of 120,000
    rng = np.random.default_rng(0)

    def covers(starts: np.ndarray) -> np.ndarray:
        return np.array([label[z : z + 16, y : y + 16, x : x + 16].any() for z, y, x in starts])

    # the exact law of a background centre (MONAI: uniform over background voxels, then moved inside)
    background = np.argwhere(label == 0)
    p_background = covers(np.clip(background - 8, 0, np.array(label.shape) - 16)).mean()
    starts = volumes.pos_neg_starts(rng, label, 16, 4000, pos=1.0, neg=3.0)
    assert starts.min() >= 0 and np.all(starts <= np.array(label.shape) - 16)
    expected = 0.25 + 0.75 * p_background  # centred on the organ with probability 1/4
    assert abs(covers(starts).mean() - expected) < 5 * np.sqrt(expected * (1 - expected) / 4000)
    assert covers(volumes.pos_neg_starts(rng, label, 16, 200, pos=1.0, neg=0.0)).all()
    none = volumes.pos_neg_starts(rng, np.zeros((20, 20, 20), np.uint8), 16, 10, 1.0, 1.0)
    assert none.shape == (10, 3)  # a volume without organs gets background centres


def _encoder_file(store, path):  # type: ignore[no-untyped-def]
    """A 3D SimSiam's encoder.pt as pretraining exports it (untrained: the transfer is what is tested)."""
    from ioussl.science.models.swin import SimSiam

    cfg = pretrain_3d(store)
    network = SimSiam(cfg.model, dataclasses.replace(cfg.pretrain, proj_dim=32, pred_hidden_dim=16))
    ckpt.save_atomic({**ckpt.describe(cfg, "encoder"), "model": network.encoder_state_dict()}, path)
    return path


@pytest.mark.slow
def test_3d_fine_tuning_from_a_3d_encoder_scores_whole_volumes(store, tmp_path):
    encoder = _encoder_file(store, tmp_path / "encoder.pt")
    cfg = profiles.tiny("finetune", store=str(store.root), split=str(store.root.parent / "split.json"))
    ft = dataclasses.replace(cfg.finetune, batch_size=1, crops_per_slice=1, epochs=1, steps_per_epoch=2,
                             warmup_epochs=0, sw_batch_size=2, sw_overlap=0.0)  # fmt: skip
    cfg = _cubes(cfg, 64, finetune=ft)
    result = run_finetune(cfg, tmp_path / "ft", encoder)
    assert result["encoder"]["matched"] > 0 and result["encoder"]["missing"] == []
    assert result["dsc_metric"] == "dsc_3d" and result["dsc"] == result["dsc_3d"]  # no per-slice DSC in 3D
    assert set(result["per_case"]) == {"L3"} and 0 < result["dsc_3d"] <= 1
    assert "flare_skipped" in result  # this store has no original-grid records: FLARE's scores say so


def test_a_2d_encoder_is_refused_by_a_3d_network(store, tmp_path):
    from ioussl.errors import TrainingError
    from ioussl.science.models.swin import build_swin_unetr
    from ioussl.science.train.transfer import load_encoder

    flat = build_swin_unetr(ModelConfig(feature_size=12), 0.0)
    path = tmp_path / "flat.pt"
    torch.save({"state_dict": {f"swinViT.{k}": v for k, v in flat.swinViT.state_dict().items()}}, path)
    cube = build_swin_unetr(ModelConfig(feature_size=12, spatial_dims=3), 0.0)
    with pytest.raises(TrainingError, match="another architecture"):
        load_encoder(cube, path, ModelConfig(feature_size=12, spatial_dims=3))


@pytest.mark.slow
def test_dino_pretrains_on_cube_pairs_too(store, tmp_path):
    """The method is a setting in 3D as in 2D: DINO's student and teacher take the 3D Swin encoder, and the
    encoder file it exports is the 3D network's (teacher and student both)."""
    from ioussl.config import DinoConfig

    cfg = pretrain_3d(store)
    dino = DinoConfig(out_dim=64, hidden_dim=64, bottleneck_dim=32, warmup_epochs=0)
    cfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, method="dino", dino=dino)).validate()
    summary = run_pretrain(cfg, tmp_path / "dino3d")
    assert summary["steps"] == 2 and np.isfinite(summary["final_loss"])
    saved = ckpt.load(tmp_path / "dino3d" / runfiles.CHECKPOINTS / ckpt.ENCODER)
    assert saved["model"]["patch_embed.proj.weight"].ndim == 5 and saved["student"]["patch_embed.proj.weight"].ndim == 5
