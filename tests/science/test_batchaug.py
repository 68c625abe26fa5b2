"""Batched device augmentations against MONAI's per-sample reference: the laws of the parameter draws, the
outputs given the same parameters, and the pixel statistics of whole batches. All on CPU tensors (the code
is device-agnostic); both strategies (selected samples only, and all samples with neutral parameters)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from monai.data import set_track_meta
from monai.transforms import Compose, Flip, GaussianSmooth, Rotate90, ScaleIntensity, ShiftIntensity, Zoom
from scipy import stats

from ioussl.science.augment.batchaug import (
    FINETUNE,
    PRETRAIN_VIEW,
    AugmentParams,
    AugmentSpec,
    StepAugment,
    augment,
    draw_params,
    resample,
)
from ioussl.science.augment.transforms import monai_transforms

P_MIN = 1e-3  # fixed seeds: every test below is deterministic; this only sets how close the laws must be


@pytest.fixture(autouse=True)
def plain_tensors():
    set_track_meta(False)  # compare values, not MONAI metadata
    yield
    set_track_meta(True)


def _images(n: int, side: int = 96, seed: int = 0) -> torch.Tensor:
    """Smooth random fields with edges, in [0, 1]: zoom and blur change them visibly."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand((n, 1, side // 8, side // 8), generator=gen)
    fine = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    return (0.7 * fine + 0.3 * (fine > 0.5).float()).clamp(0, 1)


class _Spy:
    """Wraps a transform's RandomState and records what its uniform and randint calls returned."""

    def __init__(self, state: np.random.RandomState) -> None:
        self.state, self.values = state, []

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        fn = getattr(self.state, name)
        if name not in ("uniform", "randint"):
            return fn

        def record(*args, **kwargs):  # type: ignore[no-untyped-def]
            value = fn(*args, **kwargs)
            self.values.append(value)
            return value

        return record


def _monai_draws(spec: AugmentSpec, n: int) -> dict[str, list]:
    """n draws of every MONAI transform of ``spec``: applied or not, and the parameters it drew."""
    draws: dict[str, list] = {}
    image = torch.zeros(1, 8, 8)
    for position, transform in enumerate(monai_transforms(spec)):
        transform.set_random_state(seed=100 + position)
        spy = _Spy(transform.R)
        transform.R = spy
        axis = getattr(getattr(transform, "flipper", None), "spatial_axis", "")
        name = f"{type(transform).__name__}{axis}"
        for _ in range(n):
            spy.values.clear()
            transform.randomize(image) if "Zoom" in name or "Noise" in name else transform.randomize(None)
            draws.setdefault(name, []).append((bool(transform._do_transform), list(spy.values)))
    return draws


def _two_proportions(a: np.ndarray, b: np.ndarray) -> float:
    table = [[a.sum(), (~a).sum()], [b.sum(), (~b).sum()]]
    return stats.chi2_contingency(table)[1]


@pytest.mark.parametrize("spec", [PRETRAIN_VIEW, FINETUNE], ids=["pretrain", "finetune"])
def test_parameter_draws_follow_monai_laws(spec):
    n = 40_000  # enough to see a 5% error in a range or a probability
    ref = _monai_draws(spec, n)
    ours = draw_params(spec, n, torch.Generator().manual_seed(1))

    def applied(name: str) -> np.ndarray:
        return np.array([do for do, _ in ref[name]])

    def values(name: str, index: int = 0) -> np.ndarray:
        return np.array([float(np.ravel(v[index])[0]) for do, v in ref[name] if do and v])

    checks = []  # (what, p-value)
    if spec.zoom_prob:
        zoomed = ours.zoom.numpy() != 1.0
        checks += [("zoom p", _two_proportions(applied("RandZoom"), zoomed)),
                   ("zoom", stats.ks_2samp(values("RandZoom"), ours.zoom.numpy()[zoomed]).pvalue)]  # fmt: skip
    for axis in (0, 1):
        checks.append((f"flip {axis}", _two_proportions(applied(f"RandFlip{axis}"), ours.flip[:, axis].numpy())))
    rotated = ours.rot90.numpy() > 0
    k_ref = np.array([v[0] + 1 for do, v in ref["RandRotate90"] if do])
    k_ours = ours.rot90.numpy()[rotated]
    checks += [("rot90 p", _two_proportions(applied("RandRotate90"), rotated)),
               ("rot90 k", stats.chi2_contingency([np.bincount(k_ref, minlength=4)[1:],
                                                   np.bincount(k_ours, minlength=4)[1:]])[1])]  # fmt: skip
    for name, field in (("RandScaleIntensity", "scale"), ("RandShiftIntensity", "shift")):
        on = getattr(ours, field).numpy() != 0
        checks += [(f"{field} p", _two_proportions(applied(name), on)),
                   (field, stats.ks_2samp(values(name), getattr(ours, field).numpy()[on]).pvalue)]  # fmt: skip
    smooth = ours.smooth.numpy()
    checks += [("smooth p", _two_proportions(applied("RandGaussianSmooth"), smooth)),
               ("sigma x", stats.ks_2samp(values("RandGaussianSmooth", 0), ours.sigma[smooth, 0].numpy()).pvalue),
               ("sigma y", stats.ks_2samp(values("RandGaussianSmooth", 1), ours.sigma[smooth, 1].numpy()).pvalue),
               ("noise p", _two_proportions(applied("RandGaussianNoise"), ours.noise.numpy())),
               ("noise std", stats.ks_2samp(values("RandGaussianNoise"),
                                            ours.noise_std[ours.noise].numpy()).pvalue)]  # fmt: skip
    failed = [(what, p) for what, p in checks if not p > P_MIN]
    assert not failed, failed


def _forced(spec: AugmentSpec, n: int, seed: int) -> AugmentParams:
    """Draws with every operation of ``spec`` on for most samples (noise off: compared statistically)."""
    always = dataclasses.replace(spec, zoom_prob=min(1.0, 10 * spec.zoom_prob), smooth_prob=0.7, noise_prob=0.0,
                                 scale_prob=0.8, shift_prob=0.8, flip_prob=0.5, rot90_prob=0.7)  # fmt: skip
    params = draw_params(always, n, torch.Generator().manual_seed(seed))
    if spec.zoom_prob:  # the extremes and sizes that pad or crop by an odd number of pixels
        edges = torch.tensor([0.8, 1.2, 0.99, 1.01, 1.0 - 1e-9], dtype=torch.float64)
        params = dataclasses.replace(params, zoom=torch.cat([edges, params.zoom[len(edges):]]))
    return params


def _monai_reference(spec: AugmentSpec, params: AugmentParams, i: int) -> Compose:
    """MONAI's deterministic transforms with sample i's parameters, in the spec's order."""
    ops = {
        "zoom": [Zoom(float(params.zoom[i]), mode="bilinear", padding_mode="constant", keep_size=True)]
        if float(params.zoom[i]) != 1.0 else [],
        "flip": [Flip(axis) for axis in (0, 1) if params.flip[i, axis]],
        "rot90": [Rotate90(int(params.rot90[i]))] if params.rot90[i] else [],
        "scale": [ScaleIntensity(minv=None, maxv=None, factor=float(params.scale[i]))],
        "shift": [ShiftIntensity(float(params.shift[i]))],
        "smooth": [GaussianSmooth(sigma=tuple(params.sigma[i].tolist()))] if params.smooth[i] else [],
        "noise": [],
    }
    return Compose([t for op in spec.order for t in ops[op]])


@pytest.mark.parametrize("subset", [True, False], ids=["selected-only", "all-neutral"])
@pytest.mark.parametrize("spec", [PRETRAIN_VIEW, FINETUNE], ids=["pretrain", "finetune"])
def test_outputs_match_monai_given_the_same_parameters(spec, subset):
    n = 48
    image = _images(n, seed=2)
    params = _forced(spec, n, seed=3)
    out, _ = augment(spec, image, torch.Generator(), params=params, subset=subset)
    assert out.shape == image.shape and out.dtype == torch.float32
    for i in range(n):
        expected = torch.as_tensor(_monai_reference(spec, params, i)(image[i]))
        torch.testing.assert_close(out[i], expected, atol=2e-5, rtol=0, msg=f"sample {i}")


def test_labels_move_with_the_image_and_keep_their_values():
    n = 64
    image = _images(n, seed=4)
    label = torch.floor(image * 13.99)  # a label that is a function of the image
    params = _forced(FINETUNE, n, seed=5)
    out, moved = augment(FINETUNE, image, torch.Generator(), label=label, params=params)
    geometric_only = dataclasses.replace(params, scale=torch.zeros(n), shift=torch.zeros(n),
                                         smooth=torch.zeros(n, dtype=torch.bool))  # fmt: skip
    moved_image, _ = augment(FINETUNE, image, torch.Generator(), params=geometric_only)
    assert torch.equal(moved, torch.floor(moved_image * 13.99))  # same geometry, exactly
    for i in range(n):  # and exactly MONAI's flips and rotations of the label
        ops = [Flip(a) for a in (0, 1) if params.flip[i, a]]
        ops += [Rotate90(int(params.rot90[i]))] if params.rot90[i] else []
        assert torch.equal(moved[i], torch.as_tensor(Compose(ops)(label[i]) if ops else label[i]))
    changed = params.scale.ne(0) | params.shift.ne(0) | params.smooth
    assert not torch.equal(out[changed], moved_image[changed])  # intensity ops reached the image only


@pytest.mark.parametrize("zoom", [0.8, 0.85, 0.93, 1.07, 1.2])
def test_nearest_zoom_for_labels_matches_monai(zoom):
    label = torch.floor(_images(1, side=64, seed=6)[0, 0] * 13.99)
    params = draw_params(PRETRAIN_VIEW, 1, torch.Generator().manual_seed(0))
    params = dataclasses.replace(params, zoom=torch.tensor([zoom], dtype=torch.float64),
                                 flip=torch.zeros(1, 2, dtype=torch.bool),
                                 rot90=torch.zeros(1, dtype=torch.long))  # fmt: skip
    expected = Zoom(zoom, mode="nearest", padding_mode="constant", keep_size=True)(label[None])[0]
    assert torch.equal(resample(label[None], params, "nearest")[0], torch.as_tensor(expected))


@pytest.mark.parametrize("subset", [True, False])
def test_noise_has_the_drawn_std_and_only_where_drawn(subset):
    n = 200
    image = _images(n, seed=7)
    params = draw_params(dataclasses.replace(PRETRAIN_VIEW, noise_prob=0.5), n, torch.Generator().manual_seed(8))
    quiet = dataclasses.replace(params, zoom=torch.ones(n, dtype=torch.float64),
                                flip=torch.zeros(n, 2, dtype=torch.bool), rot90=torch.zeros(n, dtype=torch.long),
                                scale=torch.zeros(n), shift=torch.zeros(n),
                                smooth=torch.zeros(n, dtype=torch.bool))  # fmt: skip
    out, _ = augment(PRETRAIN_VIEW, image, torch.Generator().manual_seed(9), params=quiet, subset=subset)
    delta = (out - image).flatten(1).double()
    noisy = params.noise
    assert torch.equal(out[~noisy], image[~noisy])
    measured, drawn = delta[noisy].std(dim=1), params.noise_std[noisy].double()
    assert torch.allclose(measured, drawn, rtol=0.05, atol=2e-7)  # 9,216 pixels: about 0.7% sampling error
    assert delta[noisy].mean(dim=1).abs().max() < 4 * drawn.max() / 96


def _view_statistics(views: torch.Tensor) -> dict[str, np.ndarray]:
    flat = views.flatten(1).double()
    lap = views[:, 0, 1:-1, 1:-1] * 4 - views[:, 0, :-2, 1:-1] - views[:, 0, 2:, 1:-1] - views[:, 0, 1:-1, :-2]
    lap = lap - views[:, 0, 1:-1, 2:]
    return {
        "mean": flat.mean(1).numpy(),
        "std": flat.std(1).numpy(),
        "zero share": (flat == 0).double().mean(1).numpy(),
        "roughness": lap.abs().flatten(1).double().mean(1).numpy(),
        "top-left": views[:, 0, :8, :8].flatten(1).double().mean(1).numpy(),
    }


def test_whole_batches_have_the_pixel_statistics_of_the_monai_path():
    from ioussl.science.augment.transforms import pretrain_view_augment
    from ioussl.science.train.datasets import _plain_tensors

    n = 1500
    image = _images(n, seed=10)
    reference = pretrain_view_augment()
    reference.set_random_state(seed=11)
    with _plain_tensors():
        theirs = torch.stack([torch.as_tensor(reference(v)).as_subclass(torch.Tensor) for v in image])
    ours, _ = augment(PRETRAIN_VIEW, image, torch.Generator().manual_seed(12))
    a, b = _view_statistics(theirs), _view_statistics(ours)
    pvalues = {name: stats.ks_2samp(a[name], b[name]).pvalue for name in a}
    assert all(p > P_MIN for p in pvalues.values()), pvalues
    untouched = _view_statistics(image)
    assert stats.ks_2samp(untouched["roughness"], b["roughness"]).pvalue < 1e-6  # the test can tell


def test_step_draws_depend_only_on_seed_epoch_and_step():
    views = torch.cat([_images(8, seed=13)] * 2)  # both views of 8 pairs: the same crops
    one, two = StepAugment(PRETRAIN_VIEW, 5, torch.device("cpu")), StepAugment(PRETRAIN_VIEW, 5, torch.device("cpu"))
    first = one.views(views, epoch=2, step=17)
    one.views(views, epoch=2, step=18)  # whatever ran before does not matter
    assert torch.equal(first, two.views(views, epoch=2, step=17))
    assert not torch.equal(first[:8], first[8:])  # the two views of a pair get their own draws
    assert not torch.equal(first, one.views(views, epoch=3, step=17))
    assert not torch.equal(first, StepAugment(PRETRAIN_VIEW, 6, torch.device("cpu")).views(views, epoch=2, step=17))


def test_bad_batches_are_refused():
    gen = torch.Generator()
    with pytest.raises(ValueError, match="single-channel"):
        augment(PRETRAIN_VIEW, torch.zeros(2, 3, 8, 8), gen)
    with pytest.raises(ValueError, match="label shape"):
        augment(FINETUNE, torch.zeros(2, 1, 8, 8), gen, label=torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="square"):
        augment(dataclasses.replace(PRETRAIN_VIEW, rot90_prob=1.0), torch.zeros(4, 1, 8, 6), gen)
    with pytest.raises(ValueError, match="unknown or repeated"):
        AugmentSpec(order=("zoom", "zoom"))


def test_any_order_of_operations_applies_each_once():
    """Scale and shift apart (a spec neither stage uses) must each apply once, where the order puts them."""
    spec = AugmentSpec(order=("scale", "smooth", "shift", "flip"), scale_prob=1.0, scale_range=0.1,
                       shift_prob=1.0, shift_range=0.1, smooth_prob=1.0, flip_prob=0.5)  # fmt: skip
    image, params = _images(16, seed=14), draw_params(spec, 16, torch.Generator().manual_seed(15))
    out, _ = augment(spec, image, torch.Generator(), params=params)
    for i in range(16):
        expected = Compose([ScaleIntensity(minv=None, maxv=None, factor=float(params.scale[i])),
                            GaussianSmooth(sigma=tuple(params.sigma[i].tolist())),
                            ShiftIntensity(float(params.shift[i])),
                            *[Flip(a) for a in (0, 1) if params.flip[i, a]]])(image[i])  # fmt: skip
        torch.testing.assert_close(out[i], torch.as_tensor(expected), atol=2e-5, rtol=0)
