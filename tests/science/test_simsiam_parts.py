"""SimSiam network, heads and loss: shapes, stop-gradient, symmetry, collapse coefficient."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from ioussl.config import ModelConfig, PretrainConfig
from ioussl.science.evaluate.metrics import CollapseMeter
from ioussl.science.models.heads import PredictionHead, ProjectionHead
from ioussl.science.models.swin import SimSiam, build_swin_unetr
from ioussl.science.train.losses import negative_cosine, simsiam_loss

TINY = ModelConfig(feature_size=12)


@pytest.fixture(scope="module")
def simsiam() -> SimSiam:
    torch.manual_seed(0)
    return SimSiam(TINY, PretrainConfig(proj_dim=64, pred_hidden_dim=16))


def test_encoder_is_the_segmentation_networks_swinvit(simsiam):
    seg = build_swin_unetr(TINY, drop_path=0.0)
    assert type(simsiam.backbone.swin) is type(seg.swinViT)
    assert simsiam.backbone.swin.state_dict().keys() == seg.swinViT.state_dict().keys()
    features = simsiam.backbone(torch.rand(2, 1, 64, 64))
    assert features.shape == (2, 16 * 12)  # deepest stage 16C, averaged over space


def test_heads_follow_the_paper():
    proj = ProjectionHead(192, 2048)
    linears = [m for m in proj if isinstance(m, nn.Linear)]
    norms = [m for m in proj if isinstance(m, nn.BatchNorm1d)]
    assert [(m.in_features, m.out_features, m.bias) for m in linears] == [
        (192, 2048, None), (2048, 2048, None), (2048, 2048, None)
    ]  # fmt: skip
    assert [n.affine for n in norms] == [True, True, False]
    assert sum(isinstance(m, nn.ReLU) for m in proj) == 2 and not isinstance(proj[-1], nn.ReLU)
    pred = PredictionHead(2048, 512)
    shapes = [(m.in_features, m.out_features, m.bias is not None) for m in pred if isinstance(m, nn.Linear)]
    assert shapes == [(2048, 512, False), (512, 2048, True)]


def test_forward_stops_the_gradient_of_the_target_branch(simsiam):
    z, p = simsiam(torch.rand(4, 1, 64, 64))
    assert not z.requires_grad and p.requires_grad
    simsiam.zero_grad()
    loss = negative_cosine(p, torch.randn_like(p))
    loss.backward()
    assert simsiam.prediction[0].weight.grad is not None  # gradient flows only through p


def test_loss_is_symmetric_and_bounded():
    torch.manual_seed(1)
    z1, p1, z2, p2 = (torch.randn(8, 32) for _ in range(4))
    assert torch.allclose(simsiam_loss(z1, p1, z2, p2), simsiam_loss(z2, p2, z1, p1))
    assert simsiam_loss(z1, z2, z2, z1).item() == pytest.approx(-1.0)
    assert -1.0 <= simsiam_loss(z1, p1, z2, p2).item() <= 1.0


def test_the_stop_gradient_cuts_the_target_branch_and_only_it():
    # The live z of the network requires a gradient; SimSiam's forward must cut it and keep p's path.
    torch.manual_seed(3)
    heads = PretrainConfig(proj_dim=64, pred_hidden_dim=16)
    model = SimSiam(ModelConfig(feature_size=12, pretrain_drop_path=0.0), heads)
    views = torch.rand(4, 1, 64, 64), torch.rand(4, 1, 64, 64)

    def gradients(outputs) -> torch.Tensor:
        model.zero_grad()
        simsiam_loss(*outputs).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    def by_hand(stop: bool) -> list[torch.Tensor]:
        outputs = []
        for view in views:
            z = model.projection(model.backbone(view))
            assert z.requires_grad
            outputs += [z.detach() if stop else z, model.prediction(z)]
        return outputs

    forward = [t for view in views for t in model(view)]
    assert not forward[0].requires_grad and forward[1].requires_grad
    through_forward = gradients(forward)
    assert torch.allclose(through_forward, gradients(by_hand(stop=True)), atol=1e-6)
    without_stop = gradients(by_hand(stop=False))
    assert (through_forward - without_stop).abs().max() > 1e-4  # the z path would change the update


def test_collapse_is_one_for_constant_outputs():
    meter = CollapseMeter()
    meter.update(torch.ones(64, 2048) * 3.0)
    assert meter.value() == pytest.approx(1.0)


def test_collapse_is_near_zero_for_random_unit_vectors():
    torch.manual_seed(2)
    meter = CollapseMeter()
    for _ in range(3):
        meter.update(torch.randn(256, 2048))
    assert 0.0 <= meter.value() < 0.02


def test_collapse_near_one_when_outputs_barely_vary():
    torch.manual_seed(3)
    shared = torch.randn(1, 2048)
    meter = CollapseMeter()
    meter.update(shared + 0.05 * torch.randn(256, 2048))  # every sample maps near one direction
    assert 0.9 < meter.value() < 1.0
    assert math.isnan(CollapseMeter().value())


def test_an_epoch_reads_the_device_back_once_not_per_step(monkeypatch):
    """Loss, collapse and fallbacks accumulate on the device: host reads must not grow with the steps (on a
    GPU each read waits for the whole queue). Counted with the batched augmentations as a GPU runs them."""
    import itertools

    from ioussl import profiles
    from ioussl.science.augment import batchaug
    from ioussl.science.runtime import resolve_runtime
    from ioussl.science.train.engine import StepState, train_one_epoch_pretrain
    from ioussl.science.train.methods.simsiam import SimSiamMethod
    from ioussl.science.train.trainingdata import pretrain_feed

    cfg = profiles.tiny("pretrain")
    cfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, proj_dim=64, pred_hidden_dim=16))
    runtime = resolve_runtime(cfg.runtime, amp=False)
    model = SimSiamMethod(cfg, steps_per_epoch=5)
    state = StepState(model, model.make_optimizer(fused=False), runtime.grad_scaler(), runtime)
    batch = {"views": torch.randint(0, 65535, (8, 1, 64, 64), dtype=torch.int32).to(torch.uint16),
             "fallback": torch.tensor([False, True, False, False]), "iou": torch.full((4,), 0.5, dtype=torch.float64)}
    real_augment = batchaug.augment
    monkeypatch.setattr(batchaug, "augment", lambda *a, **k: real_augment(*a, **{**k, "subset": False}))
    reads = []

    def counted(name: str):  # type: ignore[no-untyped-def]
        real = getattr(torch.Tensor, name)
        return lambda self, *a, **k: (reads.append(name), real(self, *a, **k))[1]

    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "nonzero", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, counted(name))
    counts = []
    for steps in (2, 5):
        reads.clear()
        stats = train_one_epoch_pretrain(state, itertools.repeat(batch), 0, steps, pretrain_feed(cfg, runtime))
        counts.append(len(reads))
    assert counts[0] == counts[1], reads
    assert stats["fallback_rate"] == 0.25 and stats["mean_iou"] == 0.5 and math.isfinite(stats["loss"])
