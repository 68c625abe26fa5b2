"""3D batched augmentations against MONAI's per-sample 3D transforms (the reference's
``get_ssl_rand_transforms(spatial_dims=3)`` and 3D fine-tune transforms): the laws of the draws, the outputs
given the same parameters, labels moved with the image, and per-step determinism. CPU tensors, small cubes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from monai.data import set_track_meta
from monai.transforms import Compose, Flip, GaussianSmooth, Rotate90, ScaleIntensity, ShiftIntensity, Zoom
from scipy import stats

from ioussl.science.augment.batchaug import FINETUNE, PRETRAIN_VIEW, AugmentSpec
from ioussl.science.augment.batchaug3d import AugmentParams3d, StepAugment3d, augment_3d, draw_params_3d
from ioussl.science.augment.transforms import monai_transforms

P_MIN = 1e-3


@pytest.fixture(autouse=True)
def plain_tensors():
    set_track_meta(False)
    yield
    set_track_meta(True)


def _cubes(n: int, side: int = 20, seed: int = 0) -> torch.Tensor:
    """Smooth random fields with edges in [0, 1]: zoom and blur change them visibly."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand((n, 1, 5, 5, 5), generator=gen)
    fine = torch.nn.functional.interpolate(coarse, size=(side,) * 3, mode="trilinear", align_corners=False)
    return (0.7 * fine + 0.3 * (fine > 0.5).float()).clamp(0, 1)


def _forced(spec: AugmentSpec, n: int, seed: int) -> AugmentParams3d:
    """Draws with every operation on for most samples, plus zooms that pad or crop by an odd count."""
    always = dataclasses.replace(spec, zoom_prob=min(1.0, 10 * spec.zoom_prob), smooth_prob=0.7, noise_prob=0.0,
                                 scale_prob=0.8, shift_prob=0.8, flip_prob=0.5, rot90_prob=0.7)  # fmt: skip
    params = draw_params_3d(always, n, torch.Generator().manual_seed(seed))
    if spec.zoom_prob:
        edges = torch.tensor([0.8, 1.2, 0.97, 1.03], dtype=torch.float64)
        params = dataclasses.replace(params, zoom=torch.cat([edges, params.zoom[len(edges) :]]))
    return params


def _monai_reference(spec: AugmentSpec, params: AugmentParams3d, i: int) -> Compose:
    """MONAI's deterministic 3D transforms with sample i's parameters (Rotate90 in spatial axes 0, 1)."""
    ops = {
        "zoom": [Zoom(float(params.zoom[i]), mode="bilinear", padding_mode="constant", keep_size=True)]
        if float(params.zoom[i]) != 1.0 else [],
        "flip": [Flip(axis) for axis in (0, 1, 2) if params.flip[i, axis]],
        "rot90": [Rotate90(int(params.rot90[i]))] if params.rot90[i] else [],
        "scale": [ScaleIntensity(minv=None, maxv=None, factor=float(params.scale[i]))],
        "shift": [ShiftIntensity(float(params.shift[i]))],
        "smooth": [GaussianSmooth(sigma=tuple(params.sigma[i].tolist()))] if params.smooth[i] else [],
        "noise": [],
    }  # fmt: skip
    return Compose([t for op in spec.order for t in ops[op]])


@pytest.mark.parametrize("subset", [True, False], ids=["selected-only", "all-neutral"])
@pytest.mark.parametrize("spec", [PRETRAIN_VIEW, FINETUNE], ids=["pretrain", "finetune"])
def test_outputs_match_monai_3d_given_the_same_parameters(spec, subset):
    n = 16
    image = _cubes(n, seed=2)
    params = _forced(spec, n, seed=3)
    assert params.flip[:, 2].any() and (params.rot90 % 2 == 1).any() and params.smooth.any()  # the 3D parts run
    out, _ = augment_3d(spec, image, torch.Generator(), params=params, subset=subset)
    assert out.shape == image.shape and out.dtype == torch.float32
    for i in range(n):
        expected = torch.as_tensor(_monai_reference(spec, params, i)(image[i]))
        torch.testing.assert_close(out[i], expected, atol=2e-5, rtol=0, msg=f"sample {i}")


def test_labels_move_with_the_image_exactly_as_monai_moves_them():
    n = 16
    image = _cubes(n, seed=4)
    label = torch.floor(image * 13.99)
    params = _forced(FINETUNE, n, seed=5)
    out, moved = augment_3d(FINETUNE, image, torch.Generator(), label=label, params=params)
    for i in range(n):
        ops = [Flip(a) for a in (0, 1, 2) if params.flip[i, a]]
        ops += [Rotate90(int(params.rot90[i]))] if params.rot90[i] else []
        assert torch.equal(moved[i], torch.as_tensor(Compose(ops)(label[i]) if ops else label[i]))
    changed = params.scale.ne(0) | params.shift.ne(0) | params.smooth
    assert changed.any() and not torch.equal(out[changed], moved[changed] / 13.99)


@pytest.mark.parametrize("zoom", [0.8, 0.93, 1.07, 1.2])
def test_nearest_zoom_of_labels_matches_monai(zoom):
    label = torch.floor(_cubes(1, side=24, seed=6)[0] * 13.99)
    params = draw_params_3d(PRETRAIN_VIEW, 1, torch.Generator().manual_seed(0))
    params = dataclasses.replace(
        params,
        zoom=torch.tensor([zoom], dtype=torch.float64),
        flip=torch.zeros(1, 3, dtype=torch.bool),
        rot90=torch.zeros(1, dtype=torch.long),
        scale=torch.zeros(1),
        shift=torch.zeros(1),
        smooth=torch.zeros(1, dtype=torch.bool),
    )
    expected = Zoom(zoom, mode="nearest", padding_mode="constant", keep_size=True)(label)
    _, moved = augment_3d(FINETUNE, label[None], torch.Generator(), label=label[None], params=params)
    assert torch.equal(moved[0], torch.as_tensor(expected))


def _monai_draws_3d(spec: AugmentSpec, n: int) -> dict[str, np.ndarray]:
    """Applied-or-not and the drawn values of the MONAI 3D transforms of ``spec``, n times each."""
    image = torch.zeros(1, 4, 4, 4)
    draws: dict[str, list] = {}
    for position, transform in enumerate(monai_transforms(spec, spatial_dims=3)):
        transform.set_random_state(seed=200 + position)
        axis = getattr(getattr(transform, "flipper", None), "spatial_axis", "")
        name = f"{type(transform).__name__}{axis}"
        for _ in range(n):
            transform.randomize(image) if "Zoom" in name or "Noise" in name else transform.randomize(None)
            value = {"RandZoom": lambda t: t._zoom[0], "RandGaussianSmooth": lambda t: t.z,
                     "RandRotate90": lambda t: t._rand_k}.get(name, lambda t: 0.0)(transform)  # fmt: skip
            draws.setdefault(name, []).append((bool(transform._do_transform), float(value)))
    return {name: np.array(rows) for name, rows in draws.items()}


@pytest.mark.parametrize("spec", [PRETRAIN_VIEW, FINETUNE], ids=["pretrain", "finetune"])
def test_draw_laws_follow_monai_3d(spec):
    n = 20_000
    ref = _monai_draws_3d(spec, n)
    ours = draw_params_3d(spec, n, torch.Generator().manual_seed(1))
    assert {"RandFlip0", "RandFlip1", "RandFlip2"} <= set(ref)  # the reference's third flip
    checks = []
    for axis in (0, 1, 2):
        table = [[ref[f"RandFlip{axis}"][:, 0].sum(), n - ref[f"RandFlip{axis}"][:, 0].sum()],
                 [ours.flip[:, axis].sum().item(), n - ours.flip[:, axis].sum().item()]]  # fmt: skip
        checks.append((f"flip {axis}", stats.chi2_contingency(table)[1]))
    smooth_ref = ref["RandGaussianSmooth"]
    on = smooth_ref[:, 0] == 1
    checks.append(("sigma z", stats.ks_2samp(smooth_ref[on, 1], ours.sigma[ours.smooth, 2].numpy()).pvalue))
    rot = ref["RandRotate90"]
    k_ref = np.bincount(rot[rot[:, 0] == 1, 1].astype(int), minlength=4)[1:]
    k_ours = np.bincount(ours.rot90.numpy(), minlength=4)[1:]
    checks.append(("rot90 k", stats.chi2_contingency([k_ref, k_ours])[1]))
    if spec.zoom_prob:
        zoom = ref["RandZoom"]
        ours_zoomed = ours.zoom.numpy()[ours.zoom.numpy() != 1.0]
        checks.append(("zoom", stats.ks_2samp(zoom[zoom[:, 0] == 1, 1], ours_zoomed).pvalue))
    failed = [(what, p) for what, p in checks if not p > P_MIN]
    assert not failed, failed


def test_step_draws_depend_only_on_seed_epoch_and_step():
    views = torch.cat([_cubes(4, side=16, seed=7)] * 2)
    one, two = (
        StepAugment3d(PRETRAIN_VIEW, 5, torch.device("cpu")),
        StepAugment3d(PRETRAIN_VIEW, 5, torch.device("cpu")),
    )
    first = one.views(views, epoch=1, step=3)
    one.views(views, epoch=1, step=4)
    assert torch.equal(first, two.views(views, epoch=1, step=3))
    assert not torch.equal(first[:4], first[4:])
    assert not torch.equal(first, one.views(views, epoch=2, step=3))


def test_bad_batches_are_refused():
    with pytest.raises(ValueError, match="single-channel volumes"):
        augment_3d(PRETRAIN_VIEW, torch.zeros(2, 1, 8, 8), torch.Generator())
    with pytest.raises(ValueError, match="label shape"):
        augment_3d(FINETUNE, torch.zeros(2, 1, 8, 8, 8), torch.Generator(), label=torch.zeros(2, 1, 4, 4, 4))
