"""A small synthetic abdomen-like CT dataset in FLARE's layout, for the demo and for tests without FLARE.

Each case is a body ellipse (fat rim, muscle wall, visceral fat) with a spine, the psoas muscles and the 13
FLARE organs as jittered ellipsoids and tubes in roughly anatomical places, plus noise. Tissues follow the
thesis' Table 2.1 (air -1000, fat -100, muscle 50, bone > 250); the organs' HU are not a real scan's but
spread over the whole window, one value per organ (see ``ORGANS``), so that the demo's tiny network learns
them in minutes. Volumes are written as real NIfTI files with varied voxel spacing and a random axis orientation in
the header, so preprocessing has to reorient and resample them like real scans.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ioussl.errors import DataError

# organ: (label, HU, centre (x, y, z) in [-1, 1]^2 x [0, 1], radii; z radius None = a tube along z).
# RAS: +x is the patient's right, +y anterior, +z superior. Not the HU of a real scan: every organ, left and
# right included, has its own value, 60 HU or more from any other organ's and 45 or more from fat (-100 /
# -80) and muscle (50), spread over the whole [-500, 500] window the network sees (about 0.06 of it per step,
# against noise of 12 HU), so that the demo's tiny network tells them apart within a few hundred CPU steps.
# Sizes are those of an adult abdomen relative to the body, the smallest organs (adrenals, oesophagus,
# gallbladder) enlarged.
ORGANS: dict[str, tuple[int, float, tuple[float, float, float], tuple[float, float, float | None]]] = {
    "liver": (1, 170.0, (0.42, 0.08, 0.62), (0.36, 0.38, 0.34)),
    "right kidney": (2, 410.0, (0.42, -0.42, 0.38), (0.14, 0.17, 0.2)),
    "spleen": (3, 290.0, (-0.52, -0.18, 0.62), (0.17, 0.22, 0.2)),
    "pancreas": (4, -280.0, (-0.08, -0.08, 0.46), (0.3, 0.09, 0.1)),
    "aorta": (5, 470.0, (-0.06, -0.33, 0.5), (0.085, 0.085, None)),
    "inferior vena cava": (6, 350.0, (0.13, -0.29, 0.5), (0.085, 0.075, None)),
    "right adrenal gland": (7, -400.0, (0.27, -0.4, 0.66), (0.08, 0.07, 0.1)),
    "left adrenal gland": (8, -340.0, (-0.27, -0.4, 0.66), (0.08, 0.07, 0.1)),
    "gallbladder": (9, -220.0, (0.34, 0.32, 0.46), (0.11, 0.1, 0.11)),
    "esophagus": (10, -460.0, (-0.06, -0.2, 0.9), (0.075, 0.075, 0.12)),
    "stomach": (11, 230.0, (-0.32, 0.22, 0.66), (0.22, 0.2, 0.2)),
    "duodenum": (12, -160.0, (0.14, 0.03, 0.36), (0.14, 0.09, 0.1)),
    "left kidney": (13, 110.0, (-0.42, -0.42, 0.4), (0.14, 0.17, 0.2)),
}
AIR_HU, FAT_HU, MUSCLE_HU, BONE_HU = -1000.0, -100.0, 50.0, 500.0
VISCERAL_FAT_HU = -80.0  # the fat between the organs (mesentery), a little denser than subcutaneous fat
NOISE_HU = 12.0


@dataclass(frozen=True)
class SynthReport:
    labelled: list[str]
    unlabelled: list[str]


def synth_volume(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One RAS-ordered (x, y, z) volume: HU image (int16) and labels 0..13 (uint8).

    A body ellipse (subcutaneous fat, a muscle wall, visceral fat inside), the spine with the psoas muscles
    beside it, and the 13 organs with jittered centres, sizes and HU, plus noise.
    """
    x, y, z = np.meshgrid(
        np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), np.linspace(0, 1, shape[2]), indexing="ij"
    )
    image = np.full(shape, AIR_HU, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2
    image[body <= 1.0] = FAT_HU
    image[body <= 0.85] = MUSCLE_HU
    image[body <= 0.7] = VISCERAL_FAT_HU
    for side in (-1, 1):  # psoas muscles either side of the spine
        image[((x - side * 0.2) / 0.1) ** 2 + ((y + 0.55) / 0.1) ** 2 <= 1.0] = MUSCLE_HU
    image[(x / 0.12) ** 2 + ((y + 0.55) / 0.12) ** 2 <= 1.0] = BONE_HU  # spine
    for code, hu, centre, radii in ORGANS.values():
        jitter = rng.uniform(0.9, 1.1, size=3)
        cx, cy, cz = (c + rng.uniform(-0.04, 0.04) for c in centre)
        dist = ((x - cx) / (radii[0] * jitter[0])) ** 2 + ((y - cy) / (radii[1] * jitter[1])) ** 2
        if radii[2] is not None:
            dist = dist + ((z - cz) / (radii[2] * jitter[2])) ** 2
        inside = dist <= 1.0
        image[inside] = hu + rng.normal(0.0, 8.0)
        label[inside] = code
    image += rng.normal(0.0, NOISE_HU, size=shape).astype(np.float32)
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16), label


def _random_orientation(rng: np.random.Generator) -> np.ndarray:
    """A nibabel orientation array: a random axis permutation with random flips."""
    order = rng.permutation(3)
    flips = rng.choice([-1, 1], size=3)
    return np.stack([order, flips], axis=1).astype(float)


def _save_case(path: Path, volume: np.ndarray, spacing: np.ndarray, ornt: np.ndarray) -> None:
    import nibabel as nib
    from nibabel.orientations import apply_orientation, inv_ornt_aff

    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -0.5 * spacing * (np.array(volume.shape) - 1)  # centred at the origin, in mm
    data = apply_orientation(volume, ornt)
    new_affine = affine @ inv_ornt_aff(ornt, volume.shape)
    image = nib.Nifti1Image(data, new_affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(new_affine, code=1)
    image.set_sform(new_affine, code=1)
    nib.save(image, str(path))


def synth_dataset(
    out_dir: str | Path,
    cases: int,
    unlabelled: int = 0,
    seed: int = 0,
    size: int = 128,
    slices: int = 24,
    spacing_mm: float = 2.0,
) -> SynthReport:
    """Write ``cases`` labelled and ``unlabelled`` unlabelled synthetic CTs in FLARE's layout.

    Args:
        out_dir: created if missing; images/, labels/ and unlabelled/ go inside.
        cases, unlabelled: how many of each (case ids SYN_Tr_0001..., SYN_Un_0001...).
        seed: same seed, same files.
        size, slices: nominal in-plane size and slice count (each case varies by up to about 15%).
        spacing_mm: nominal in-plane voxel spacing (each case and axis within 15% of it); slices are 2.5-5 mm
            apart. The body is ``size`` voxels wide, so this sets its size in mm, hence in voxels after
            preprocessing resamples to 1 mm: 2 mm gives an adult-sized 26-30 cm body, 1 mm a small one.
    """
    if cases < 0 or unlabelled < 0 or cases + unlabelled == 0:
        raise DataError(f"synth needs at least one case (got --cases {cases}, --unlabelled {unlabelled})")
    if size < 32 or slices < 4:
        raise DataError(f"synthetic volumes need size >= 32 and slices >= 4 (got {size}, {slices})")
    if not 0.25 <= spacing_mm <= 8.0:
        raise DataError(f"synthetic in-plane spacing must be within 0.25-8 mm (got {spacing_mm})")
    root = Path(out_dir)
    rng = np.random.default_rng(seed)
    names: dict[str, list[str]] = {"labelled": [], "unlabelled": []}
    for kind, count, prefix in (("labelled", cases, "SYN_Tr"), ("unlabelled", unlabelled, "SYN_Un")):
        for i in range(1, count + 1):
            case = f"{prefix}_{i:04d}"
            shape = (
                int(size * rng.uniform(0.85, 1.0)),
                int(size * rng.uniform(0.75, 0.9)),
                int(slices * rng.uniform(0.85, 1.15)),
            )
            in_plane = rng.uniform(0.85 * spacing_mm, 1.15 * spacing_mm, size=2)
            spacing = np.array([*in_plane, rng.uniform(2.5, 5.0)])
            image, label = synth_volume(rng, shape)
            ornt = _random_orientation(rng)
            folder = root / ("images" if kind == "labelled" else "unlabelled")
            folder.mkdir(parents=True, exist_ok=True)
            _save_case(folder / f"{case}_0000.nii.gz", image, spacing, ornt)
            if kind == "labelled":
                (root / "labels").mkdir(parents=True, exist_ok=True)
                _save_case(root / "labels" / f"{case}.nii.gz", label, spacing, ornt)
            names[kind].append(case)
    return SynthReport(names["labelled"], names["unlabelled"])
