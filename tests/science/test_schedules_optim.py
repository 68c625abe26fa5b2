"""Learning-rate schedules at the key steps of Table 4.1, and the optimiser's parameter groups."""

from __future__ import annotations

import math

import pytest
import torch

from ioussl.config import FinetuneConfig, ModelConfig, PretrainConfig
from ioussl.science.models.swin import SimSiam, build_swin_unetr
from ioussl.science.train.optim import finetune_optimizer, pretrain_optimizer, set_lr
from ioussl.science.train.schedules import cosine_lr

# Thesis pretraining: 237,449 slices // 128 = 1,855 steps per epoch, 100 epochs (thesis protocol notes §3).
PRE_STEPS = 1855 * 100


def test_pretraining_cosine_at_key_steps():
    pre = PretrainConfig()
    lr = lambda i: cosine_lr(i, PRE_STEPS, pre.base_lr, pre.end_lr)  # noqa: E731
    assert lr(0) == pytest.approx(0.025)
    assert lr(PRE_STEPS // 2) == pytest.approx((0.025 + 1e-6) / 2)
    assert lr(PRE_STEPS // 4) == pytest.approx(1e-6 + 0.5 * (0.025 - 1e-6) * (1 + math.cos(math.pi / 4)))
    assert lr(PRE_STEPS - 1) == pytest.approx(1e-6, abs=1e-11)
    assert lr(PRE_STEPS) == pytest.approx(1e-6)
    assert all(lr(i) >= lr(i + 1) for i in range(0, PRE_STEPS, 997))


def test_finetuning_warmup_then_cosine_at_key_steps():
    ft = FinetuneConfig()
    steps = 7  # any steps per epoch; the schedule is in epochs of Table 4.1
    total, warmup = ft.epochs * steps, ft.warmup_epochs * steps
    lr = lambda i: cosine_lr(i, total, ft.base_lr, ft.end_lr, warmup)  # noqa: E731
    assert lr(0) == 0.0  # step 0 has lr 0
    assert lr(warmup // 2) == pytest.approx(1e-3 * (warmup // 2) / warmup)
    assert lr(warmup) == pytest.approx(1e-3)  # end of epoch 10: the peak
    middle = warmup + (total - warmup) // 2
    assert lr(middle) == pytest.approx(5e-5 + 0.5 * (1e-3 - 5e-5) * (1 + math.cos(math.pi * 0.5)), rel=1e-2)
    assert lr(total) == pytest.approx(5e-5)
    assert (ft.epochs, ft.warmup_epochs, ft.base_lr, ft.end_lr) == (225, 10, 1e-3, 5e-5)


def test_pretrain_optimizer_has_six_groups_and_a_fixed_predictor_lr():
    model = SimSiam(ModelConfig(feature_size=12), PretrainConfig(proj_dim=64, pred_hidden_dim=16))
    opt = pretrain_optimizer(model, PretrainConfig())
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    names = [g["name"] for g in opt.param_groups]
    assert names == [
        f"{p}/{d}" for p in ("backbone", "projection", "prediction") for d in ("decay", "no_decay")
    ]
    set_lr(opt, 1e-4)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert all(lrs[n] == 1e-4 for n in names if not n.startswith("prediction"))
    assert lrs["prediction/decay"] == lrs["prediction/no_decay"] == 0.025
    total = sum(len(g["params"]) for g in opt.param_groups)
    assert total == len([p for p in model.parameters() if p.requires_grad])


def test_biases_and_norm_weights_get_no_weight_decay():
    model = SimSiam(ModelConfig(feature_size=12), PretrainConfig(proj_dim=64, pred_hidden_dim=16))
    opt = pretrain_optimizer(model, PretrainConfig())
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for param in group["params"]:
            name = names[id(param)]
            plain = name.endswith(".bias") or param.ndim <= 1
            assert group["weight_decay"] == (0.0 if plain else 1e-5), name
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert any("relative_position_bias_table" in n for n in decayed)  # 2-D, decayed as in the thesis


def test_finetune_optimizer_is_adamw_over_the_whole_network():
    net = build_swin_unetr(ModelConfig(feature_size=12), 0.0)
    opt = finetune_optimizer(net, FinetuneConfig(weight_decay=0.05, base_lr=2e-3))  # not the defaults: read, not kept
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["eps"] == 1e-8
    groups = {g["name"]: g for g in opt.param_groups}
    assert list(groups) == ["model/decay", "model/no_decay"] and all(g["lr"] == 2e-3 for g in opt.param_groups)
    assert groups["model/decay"]["weight_decay"] == 0.05 and groups["model/no_decay"]["weight_decay"] == 0.0
    # every parameter in exactly one group
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in net.parameters())
    names = {id(p): n for n, p in net.named_parameters()}
    decayed = {names[id(p)] for p in groups["model/decay"]["params"]}
    plain = {names[id(p)] for p in groups["model/no_decay"]["params"]}
    # The split of the reference code, by name: weights of convolutions and linear layers and the 2-D relative
    # position tables decay; biases and the norms' 1-D weights do not.
    for name in ("swinViT.patch_embed.proj.weight", "swinViT.layers1.0.blocks.0.attn.relative_position_bias_table",
                 "swinViT.layers1.0.blocks.0.mlp.linear1.weight", "encoder1.layer.conv1.conv.weight",
                 "out.conv.conv.weight"):  # fmt: skip
        assert name in decayed, name
    for name in ("swinViT.patch_embed.proj.bias", "swinViT.layers1.0.blocks.0.norm1.weight",
                 "swinViT.layers1.0.blocks.0.attn.qkv.bias", "out.conv.conv.bias"):  # fmt: skip
        assert name in plain, name
    assert all(n.endswith(".bias") or "norm" in n for n in plain), sorted(plain)
    assert not any(n.endswith(".bias") for n in decayed)
