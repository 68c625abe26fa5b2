"""The 3D view and fine-tune augmentations as batched tensor operations on the training device (issue 20).

The same ``AugmentSpec`` as in 2D (the reference's ``get_ssl_rand_transforms(spatial_dims=3)`` and its 3D
fine-tune transforms differ from 2D only in a flip along the third axis and a third smoothing sigma), on
batches of cubes ``[N, 1, D, H, W]``, with MONAI's laws and functional forms:

* zoom ``RandZoom(keep_size=True, bilinear, constant padding)``: in 3D MONAI interpolates trilinearly, which is
  separable, so each axis is resampled on its own with ``batchaug``'s per-axis taps (``floor(side * z)``
  voxels, centre-cropped or zero-padded back); nearest for labels;
* flips per axis (each with its own draw) and ``rot90`` by k in the plane of the first two spatial axes
  (MONAI's default ``spatial_axes=(0, 1)``), folded into the resampling as in 2D: reversed taps and a
  per-sample swap of the first two axes for odd k;
* intensity scale ``v (1 + f)``, shift ``v + o``, Gaussian smoothing with MONAI's erf kernels (one sigma per
  axis, zero padding, truncated at 4 sigma) and Gaussian noise whose std is uniform in [0, max].

Randomness comes only from the ``torch.Generator`` passed in, so a resumed run draws what an uninterrupted
one drew (``StepAugment3d`` seeds one per run seed, epoch and step, as ``StepAugment`` does in 2D).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from ioussl.science.augment.batchaug import GEOMETRIC, AugmentSpec, StepAugment, _axis_taps, gaussian_kernels

SPATIAL_DIMS = 3


@dataclass(frozen=True)
class AugmentParams3d:
    """Per-sample parameters of a batch of N cubes; neutral where an operation is not applied."""

    zoom: Tensor  # [N] float64, 1 where not zoomed
    flip: Tensor  # [N, 3] bool
    rot90: Tensor  # [N] int64 in 0..3, in the plane of spatial axes 0 and 1
    scale: Tensor  # [N] float32 factor f (0 where not scaled)
    shift: Tensor  # [N] float32 offset (0 where not shifted)
    smooth: Tensor  # [N] bool
    sigma: Tensor  # [N, 3] float32 (drawn for every sample, used where smooth)
    noise: Tensor  # [N] bool
    noise_std: Tensor  # [N] float32 (0 where no noise)

    def select(self, index: slice | Tensor) -> AugmentParams3d:
        return AugmentParams3d(*(getattr(self, item.name)[index] for item in fields(self)))


def draw_params_3d(spec: AugmentSpec, n: int, generator: torch.Generator) -> AugmentParams3d:
    """Every sample's parameters at once, each with the law of the matching MONAI transform in 3D."""
    u = torch.rand((n, 17), generator=generator, device=generator.device, dtype=torch.float64)

    def uniform(col: int, low: float, high: float) -> Tensor:
        return low + (high - low) * u[:, col]

    def applied(col: int, prob: float) -> Tensor:
        return u[:, col] < prob  # MONAI: R.rand() < prob

    zoom_on, scale_on, shift_on = applied(0, spec.zoom_prob), applied(7, spec.scale_prob), applied(9, spec.shift_prob)
    noise_on = applied(15, spec.noise_prob)
    k = torch.clamp(1 + torch.floor(3 * u[:, 6]), max=3).long()  # R.randint(3) + 1
    r_scale, r_shift = spec.scale_range, spec.shift_range
    return AugmentParams3d(
        zoom=torch.where(zoom_on, uniform(1, *spec.zoom_range), 1.0),
        flip=torch.stack([applied(col, spec.flip_prob) for col in (2, 3, 4)], dim=1),
        rot90=torch.where(applied(5, spec.rot90_prob), k, 0),
        scale=torch.where(scale_on, uniform(8, -r_scale, r_scale), 0.0).float(),
        shift=torch.where(shift_on, uniform(10, -r_shift, r_shift), 0.0).float(),
        smooth=applied(11, spec.smooth_prob),
        sigma=torch.stack([uniform(col, *spec.sigma_range) for col in (12, 13, 14)], dim=1).float(),
        noise=noise_on,
        noise_std=torch.where(noise_on, uniform(16, 0.0, spec.noise_std), 0.0).float(),
    )


def augment_3d(
    spec: AugmentSpec,
    image: Tensor,
    generator: torch.Generator,
    label: Tensor | None = None,
    params: AugmentParams3d | None = None,
    subset: bool | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Augment a batch of cubes ``[N, 1, D, H, W]`` (float32) and, geometrically only, its label.

    Args:
        spec: the pipeline (``PRETRAIN_VIEW`` for each SimSiam view, ``FINETUNE`` for crops and labels).
        generator: the only source of randomness; on the batch's device.
        params: parameters to apply instead of drawing them (the tests compare with MONAI this way).
        subset: smooth and add noise on the selected samples only (default on the CPU), or on all with
            neutral parameters (no host synchronisation: the default elsewhere).
    """
    if image.ndim != 5 or image.shape[1] != 1:
        raise ValueError(f"expected a batch of single-channel volumes [N, 1, D, H, W], got {tuple(image.shape)}")
    if label is not None and label.shape != image.shape:
        raise ValueError(f"label shape {tuple(label.shape)} differs from image shape {tuple(image.shape)}")
    n = image.shape[0]
    params = draw_params_3d(spec, n, generator) if params is None else params
    subset = image.device.type == "cpu" if subset is None else subset
    x, y = image[:, 0].float(), None if label is None else label[:, 0]
    geometry_done = False
    for op in spec.order:
        if op in GEOMETRIC:
            if not geometry_done:  # a run of geometric ops is one resampling (zoom, then flips, then rot90)
                x = resample_3d(x, params, "bilinear")
                y = None if y is None else resample_3d(y, params, "nearest")
                geometry_done = True
            continue
        geometry_done = False
        if op == "scale":
            x = x * (1.0 + params.scale.double()).float()[:, None, None, None]
        elif op == "shift":
            x = x + params.shift[:, None, None, None]
        elif op == "smooth":
            x = _smooth(x, params, spec.max_tail, subset)
        elif op == "noise":
            x = _noise(x, params, generator, subset)
    return x[:, None], None if y is None else y[:, None]


def resample_3d(x: Tensor, params: AugmentParams3d, mode: str) -> Tensor:
    """Zoom, flips and rot90 of ``[N, D, H, W]``, one axis at a time (trilinear is separable).

    With ``G[a, b, c] = Z[A0(a), A1(b), A2(c)]`` (Z the zoomed volume, A_k the identity or a reversal), the
    result is G for even k and G with its first two axes swapped for odd k, as ``batchaug.resample_maps``
    derives for the plane of rotation.
    """
    n, d, h, w = x.shape
    k = params.rot90
    swap = k % 2 == 1
    if d != h and bool(swap.any()):
        raise ValueError(f"rot90 of a batch needs equal first two sides, got {d}x{h}")
    reverse = (params.flip[:, 0] ^ ((k == 2) | (k == 3)), params.flip[:, 1] ^ ((k == 1) | (k == 2)), params.flip[:, 2])
    for axis, size in enumerate((d, h, w)):
        index, weight = _axis_taps(size, params.zoom, mode)
        flip = reverse[axis][:, None, None]
        index, weight = torch.where(flip, index.flip(1), index), torch.where(flip, weight.flip(1), weight)
        x = _resample_axis(x, axis + 1, index, weight)
    return torch.where(swap[:, None, None, None], x.transpose(1, 2), x)


def _resample_axis(x: Tensor, dim: int, index: Tensor, weight: Tensor) -> Tensor:
    """``out[.., a, ..] = sum_t weight[a, t] x[.., index[a, t], ..]`` along ``dim``, per sample."""
    view = [x.shape[0], 1, 1, 1]
    view[dim] = index.shape[1]
    out = None
    for tap in range(index.shape[2]):
        gathered = torch.gather(x, dim, index[..., tap].reshape(view).expand(x.shape))
        term = gathered * weight[..., tap].reshape(view).to(x.dtype)
        out = term if out is None else out + term
    assert out is not None
    return out


def gaussian_smooth_3d(x: Tensor, kernels: Tensor) -> Tensor:
    """Separable smoothing of ``[M, D, H, W]`` with per-sample kernels ``[M, 3, taps]``, zero padding."""
    m, tail = x.shape[0], (kernels.shape[-1] - 1) // 2
    out = x[None]
    for axis in range(SPATIAL_DIMS):
        shape, padding = [m, 1, 1, 1, 1], [0, 0, 0]
        shape[2 + axis], padding[axis] = -1, tail
        out = F.conv3d(out, kernels[:, axis].reshape(shape), padding=tuple(padding), groups=m)
    return out[0]


def _smooth(x: Tensor, params: AugmentParams3d, max_tail: int, subset: bool) -> Tensor:
    kernels = torch.stack([gaussian_kernels(params.sigma[:, axis], max_tail) for axis in range(SPATIAL_DIMS)], dim=1)
    if not subset:
        return torch.where(params.smooth[:, None, None, None], gaussian_smooth_3d(x, kernels), x)
    index = params.smooth.nonzero().squeeze(1)
    if index.numel() == 0:
        return x
    out = x.clone()
    out[index] = gaussian_smooth_3d(x[index], kernels[index])
    return out


def _noise(x: Tensor, params: AugmentParams3d, generator: torch.Generator, subset: bool) -> Tensor:
    if not subset:  # std 0 adds exactly zero to the samples without noise
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return torch.addcmul(x, noise, params.noise_std[:, None, None, None])
    index = params.noise.nonzero().squeeze(1)
    if index.numel() == 0:
        return x
    noise = torch.randn((index.numel(), *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype)
    out = x.clone()
    out[index] = torch.addcmul(x[index], noise, params.noise_std[index][:, None, None, None])
    return out


class StepAugment3d(StepAugment):
    """``StepAugment`` for cubes: the same per-(run seed, epoch, step) generators, the 3D operations."""

    def views(self, views: Tensor, epoch: int, step: int) -> Tensor:
        out, _ = augment_3d(self.spec, views, self.generator(epoch, step))
        return out

    def crops(self, image: Tensor, label: Tensor, epoch: int, step: int) -> tuple[Tensor, Tensor]:
        image, moved = augment_3d(self.spec, image, self.generator(epoch, step), label=label)
        assert moved is not None
        return image, moved
