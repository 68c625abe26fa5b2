"""Is a volume plausible CT in Hounsfield units? Checked before preprocessing, so other modalities are refused.

The thesis' normalisation assumes HU: it clips to [-500, 500] and crops to voxels above -500 HU. An MR
volume (intensities >= 0) passes straight through it with every voxel "above -500 HU": the foreground crop
does nothing and the intensities land in [0.45, 1]. Four facts about CT catch that (docs/data.md gives the
measurements behind each threshold):

1. air is present: a share of the voxels lies below -500 HU (air around the body, lungs, bowel gas);
2. air sits near -1000 HU: the darkest voxels are at or below -900 HU (-1000, or scanner padding below it);
3. the body is soft tissue: the median of the voxels above -500 HU lies in [-200, 300] HU (fat about -100,
   water 0, muscle and organs 30-70, contrast-enhanced organs up to about 200);
4. the bright tail is bone at most: the 99th percentile is at most 3000 HU (bone reaches about +3000 and
   fills far less than 1% of an abdominal scan).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ioussl.errors import DataError

SAMPLE_VOXELS = 2_000_000  # statistics on an evenly strided subsample: shares within about 0.1%


@dataclass(frozen=True)
class CtThresholds:
    """The plausibility thresholds (see the module docstring and docs/data.md)."""

    air_hu: float = -500.0
    min_air_share: float = 0.01
    darkest_percentile: float = 0.1
    max_darkest_hu: float = -900.0
    soft_tissue_hu: tuple[float, float] = (-200.0, 300.0)
    bright_percentile: float = 99.0
    max_bright_hu: float = 3000.0


CT = CtThresholds()


def ct_statistics(image: np.ndarray, limits: CtThresholds = CT) -> dict[str, float]:
    """The four numbers the check looks at, from an evenly strided subsample of the voxels.

    Returns:
        ``air_share`` (voxels below ``air_hu``), ``darkest_hu``, ``body_median_hu`` (median of the voxels
        above ``air_hu``; NaN when there are none) and ``bright_hu``, as plain floats.
    """
    flat = np.asarray(image).reshape(-1)
    sample = flat[:: max(1, flat.size // SAMPLE_VOXELS)].astype(np.float32, copy=False)
    if sample.size == 0 or not np.isfinite(sample).all():
        nan = float("nan")
        return {"air_share": nan, "darkest_hu": nan, "body_median_hu": nan, "bright_hu": nan}
    body = sample[sample > limits.air_hu]
    darkest, bright = np.percentile(sample, [limits.darkest_percentile, limits.bright_percentile])
    return {
        "air_share": round(float(np.mean(sample < limits.air_hu)), 6),
        "darkest_hu": float(darkest),
        "body_median_hu": float(np.median(body)) if body.size else float("nan"),
        "bright_hu": float(bright),
    }


def implausible_reason(stats: dict[str, float], limits: CtThresholds = CT) -> str | None:
    """Why these statistics are not those of a CT in HU (the first failed fact), or None when they are."""
    if not np.isfinite(stats["air_share"]):
        return "it holds NaN or infinite values"
    if stats["air_share"] < limits.min_air_share:
        return (
            f"{stats['air_share']:.1%} of voxels lie below {limits.air_hu:g} HU; a CT has at least "
            f"{limits.min_air_share:.0%} there (air around the body, lungs, bowel gas)"
        )
    if stats["darkest_hu"] > limits.max_darkest_hu:
        return (
            f"its darkest voxels ({limits.darkest_percentile:g}th percentile) are at {stats['darkest_hu']:g}, "
            f"where a CT has air at about -1000 HU (at most {limits.max_darkest_hu:g})"
        )
    low, high = limits.soft_tissue_hu
    if not low <= stats["body_median_hu"] <= high:
        return (
            f"the median above {limits.air_hu:g} HU is {stats['body_median_hu']:g}, where a CT has soft "
            f"tissue ({low:g} to {high:g} HU)"
        )
    if stats["bright_hu"] > limits.max_bright_hu:
        return (
            f"its {limits.bright_percentile:g}th percentile is {stats['bright_hu']:g}, above the "
            f"{limits.max_bright_hu:g} HU that even bone stays under"
        )
    return None


def check_ct(image: np.ndarray, path: str | Path, limits: CtThresholds = CT) -> dict[str, float]:
    """Refuse a volume that is not plausible CT in HU; return its statistics (recorded in the store).

    Raises:
        DataError: one line naming the file, the failed fact and the override.
    """
    stats = ct_statistics(image, limits)
    reason = implausible_reason(stats, limits)
    if reason is not None:
        raise DataError(
            f"{path}: not a CT in Hounsfield units: {reason}; pass --allow-non-ct to preprocess it anyway"
        )
    return stats
