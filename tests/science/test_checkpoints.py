"""Self-describing checkpoints and encoder transfer: weights really arrive, bad files fail clearly."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ioussl.config import DataConfig, ModelConfig, PretrainConfig, RunConfig, SamplerConfig
from ioussl.errors import TrainingError
from ioussl.science.models.swin import SimSiam, build_swin_unetr
from ioussl.science.train import checkpoint as ckpt
from ioussl.science.train import stopping
from ioussl.science.train.transfer import load_encoder

TINY = ModelConfig(feature_size=12)
PRE = PretrainConfig(proj_dim=64, pred_hidden_dim=16)


def _cfg(model: ModelConfig = TINY) -> RunConfig:
    return RunConfig(stage="pretrain", seed=0, data=DataConfig(crop=64), model=model, sampler=SamplerConfig(),
                     pretrain=PRE)  # fmt: skip


@pytest.fixture()
def encoder_file(tmp_path):
    torch.manual_seed(0)
    model = SimSiam(TINY, PRE)
    with torch.no_grad():  # make the weights unmistakably not a fresh initialisation
        for param in model.backbone.parameters():
            param.add_(torch.randn_like(param))
    path = tmp_path / "encoder.pt"
    ckpt.save_atomic({**ckpt.describe(_cfg(), "encoder"), "model": model.encoder_state_dict()}, path)
    return path, model


def test_encoder_weights_transfer_one_to_one(encoder_file):
    path, pretrained = encoder_file
    net = build_swin_unetr(TINY, 0.0)
    report = load_encoder(net, path, TINY)
    expected = pretrained.backbone.swin.state_dict()
    assert report["matched"] == len(expected) and report["missing"] == [] and report["unexpected"] == []
    for key, value in net.swinViT.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert report["source_config_hash"] == ckpt.config_hash(_cfg())


def test_thesis_style_state_dict_also_loads(tmp_path, encoder_file):
    _, pretrained = encoder_file
    bare = {f"backbone.model.{k}": v for k, v in pretrained.encoder_state_dict().items()}
    bare["projection_head.layers.0.weight"] = torch.zeros(3)
    path = tmp_path / "thesis.pt"
    torch.save(bare, path)
    net = build_swin_unetr(TINY, 0.0)
    assert load_encoder(net, path, TINY)["matched"] == len(pretrained.encoder_state_dict())
    assert torch.equal(net.swinViT.patch_embed.proj.weight, pretrained.backbone.swin.patch_embed.proj.weight)


def test_encoder_of_another_feature_size_is_refused(encoder_file):
    path, _ = encoder_file
    wider = dataclasses.replace(TINY, feature_size=24)
    with pytest.raises(TrainingError, match=rf"{path.name}.*another architecture.*feature_size 12 != 24"):
        load_encoder(build_swin_unetr(wider, 0.0), path, wider)


def test_bare_state_dict_of_another_size_is_refused_naming_the_file(tmp_path, encoder_file):
    _, pretrained = encoder_file
    path = tmp_path / "bare.pt"
    torch.save(pretrained.encoder_state_dict(), path)
    wider = dataclasses.replace(TINY, feature_size=24)
    with pytest.raises(TrainingError, match=rf"{path.name}.*another architecture or feature size"):
        load_encoder(build_swin_unetr(wider, 0.0), path, wider)


def test_checkpoint_without_a_matching_key_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"classifier.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(TrainingError, match="no key matches"):
        load_encoder(build_swin_unetr(TINY, 0.0), path, TINY)


def test_missing_and_truncated_checkpoints_fail_clearly(tmp_path, encoder_file):
    path, _ = encoder_file
    with pytest.raises(TrainingError, match="does not exist"):
        ckpt.load(tmp_path / "nope.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(TrainingError, match=r"cut\.pt is truncated or corrupt"):
        ckpt.load(cut)
    with pytest.raises(TrainingError, match=r"cut\.pt is truncated or corrupt"):
        load_encoder(build_swin_unetr(TINY, 0.0), cut, TINY)


def test_checkpoints_describe_themselves_and_load_weights_only(encoder_file):
    path, _ = encoder_file
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == ckpt.FORMAT and payload["kind"] == "encoder"
    assert payload["arch"]["feature_size"] == 12
    assert RunConfig.from_json(payload["config"]) == _cfg()
    assert payload["config_hash"] == ckpt.config_hash(_cfg())
    assert not list(path.parent.glob(".*.tmp"))  # the temporary file was renamed, not left behind


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    path = tmp_path / "last.pt"
    ckpt.save_atomic({**ckpt.describe(_cfg(), "last")}, path)
    other = dataclasses.replace(_cfg(), seed=1)
    with pytest.raises(TrainingError, match="another config"):
        ckpt.load_for_resume(path, other)
    assert ckpt.load_for_resume(path, _cfg())["kind"] == "last"


def _part(**changes):
    sums = {name: torch.zeros(()) for name in ("loss", "fallbacks", "iou", "bad_value", "first_bad")}
    share = {"sums": sums, "items": 16, "rng": {"torch": torch.get_rng_state()}}
    return {"done": 2, "seconds": 1.5, "method": {}, "ranks": [share], **changes}


def test_a_mid_epoch_part_gives_this_rank_its_share_and_a_damaged_one_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    part, rng = ckpt.epoch_part({"step": 5, "part": _part()}, path, rank=0, world_size=1)
    assert (part.done, part.items, part.seconds, set(part.sums)) == (2, 16, 1.5, set(stopping.SUMS))
    assert torch.equal(rng["torch"], torch.get_rng_state())
    damaged = [
        {"done": 0},  # a stop comes after a step
        {"done": "2"},
        {"ranks": []},  # written by another number of processes
        {"ranks": [{"sums": {}, "items": 16, "rng": {}}]},
        {"ranks": [{**_part()["ranks"][0], "items": -1}]},
        {"ranks": [{**_part()["ranks"][0], "sums": {**_part()["ranks"][0]["sums"], "loss": torch.zeros(3)}}]},
        {"seconds": None},
        {"method": None},
    ]
    for changes in damaged:
        with pytest.raises(TrainingError, match=r"last\.pt has a damaged mid-epoch part"):
            ckpt.epoch_part({"step": 5, "part": _part(**changes)}, path, rank=0, world_size=1)
    with pytest.raises(TrainingError, match="damaged mid-epoch part"):
        ckpt.epoch_part({"step": 5, "part": [1, 2]}, path, rank=0, world_size=1)
    with pytest.raises(TrainingError, match="damaged mid-epoch part"):
        ckpt.epoch_part({"step": 1, "part": _part()}, path, rank=0, world_size=1)  # more steps done than taken


class _Method:
    """A pretraining method's epoch-statistics hook, reading what SimSiam's reads."""

    def load_epoch_state(self, state):
        self.total = state["meter"]["total"]


def test_a_resume_inside_an_epoch_refuses_a_damaged_rng_or_method_state_in_one_line(tmp_path):
    from ioussl.science.runtime import rng_state

    part, rng = ckpt.epoch_part({"step": 5, "part": _part(method={"meter": {"total": None}})}, tmp_path / "last.pt",
                                rank=0, world_size=1)  # fmt: skip
    point = ckpt.ResumePoint(1, 3, payload={"part": {}}, part=part, rng=rng_state())
    batches = iter(range(10))
    assert ckpt.go_on_inside(point, 1, batches, steps=3, method=_Method()) is part
    assert next(batches) == 2  # the part's two batches were drawn again and dropped
    assert ckpt.go_on_inside(point, 2, iter(()), steps=3) is None  # a later epoch starts afresh
    damaged = [(dataclasses.replace(point, rng={}), {"meter": {"total": None}}),  # no RNG states
               (point, {})]  # no meter  # fmt: skip
    for bad_point, method in damaged:
        bad = dataclasses.replace(bad_point, part=dataclasses.replace(part, method=method))
        with pytest.raises(TrainingError, match=r"last\.pt has a damaged mid-epoch part \("):
            ckpt.go_on_inside(bad, 1, iter(range(10)), steps=3, method=_Method())
    with pytest.raises(TrainingError, match="stopped after step 2 of an epoch of 2 steps"):
        ckpt.go_on_inside(point, 1, iter(range(10)), steps=2)
