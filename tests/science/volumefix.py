"""Tiny volume stores written directly (no NIfTI, no preprocessing): what the 3D tests read and train on."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ioussl.science.data.store import SliceStore, case_array_path, organ_bitmasks, quantise, write_index


def blob_volume(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A smooth body with two bright 'organs' (labels 1 and 2): something a network can learn to segment."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    image = 0.3 + 0.1 * rng.random(shape)
    label = np.zeros(shape, dtype=np.uint8)
    for organ, centre in ((1, (0.2, -0.3, -0.2)), (2, (-0.2, 0.3, 0.3))):
        jitter = 0.1 * rng.standard_normal(3)
        inside = sum((a - c - j) ** 2 for a, c, j in zip((z, y, x), centre, jitter, strict=True)) < 0.12
        image[inside] += 0.4 * organ / 2
        label[inside] = organ
    return np.clip(image, 0, 1), label


def write_volume_store(
    root: Path, shapes: dict[str, tuple[int, int, int]], labelled: set[str], seed: int = 0
) -> SliceStore:
    """A store of the given cases and (Z, H, W) shapes; the cases in ``labelled`` get labels."""
    rng = np.random.default_rng(seed)
    (root / "cases").mkdir(parents=True, exist_ok=True)
    metas = []
    for case, shape in shapes.items():
        image, label = blob_volume(rng, shape)
        np.save(case_array_path(root, case, "image"), quantise(image))
        if case in labelled:
            np.save(case_array_path(root, case, "label"), label)
        organs = organ_bitmasks(label) if case in labelled else np.zeros(shape[0], dtype=np.uint16)
        metas.append({"case": case, "shape": list(shape), "organs": organs.tolist(), "labelled": case in labelled})
    write_index(root, {"spacing": [1.0, 1.0, 2.5]}, metas)
    return SliceStore(root)
