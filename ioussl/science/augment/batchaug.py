"""The thesis' augmentations as batched tensor operations on the training device (issue 12).

The loader only cuts crops. Right after the transfer, every view (pretraining) or crop (fine-tuning) of a
batch gets its own random parameters and the whole batch is transformed at once, on whatever device holds it.
Parameter laws and functional forms are MONAI's, from the same ``AugmentSpec`` (the run config's
``pretrain.augment`` / ``finetune.augment``) that ``transforms.py`` turns into the per-sample MONAI reference
(``data.augment_on = "loader"``):

* zoom ``RandZoom(keep_size=True, bilinear, constant padding)``: ``floor(side * z)`` pixels resampled like
  ``F.interpolate``, then centre-cropped or zero-padded back (``ResizeWithPadOrCrop``); nearest for labels;
* flips per axis and ``rot90`` by k in 1..3, folded with the zoom into one separable resampling (row and
  column index maps, reversed per sample, and a per-sample transpose for odd k);
* intensity scale ``v (1 + f)``, shift ``v + o``, Gaussian smoothing with MONAI's erf kernel (zero padding,
  truncated at 4 sigma) and additive Gaussian noise whose std is itself uniform in [0, max].

Randomness comes only from the ``torch.Generator`` passed in (``DeviceAugment`` seeds one per (run seed,
epoch, step)), so a resumed run draws exactly what an uninterrupted one drew. Nothing here reads a device
value back to the host: on a GPU, an operation that applies to some samples runs on all of them with neutral
parameters (scale 1, identity kernel, noise std 0, which leave the values bit-for-bit unchanged); on the CPU,
where compute is scarce and reading an index costs nothing, it runs on the selected samples only.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ioussl.config import GEOMETRIC_OPS, INTENSITY_OPS, AugmentConfig, CropAugmentConfig, ViewAugmentConfig

GEOMETRIC, INTENSITY = GEOMETRIC_OPS, INTENSITY_OPS
TRUNCATED = 4.0  # MONAI GaussianFilter's default: the kernel spans 4 sigma on each side


@dataclass(frozen=True)
class AugmentSpec(AugmentConfig):
    """An augmentation pipeline ready to run: the settings of :class:`ioussl.config.AugmentConfig` (a run
    config's ``pretrain.augment`` or ``finetune.augment``), its operations checked at construction.

    Raises:
        ValueError: an unknown or repeated operation in ``order``.
    """

    def __post_init__(self) -> None:
        unknown = set(self.order) - set(GEOMETRIC) - set(INTENSITY)
        if unknown or len(set(self.order)) != len(self.order):
            raise ValueError(f"augmentation order {self.order} has unknown or repeated operations")

    @classmethod
    def of(cls, config: AugmentConfig) -> AugmentSpec:
        """The spec of a config's augmentation settings (``cfg.pretrain.augment``, ``cfg.finetune.augment``)."""
        return cls(**{item.name: getattr(config, item.name) for item in fields(AugmentConfig)})

    @property
    def max_tail(self) -> int:
        """Half-width of the widest smoothing kernel (MONAI: int(max(4 sigma, 0.5) + 0.5))."""
        return int(max(float(np.float32(self.sigma_range[1])) * TRUNCATED, 0.5) + 0.5)


# Thesis-protocol.md §3 (pretraining views) and §4 (fine-tuning crops): the run config's defaults, which
# transforms.py also builds MONAI's from.
PRETRAIN_VIEW = AugmentSpec.of(ViewAugmentConfig())
FINETUNE = AugmentSpec.of(CropAugmentConfig())


@dataclass(frozen=True)
class AugmentParams:
    """Per-sample parameters of a batch of N, on the batch's device; neutral where an op is not applied."""

    zoom: Tensor  # [N] float64, 1 where not zoomed
    flip: Tensor  # [N, 2] bool
    rot90: Tensor  # [N] int64 in 0..3
    scale: Tensor  # [N] float32 factor f (0 where not scaled)
    shift: Tensor  # [N] float32 offset (0 where not shifted)
    smooth: Tensor  # [N] bool
    sigma: Tensor  # [N, 2] float32 (drawn for every sample, used where smooth)
    noise: Tensor  # [N] bool
    noise_std: Tensor  # [N] float32 (0 where no noise)

    def select(self, index: slice | Tensor) -> AugmentParams:
        return AugmentParams(*(getattr(self, f)[index] for f in self.__dataclass_fields__))


def draw_params(spec: AugmentSpec, n: int, generator: torch.Generator) -> AugmentParams:
    """Draw every sample's parameters at once, each with the law of the matching MONAI transform.

    An operation missing from ``spec.order`` is never applied, whatever its probability (MONAI's pipeline
    has no transform for it); the draws are the same either way, so the others' values do not change.
    """
    u = torch.rand((n, 15), generator=generator, device=generator.device, dtype=torch.float64)

    def uniform(col: int, low: float, high: float) -> Tensor:
        return low + (high - low) * u[:, col]

    def applied(col: int, op: str) -> Tensor:
        prob = getattr(spec, f"{op}_prob") if op in spec.order else 0.0
        return u[:, col] < prob  # MONAI: R.rand() < prob

    zoom_on, scale_on, shift_on = applied(0, "zoom"), applied(6, "scale"), applied(8, "shift")
    noise_on = applied(13, "noise")
    k = torch.clamp(1 + torch.floor(3 * u[:, 5]), max=3).long()  # R.randint(3) + 1
    r_scale, r_shift = spec.scale_range, spec.shift_range
    return AugmentParams(
        zoom=torch.where(zoom_on, uniform(1, *spec.zoom_range), 1.0),
        flip=torch.stack([applied(2, "flip"), applied(3, "flip")], dim=1),
        rot90=torch.where(applied(4, "rot90"), k, 0),
        scale=torch.where(scale_on, uniform(7, -r_scale, r_scale), 0.0).float(),
        shift=torch.where(shift_on, uniform(9, -r_shift, r_shift), 0.0).float(),
        smooth=applied(10, "smooth"),
        sigma=torch.stack([uniform(11, *spec.sigma_range), uniform(12, *spec.sigma_range)], dim=1).float(),
        noise=noise_on,
        noise_std=torch.where(noise_on, uniform(14, 0.0, spec.noise_std), 0.0).float(),
    )


CPU_CHUNK = 64  # samples per pass on the CPU: 2.4 MB per 96² image tensor, so temporaries stay in cache


def augment(
    spec: AugmentSpec,
    image: Tensor,
    generator: torch.Generator,
    label: Tensor | None = None,
    params: AugmentParams | None = None,
    subset: bool | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Augment a batch ``[N, 1, H, W]`` (float32) and, geometrically only, its label.

    Args:
        spec: the pipeline (``PRETRAIN_VIEW`` for each SimSiam view, ``FINETUNE`` for crops and labels).
        generator: the only source of randomness; on the batch's device.
        params: parameters to apply instead of drawing them (tests compare with MONAI this way).
        subset: run sample-selective ops on the selected samples only, ``CPU_CHUNK`` samples at a time
            (default on the CPU), instead of on all samples at once with neutral parameters (no host
            synchronisation: the default elsewhere).
    """
    if image.ndim != 4 or image.shape[1] != 1:
        raise ValueError(f"expected a batch of single-channel images [N, 1, H, W], got {tuple(image.shape)}")
    if label is not None and label.shape != image.shape:
        raise ValueError(f"label shape {tuple(label.shape)} differs from image shape {tuple(image.shape)}")
    n, _, h, w = image.shape
    params = draw_params(spec, n, generator) if params is None else params
    subset = image.device.type == "cpu" if subset is None else subset
    maps = resample_maps(params, h, w, "bilinear")
    label_maps = None if label is None else resample_maps(params, h, w, "nearest")
    kernels = torch.stack([gaussian_kernels(params.sigma[:, axis], spec.max_tail) for axis in (0, 1)], dim=1)
    out = torch.empty((n, 1, h, w), dtype=torch.float32, device=image.device)
    moved = None if label is None else torch.empty_like(label)
    for part in _chunks(n, CPU_CHUNK if subset else n):
        dest = out[part, 0], None if moved is None else moved[part, 0]
        y_maps = None if label_maps is None else label_maps.select(part)
        x, y = _pipeline(spec, image[part, 0].float(), None if label is None else label[part, 0],
                         params.select(part), maps.select(part), y_maps, kernels[part], generator, subset,
                         dest)  # fmt: skip
        if x.data_ptr() != dest[0].data_ptr():  # the stages ran elsewhere than in the output
            dest[0].copy_(x)
        if y is not None and dest[1] is not None and y.data_ptr() != dest[1].data_ptr():
            dest[1].copy_(y)
    return out, moved


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(begin, min(n, begin + size)) for begin in range(0, n, max(size, 1))]


def _pipeline(spec, x, y, params, maps, label_maps, kernels, generator, subset, dest):
    """The stages of ``spec`` on ``[M, H, W]``; the input is never written (``owned`` says when x may be).
    The resampling writes into ``dest`` (the output's rows), and later stages work there in place."""
    owned, stages = False, _stages(spec.order)
    for i, stage in enumerate(stages):
        if stage == "geometry":
            # A scale and shift right after it ride along in its second pass (they commute with a transpose).
            affine = _affine_params(params, stages[i + 1]) if i + 1 < len(stages) else None
            x, owned = _apply_maps(x, maps, dest[0], affine), True
            y = None if y is None else _apply_maps(y, label_maps, dest[1])
            if affine is not None:
                stages[i + 1] = "done"
        elif stage in ("scale", "shift", "scale_shift"):
            factor, shift = _affine_params(params, stage)
            x, owned = _affine(x, factor, shift, owned), True
        elif stage == "smooth":
            x, owned = _smooth_selected(x, params.smooth, kernels, subset, owned), True
        elif stage == "noise":
            x, owned = _add_noise(x, params, generator, subset, owned), True
    return x, y


def _stages(order: tuple[str, ...]) -> list[str]:
    """Merge neighbouring geometric ops into one resampling and a scale followed by a shift into one pass."""
    stages: list[str] = []
    for op in order:
        if op in GEOMETRIC:
            if not stages or stages[-1] != "geometry":
                stages.append("geometry")
        elif op == "shift" and stages and stages[-1] == "scale":
            stages[-1] = "scale_shift"
        else:
            stages.append(op)
    return stages


def _affine_params(params: AugmentParams, stage: str) -> tuple[Tensor, Tensor] | None:
    """Per-sample factor ``1 + f`` and offset ``o`` of a scale / shift stage (None for another stage)."""
    if stage not in ("scale", "shift", "scale_shift"):
        return None
    factor = (1.0 + params.scale.double()).float() if "scale" in stage else torch.ones_like(params.scale)
    return factor, params.shift if "shift" in stage else torch.zeros_like(params.shift)


def _affine(x: Tensor, factor: Tensor, shift: Tensor, owned: bool) -> Tensor:
    """``x (1 + f) + o`` per sample (MONAI's ScaleIntensity then ShiftIntensity), in place when x is ours."""
    factor, shift = factor[:, None, None], shift[:, None, None]
    return torch.addcmul(shift, x, factor, out=x) if owned else torch.addcmul(shift, x, factor)


def _smooth_selected(x: Tensor, chosen: Tensor, kernels: Tensor, subset: bool, owned: bool) -> Tensor:
    """Gaussian smoothing where ``chosen``: on those samples only (``subset``), or on all, then kept where
    chosen (no data-dependent shapes, so no host synchronisation)."""
    if not subset:
        return torch.where(chosen[:, None, None], gaussian_smooth(x, kernels), x)
    index = chosen.nonzero().squeeze(1)
    if index.numel() == 0:
        return x
    out = x if owned else x.clone()
    out[index] = gaussian_smooth(x[index], kernels[index])
    return out


def _add_noise(x: Tensor, params: AugmentParams, generator: torch.Generator, subset: bool, owned: bool) -> Tensor:
    if not subset:  # std 0 adds exactly zero to the samples without noise
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return torch.addcmul(x, noise, params.noise_std[:, None, None])
    index = params.noise.nonzero().squeeze(1)
    if index.numel() == 0:
        return x
    noise = torch.randn((index.numel(), *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype)
    out = x if owned else x.clone()
    out[index] = torch.addcmul(x[index], noise, params.noise_std[index][:, None, None])
    return out


def gaussian_kernels(sigma: Tensor, max_tail: int) -> Tensor:
    """MONAI's erf Gaussian kernels (unnormalised, truncated at 4 sigma), one per sigma, zero-padded to
    ``2 max_tail + 1`` taps: ``[M] -> [M, 2 max_tail + 1]``."""
    sigma = sigma.float()
    tail = torch.floor(torch.clamp(sigma.double() * TRUNCATED, min=0.5) + 0.5)
    x = torch.arange(-max_tail, max_tail + 1, dtype=torch.float32, device=sigma.device)
    t = (0.70710678 / sigma.abs())[:, None]
    kernel = (0.5 * (torch.erf(t * (x + 0.5)) - torch.erf(t * (x - 0.5)))).clamp(min=0)
    return torch.where(x.abs()[None, :] <= tail[:, None], kernel, 0.0)


def gaussian_smooth(x: Tensor, kernels: Tensor) -> Tensor:
    """Separable smoothing of ``[M, H, W]`` with per-sample kernels ``[M, 2, taps]`` (``gaussian_kernels``
    of each axis' sigma): rows, then columns, zero padding, as a depthwise convolution."""
    m, tail = x.shape[0], (kernels.shape[-1] - 1) // 2
    out = F.conv2d(x[None], kernels[:, 0].reshape(m, 1, -1, 1), padding=(tail, 0), groups=m)
    return F.conv2d(out, kernels[:, 1].reshape(m, 1, 1, -1), padding=(0, tail), groups=m)[0]


@dataclass(frozen=True)
class ResampleMaps:
    """Zoom + flips + rot90 of a batch as separable maps: each output row (then column) is a weighted sum
    of one or two source rows, ``index``/``weight`` ``[N, side, taps]``; then a transpose for odd k."""

    rows: tuple[Tensor, Tensor]
    cols: tuple[Tensor, Tensor]
    transpose: Tensor  # [N] bool

    def select(self, part: slice | Tensor) -> ResampleMaps:
        return ResampleMaps((self.rows[0][part], self.rows[1][part]), (self.cols[0][part], self.cols[1][part]),
                            self.transpose[part])  # fmt: skip


def resample_maps(params: AugmentParams, h: int, w: int, mode: str) -> ResampleMaps:
    """The maps of zoom, flips and rot90 of ``[N, H, W]`` images.

    With ``G[a, b] = Z[A0(a), A1(b)]`` (Z the zoomed image, A_k the identity or a reversal), the flipped
    and rotated result is G (k even) or its transpose (k odd): rot90 by k maps (i, j) to (j, W-1-i),
    (H-1-i, W-1-j) or (H-1-j, i) for k = 1, 2, 3.
    """
    k = params.rot90
    transpose = k % 2 == 1
    if h != w and bool(transpose.any()):
        raise ValueError(f"rot90 of a batch needs square images, got {h}x{w}")
    reverse0 = params.flip[:, 0] ^ ((k == 2) | (k == 3))
    reverse1 = params.flip[:, 1] ^ ((k == 1) | (k == 2))
    taps = {size: _axis_taps(size, params.zoom, mode) for size in {h, w}}  # one zoom factor for both axes
    return ResampleMaps(_reversed(taps[h], reverse0), _reversed(taps[w], reverse1), transpose)


def resample(x: Tensor, params: AugmentParams, mode: str) -> Tensor:
    """Zoom, flips and rot90 of ``[N, H, W]`` in one separable resampling."""
    return _apply_maps(x, resample_maps(params, x.shape[1], x.shape[2], mode))


def _apply_maps(
    x: Tensor, maps: ResampleMaps, out: Tensor | None = None, affine: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """Resample ``[N, H, W]``; with ``affine`` (factor, offset per sample) also ``v * factor + offset``."""
    n, h, w = x.shape
    rows = _gather_rows(x.reshape(n * h, w), n, *maps.rows)  # [N, H, W], rows resampled
    # Transposed into a table with a spare row of ones: the offset's source row when affine is given.
    table = torch.empty((n * w + 1, h), dtype=rows.dtype, device=rows.device)
    table[: n * w].view(n, w, h).copy_(rows.transpose(1, 2))
    table[n * w] = 1.0
    cols = _gather_rows(table, n, *maps.cols, affine)  # G transposed: [N, W, H]
    # The odd-k samples want exactly that, the others its transpose.
    return torch.where(maps.transpose[:, None, None], cols, cols.transpose(1, 2), out=out)


def _reversed(taps: tuple[Tensor, Tensor], reverse: Tensor) -> tuple[Tensor, Tensor]:
    """The taps of the samples with ``reverse`` read from the other end (a flip after the zoom)."""
    flip = reverse[:, None, None]
    return torch.where(flip, taps[0].flip(1), taps[0]), torch.where(flip, taps[1].flip(1), taps[1])


def _axis_taps(size: int, zoom: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """Per sample and output index along one axis: the source indices and their weights ``[N, size, taps]``
    as ``F.interpolate`` (align_corners False) computes them for a ``floor(size z)`` output, shifted by the
    centred crop or pad back to ``size``; padding gets weight 0 (a zero, as MONAI's constant padding)."""
    out = torch.floor(size * zoom.double()).long()  # [N]
    shift = torch.where(out >= size, out // 2 - size // 2, -((size - out) // 2))
    k = torch.arange(size, device=zoom.device)[None, :] + shift[:, None]  # index into the zoomed image
    inside = ((k >= 0) & (k < out[:, None]))[..., None]
    # float32 size / out as torch computes it; a device-side fill, not a host-to-device copy (that would wait)
    scale = (torch.full_like(out, size, dtype=torch.float32) / out.float())[:, None]
    if mode == "nearest":
        low = torch.clamp(torch.floor(k.float() * scale).long(), max=size - 1)
        index, weight = low[..., None], torch.ones(low.shape + (1,), device=zoom.device)
    elif mode == "bilinear":
        src = torch.clamp(scale * (k.float() + 0.5) - 0.5, min=0.0)
        low = torch.clamp(src.long(), max=size - 1)
        lam = torch.clamp(src - low, 0.0, 1.0)
        index = torch.stack([low, low + (low < size - 1).long()], dim=-1)
        weight = torch.stack([1.0 - lam, lam], dim=-1)
    else:
        raise ValueError(f"resampling mode must be 'bilinear' or 'nearest', got {mode!r}")
    return torch.where(inside, index, 0), torch.where(inside, weight, 0.0)


def _gather_rows(
    table: Tensor, n: int, index: Tensor, weight: Tensor, affine: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """``out[s, a] = sum_t weight[s, a, t] table[s h + index[s, a, t]]`` for n samples of h rows each: one
    fused gather-and-weigh pass over contiguous rows (``embedding_bag`` with per-row weights).

    With ``affine`` (factor f and offset o per sample) it is ``f out + o`` in the same pass: the weights
    are scaled by f, and each output row adds o times the table's last row, which must be ones.
    """
    h = index.shape[1]
    rows = index + (torch.arange(n, device=table.device) * h)[:, None, None]
    weight = weight.to(table.dtype)
    if affine is not None:
        factor, offset = affine
        rows = torch.cat([rows, torch.full_like(rows[..., :1], table.shape[0] - 1)], dim=-1)
        weight = torch.cat([weight * factor[:, None, None], offset[:, None, None].expand(-1, h, 1)], dim=-1)
    taps = rows.shape[-1]
    out = F.embedding_bag(rows.view(-1, taps), table, per_sample_weights=weight.reshape(-1, taps), mode="sum")
    return out.view(n, h, -1)


class StepAugment:
    """The augmentation of one training run: each step's draws come from a generator seeded by (run seed,
    epoch, step), so they do not depend on what ran before (a resumed run repeats them exactly), and by the
    process's rank in a multi-GPU job (each rank augments its own share of the batch with its own draws)."""

    def __init__(self, spec: AugmentSpec, seed: int, device: torch.device, rank: int = 0) -> None:
        self.spec, self.seed, self.device, self.rank = spec, int(seed), torch.device(device), int(rank)

    def generator(self, epoch: int, step: int) -> torch.Generator:
        from ioussl.science.seeds import derived_seed

        generator = torch.Generator(device=self.device)
        generator.manual_seed(derived_seed(self.seed, epoch, f"augment/{step}", self.rank))
        return generator

    def views(self, views: Tensor, epoch: int, step: int) -> Tensor:
        """A SimSiam batch's views, both views of every pair stacked in one ``[2B, 1, H, W]`` batch: each
        view gets its own draws."""
        out, _ = augment(self.spec, views, self.generator(epoch, step))
        return out

    def crops(self, image: Tensor, label: Tensor, epoch: int, step: int) -> tuple[Tensor, Tensor]:
        """Fine-tuning crops and their labels (geometry on both, intensity on the image)."""
        image, moved = augment(self.spec, image, self.generator(epoch, step), label=label)
        assert moved is not None
        return image, moved
