"""DINO's parts against the thesis' reference code (dittohed/exploring-ssl-for-ct, commit 3d345a6).

The expected numbers were computed by running the reference's ``src/dino.py`` (``Head``, ``Loss``) and
``src/utils.py`` (``cosine_scheduler``) in float64 on the same fixed inputs and weights: weights are a formula of
their index (``_fill``), not RNG draws, so the numbers do not depend on a torch version's generator. Each
expected value would change under a plausible slip: linspace vs ``step / warmup`` warm-up, a missing centre,
the teacher temperature applied to the student, the L2 normalisation or the unit-norm last layer left out.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ioussl.config import DinoConfig
from ioussl.science.train.methods.dino import (
    DinoHead,
    dino_loss,
    linspace_warmup_cosine,
    teacher_temperature,
    update_center,
)
from ioussl.science.train.schedules import cosine_lr


def _fill(shape: tuple[int, ...], k: int) -> torch.Tensor:
    n = math.prod(shape)
    return (torch.sin(torch.arange(n, dtype=torch.float64) * 0.37 + k) * 0.1).reshape(shape)


def test_head_output_equals_the_reference_on_fixed_weights():
    head = DinoHead(in_dim=6, out_dim=5, hidden_dim=7, bottleneck_dim=4).double()
    # the reference's parameters in sorted-name order, k = their index there (weight_g, fixed at 1, is k = 0)
    order = {"last_layer.weight": 1, "mlp.0.bias": 2, "mlp.0.weight": 3, "mlp.2.bias": 4, "mlp.2.weight": 5,
             "mlp.4.bias": 6, "mlp.4.weight": 7}  # fmt: skip
    with torch.no_grad():
        params = dict(head.named_parameters())
        assert set(params) == set(order)  # no learnable norm g, no bias in the last layer
        for name, k in order.items():
            params[name].copy_(_fill(tuple(params[name].shape), k))
    x = torch.cos(torch.arange(12, dtype=torch.float64).reshape(2, 6) * 0.5)
    expected = torch.tensor([
        [0.4619923625652752, -0.7162757856573441, -0.5274525087041004, 0.44191901693440655, 0.5933082962501394],
        [0.4619573043644306, -0.7164093237272515, -0.5274277206356467, 0.44204532306583016, 0.5932945720005286],
    ], dtype=torch.float64)  # fmt: skip
    assert torch.allclose(head(x), expected, rtol=0, atol=1e-12)


def test_head_layers_follow_the_reference():
    head = DinoHead(in_dim=192, out_dim=1024)
    shapes = [(m.in_features, m.out_features, m.bias is not None) for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert shapes == [(192, 2048, True), (2048, 2048, True), (2048, 256, True)]
    assert sum(isinstance(m, torch.nn.GELU) for m in head.mlp) == 2
    assert head.last_layer.weight.shape == (1024, 256)
    rows = torch.nn.functional.normalize(head.last_layer.weight, dim=1)
    out = head.last_layer(torch.eye(256))  # unit inputs read the normalised weight back
    assert torch.allclose(out, rows.T, atol=1e-6)
    assert torch.allclose(out.norm(dim=0), torch.ones(1024), atol=1e-5)  # each row of the last layer has norm 1


STUDENT = torch.sin(torch.arange(20, dtype=torch.float64).reshape(4, 5) * 0.9) * 3
TEACHER = torch.cos(torch.arange(20, dtype=torch.float64).reshape(4, 5) * 0.7) * 2
CENTER = torch.linspace(-0.2, 0.3, 5, dtype=torch.float64).reshape(1, 5)


@pytest.mark.parametrize(("temp", "expected"), [
    (0.04, 18.090432097451668), (0.055, 18.070163359042493), (0.07, 18.01920097654048),
])  # fmt: skip
def test_loss_equals_the_reference(temp, expected):
    assert dino_loss(STUDENT, TEACHER, CENTER, 0.1, temp).item() == pytest.approx(expected, rel=1e-6)


def test_teacher_temperature_schedule_equals_the_reference():
    warm = DinoConfig(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=3)
    assert [teacher_temperature(e, warm) for e in range(6)] == pytest.approx([0.04, 0.055, 0.07, 0.07, 0.07, 0.07])
    assert {teacher_temperature(e, DinoConfig()) for e in range(300)} == {0.04}  # the default: no warm-up


def test_lr_schedule_equals_the_reference():
    """20 epochs x 3 steps, 10 warm-up epochs: ``cosine_scheduler(5e-5, 1e-6, 20, 3, warmup_epochs=10)``."""
    expected = {0: 0.0, 1: 1.724137931034483e-06, 2: 3.448275862068966e-06, 15: 2.5862068965517244e-05,
                28: 4.827586206896552e-05, 29: 5e-05, 30: 5e-05, 31: 4.98657864365227e-05,
                45: 2.550000000000001e-05, 59: 1.1342135634773016e-06}  # fmt: skip
    for step, value in expected.items():
        assert linspace_warmup_cosine(step, 60, 5e-5, 1e-6, 30) == pytest.approx(value, rel=1e-12, abs=1e-20)


def test_weight_decay_and_teacher_momentum_schedules_equal_the_reference():
    wd = {0: 0.03999999999999998, 1: 0.040246683744176726, 30: 0.21999999999999997, 59: 0.39975331625582333}
    momentum = {0: 0.9995, 1: 0.9995003426163114, 30: 0.99975, 59: 0.9999996573836887}
    for step in wd:
        assert cosine_lr(step, 60, 0.04, 0.4) == pytest.approx(wd[step], rel=1e-12)
        assert cosine_lr(step, 60, 0.9995, 1.0) == pytest.approx(momentum[step], rel=1e-15)


def test_center_update_equals_the_reference():
    center = CENTER.clone()
    update_center(center, TEACHER, 0.9)
    expected = [-0.16290456804717424, -0.03595199540997983, 0.07616305771735848, 0.17362163786401427,
                0.2634979598156837]
    assert center.flatten().tolist() == pytest.approx(expected, rel=1e-12)


def _stepped_method():
    """A DinoMethod whose encoders are identities (the head sees 192-d "views"), weights set by ``_fill``."""
    from ioussl import profiles
    from ioussl.science.train.methods.dino import DinoMethod

    dino = DinoConfig(out_dim=5, hidden_dim=7, bottleneck_dim=4, base_lr=0.01, end_lr=1e-4, warmup_epochs=1,
                      teacher_momentum=0.9, clip_grad=0.05, teacher_temp=0.07, warmup_teacher_temp=0.04,
                      warmup_teacher_temp_epochs=2)  # fmt: skip
    cfg = profiles.tiny("pretrain")
    cfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, method="dino", dino=dino, epochs=3))
    method = DinoMethod(cfg, steps_per_epoch=2).double()
    order = {"last_layer.weight": 1, "mlp.0.bias": 2, "mlp.0.weight": 3, "mlp.2.bias": 4, "mlp.2.weight": 5,
             "mlp.4.bias": 6, "mlp.4.weight": 7}  # fmt: skip
    for network in (method.student, method.teacher):
        network.backbone = torch.nn.Identity()
        with torch.no_grad():
            for name, param in network.head.named_parameters():
                param.copy_(_fill(tuple(param.shape), order[name]))
    return method


def test_six_training_steps_equal_the_reference_loop():
    """main_dino.py's ``train_one_epoch`` order (loss with the old centre, lr/wd set, last layer's gradient
    dropped in epoch 0, per-parameter clipping, AdamW, teacher EMA, centre EMA), 3 epochs x 2 steps, against
    the reference run on the same views: losses, student, teacher and centre after the last step."""
    method = _stepped_method()
    optimizer = method.make_optimizer(fused=False)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    losses = []
    for step in range(6):
        epoch = step // 2
        x1 = torch.sin(torch.arange(3 * 192, dtype=torch.float64).reshape(3, 192) * 0.013 * (step + 1))
        x2 = torch.cos(torch.arange(3 * 192, dtype=torch.float64).reshape(3, 192) * 0.011 * (step + 2))
        method.set_hyper(optimizer, step, epoch)
        loss = method.loss(method, x1, x2, epoch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        method.before_update(optimizer, scaler, epoch)
        optimizer.step()
        method.after_update(step, epoch)
        losses.append(loss.item())
    assert losses == pytest.approx([0.47705355863806687, 0.5049932620959894, 0.8601718741618591,
                                    0.7948968738323768, 0.7482968628149415, 0.8134372378501721], rel=1e-9)
    expected = {"student": (2.442768600970761, 0.16889679980953776, 0.3330877261695072, 0.08925232227564983),
                "teacher": (0.2613346945568775, 0.11099235259284164, 0.28317747960904266, 0.0854433039018686)}
    for name, values in expected.items():
        head = getattr(method, name).head
        found = (head.mlp[0].weight.sum().item(), head.mlp[4].bias.sum().item(),
                 head.last_layer.weight.sum().item(), head.last_layer.weight[0, 0].item())  # fmt: skip
        assert found == pytest.approx(values, rel=1e-9), name
    center = [0.22923999529784972, -0.330931486594754, -0.2588392151602191, 0.20058492229416905, 0.29308794831748436]
    assert method.center.flatten().tolist() == pytest.approx(center, rel=1e-9)
