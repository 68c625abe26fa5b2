"""A run's segmentation of a whole case, written for people: NIfTI on the original grid, PNG overlays.

The prediction is made on the store's preprocessed grid and mapped back to the case's original voxel grid
with ``grid.to_source_grid`` (as FLARE's evaluation does), then saved with the original image's affine, so
ITK-SNAP or 3D Slicer lays it over the CT the case came from. Chosen slices are drawn on the stored grid:
CT, ground truth (labelled cases) and prediction side by side (:mod:`overlays`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ioussl.errors import DataError
from ioussl.runfiles import atomic_write_bytes
from ioussl.science.data.grid import to_source_grid
from ioussl.science.evaluate import overlays

SAFE_CASE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")  # a case id that may name a file


@dataclass(frozen=True)
class CasePrediction:
    """What was written for one case."""

    case: str
    nifti: Path  # labels 0..13 on the original grid, uint8
    pictures: tuple[Path, ...]  # one PNG per slice
    slices: tuple[int, ...]  # stored z of each picture
    voxels: dict[str, int]  # organ -> predicted voxels on the original grid (organs predicted at all)


def check_cases(store: Any, cases: Sequence[str]) -> list[str]:
    """The cases, each known to the store with an original-grid record, before any prediction is made.

    Raises:
        DataError: an unknown case, a store without grid records (format 1), or a case id unfit for a file name.
    """
    if not cases:
        raise DataError("name at least one case")
    for case in cases:
        store.source_grid(case)  # unknown case or format 1 store: a one-line error naming it
        if not SAFE_CASE.fullmatch(case):
            raise DataError(f"case id {case!r} cannot name an output file")
    return list(dict.fromkeys(cases))


def write_prediction(store: Any, case: str, predicted: np.ndarray, out_dir: Path, slices: Sequence[int] = (),
                     caption: str = "") -> CasePrediction:
    """Write ``<case>.nii.gz`` (original grid) and ``<case>_z<z>.png`` overlays of ``predicted`` (Z, H, W stored
    layout) into ``out_dir``; every file appears whole or not at all."""
    import nibabel as nib

    from ioussl.science.evaluate.metrics import FLARE_ORGANS

    grid = store.source_grid(case)
    labels = to_source_grid(predicted.astype(np.uint8, copy=False), grid)
    affine = np.asarray(grid["source_affine"], dtype=np.float64)
    image = nib.Nifti1Image(labels, affine)
    image.set_qform(affine, code=1)  # scanner coordinates, as the CT's own header
    image.set_sform(affine, code=1)
    image.header.set_intent("label")
    nifti = out_dir / f"{case}.nii.gz"
    _save_nifti(image, nifti)
    ct, truth = store.volume(case)
    chosen = overlays.check_slices(slices, ct.shape[0], case) if slices else \
        overlays.default_slices(truth if truth is not None else predicted)
    pictures = []
    for z in chosen:
        png = overlays.overlay_png(ct[z], None if truth is None else truth[z], predicted[z],
                                   f"{caption}{case}, slice {z} of {ct.shape[0]} (stored grid)")
        path = out_dir / f"{case}_z{z:03d}.png"
        atomic_write_bytes(path, png)
        pictures.append(path)
    counts = np.bincount(labels.ravel(), minlength=len(FLARE_ORGANS) + 1)
    voxels = {name: int(counts[label]) for label, name in FLARE_ORGANS.items() if counts[label]}
    return CasePrediction(case, nifti, tuple(pictures), tuple(chosen), voxels)


def _save_nifti(image: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part.nii.gz")  # the suffix tells nibabel to compress
    try:
        image.to_filename(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def predict_cases(store: Any, cases: Sequence[str], predict: Callable[[str], np.ndarray], out_dir: Path,
                  slices: Sequence[int] = (), caption: str = "") -> list[CasePrediction]:
    """``predict`` (case -> stored-layout labels) on each case, written by :func:`write_prediction`."""
    chosen = check_cases(store, cases)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [write_prediction(store, case, predict(case), out_dir, slices, caption) for case in chosen]
