"""Where each stored voxel came from, and the way back: predictions on the original image grid.

Preprocessing reorients to RAS, resamples to the target spacing, crops to the foreground and pads. Each
step permutes, flips, scales or shifts voxel indices along the axes, so the affine of the preprocessed grid
and the affine of the original image together say exactly where every original voxel lies in the stored
volume. ``describe_grid`` records both (and, for people, the crop box and padding) at preprocessing time;
``to_source_grid`` maps a stored-layout prediction back with nearest-neighbour lookup, which undoes the
resampling exactly wherever the target spacing is finer than the original's (FLARE's 2.5-5 mm slices and
this repository's test volumes; at FLARE's 0.6-0.9 mm in-plane spacing the 1 mm grid loses detail that no
mapping can restore).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ioussl.errors import DataError

_ALIGNED_TOLERANCE = 1e-4  # off-axis terms of the index map, relative to the on-axis ones


def describe_grid(source_affine: np.ndarray, source_shape: tuple[int, ...], out: Any) -> dict[str, Any]:
    """The record of what preprocessing did to one volume, from the output MetaTensor and its trace.

    Args:
        source_affine: the original image's affine (voxel index -> world mm).
        source_shape: the original image's shape.
        out: the preprocessed label or image, a MONAI MetaTensor [1, X, Y, Z] with its applied operations.

    Returns:
        JSON-able: ``source_shape``, ``source_affine``, ``source_axcodes``, ``source_spacing``,
        ``resampled_shape``, ``crop_start``, ``crop_end`` (on the resampled grid), ``pad_before``,
        ``pad_after``, ``shape`` (X, Y, Z) and ``affine`` of the preprocessed grid.
    """
    import nibabel as nib
    from monai.utils import TraceKeys

    ops = {op[TraceKeys.CLASS_NAME]: op for op in out.applied_operations}
    if "CropForeground" not in ops or "SpatialPad" not in ops:
        raise DataError(f"preprocessing trace lacks the crop or pad step (got {sorted(ops)}); cannot record grid")
    resampled = [int(v) for v in ops["CropForeground"][TraceKeys.ORIG_SIZE]]
    cropped = [int(v) for v in ops["CropForeground"][TraceKeys.EXTRA_INFO]["cropped"]]
    padded = [tuple(int(v) for v in p) for p in ops["SpatialPad"][TraceKeys.EXTRA_INFO]["padded"][1:]]
    shape = [int(v) for v in out.shape[1:]]
    grid = {
        "source_shape": [int(v) for v in source_shape],
        "source_affine": np.asarray(source_affine, dtype=np.float64).tolist(),
        "source_axcodes": "".join(nib.aff2axcodes(source_affine)),
        "source_spacing": np.linalg.norm(np.asarray(source_affine)[:3, :3], axis=0).round(6).tolist(),
        "resampled_shape": resampled,
        "crop_start": cropped[0::2],
        "crop_end": [size - after for size, after in zip(resampled, cropped[1::2], strict=True)],
        "pad_before": [p[0] for p in padded],
        "pad_after": [p[1] for p in padded],
        "shape": shape,
        "affine": np.asarray(out.affine, dtype=np.float64).tolist(),
    }
    kept = [e - s + b + a for s, e, b, a in zip(*(grid[k] for k in ("crop_start", "crop_end", "pad_before",
                                                                     "pad_after")), strict=True)]  # fmt: skip
    if kept != shape:
        raise DataError(f"preprocessing trace is inconsistent: crop and pad give {kept}, the volume is {shape}")
    return grid


def index_map(grid: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """For each original axis: the preprocessed axis it became, and (scale, shift) of the index map.

    Returns:
        ``axes`` [3] (preprocessed axis of original axis a) and ``coef`` [3, 2] so that original index i
        along axis a lies at preprocessed index ``coef[a, 0] * i + coef[a, 1]`` along ``axes[a]``.

    Raises:
        DataError: the record is malformed or the map is not axis-aligned (never for MONAI's pipeline).
    """
    try:
        preprocessed = np.asarray(grid["affine"], dtype=np.float64)
        source = np.asarray(grid["source_affine"], dtype=np.float64)
        to_preprocessed = np.linalg.solve(preprocessed, source)
    except (KeyError, TypeError, ValueError, np.linalg.LinAlgError) as exc:
        raise DataError(f"grid record is malformed ({type(exc).__name__}: {exc})") from None
    linear, shift = to_preprocessed[:3, :3], to_preprocessed[:3, 3]
    axes = np.argmax(np.abs(linear), axis=0)
    scale = linear[axes, np.arange(3)]
    off_axis = np.abs(linear).sum(axis=0) - np.abs(scale)
    if sorted(axes.tolist()) != [0, 1, 2] or np.any(off_axis > _ALIGNED_TOLERANCE * np.abs(scale)):
        raise DataError("grid record maps original voxels off the preprocessed axes; cannot map back")
    return axes, np.stack([scale, shift[axes]], axis=1)


def to_source_grid(stored: np.ndarray, grid: dict[str, Any]) -> np.ndarray:
    """A (Z, H, W) stored-layout label volume on the original image's grid (nearest neighbour, 0 outside).

    Raises:
        DataError: the volume's shape is not the recorded preprocessed shape.
    """
    volume = np.transpose(stored, (1, 2, 0))  # stored (Z, X, Y) -> preprocessed (X, Y, Z)
    if list(volume.shape) != list(grid["shape"]):
        raise DataError(f"prediction of shape {volume.shape} does not match the recorded grid {grid['shape']}")
    axes, coef = index_map(grid)
    moved = np.transpose(volume, axes)  # axis a of `moved` is the preprocessed axis of original axis a
    picks, inside = [], []
    for a, size in enumerate(grid["source_shape"]):
        index = np.floor(coef[a, 0] * np.arange(size) + coef[a, 1] + 0.5).astype(np.int64)
        ok = (index >= 0) & (index < moved.shape[a])
        picks.append(np.where(ok, index, 0))
        inside.append(ok)
    mapped = moved[np.ix_(*picks)]
    mask = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    return np.where(mask, mapped, 0).astype(stored.dtype, copy=False)


def slice_axis(grid: dict[str, Any]) -> int:
    """The original array axis that runs head to foot (FLARE's 'z': axis 2 in its axial volumes)."""
    codes = str(grid.get("source_axcodes", ""))
    for axis, code in enumerate(codes):
        if code in "SI":
            return axis
    raise DataError(f"grid record has no head-foot axis in orientation {codes!r}")
