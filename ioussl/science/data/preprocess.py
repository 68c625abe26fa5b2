"""FLARE-layout NIfTI volumes -> slice store, with the thesis' normalisation (thesis protocol notes §1).

Each image is first checked to be plausible CT in Hounsfield units (``ctcheck``; ``allow_non_ct`` skips
that). Per volume: orientation RAS, spacing (1, 1, 2.5) mm (bilinear image, nearest label), clip to [-500, 500] HU
and scale to [0, 1], crop to the foreground (voxels > 0 after scaling, i.e. HU > -500), pad X and Y
symmetrically with 0 to at least 96. The image is quantised to uint16 and written with its label as
(Z, X, Y) arrays; each written file is re-read and checked (shape, dtype, sha256) before the case is marked
done, so an interrupted run resumes by skipping finished cases. A bad volume fails alone: the others go on
and the failures are returned, each naming its file. Each labelled case also keeps a verified copy of its
original label file and the record of its grid (``grid.describe_grid``), so predictions can be scored on
the original image grid as FLARE 2022 does.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ioussl.errors import DataError
from ioussl.runfiles import atomic_write_text, sha256_file
from ioussl.science.data.ctcheck import check_ct, ct_statistics
from ioussl.science.data.grid import describe_grid
from ioussl.science.data.store import (
    N_CLASSES,
    case_array_path,
    case_meta_path,
    organ_bitmasks,
    quantise,
    source_label_path,
    write_index,
)

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class PreprocessSettings:
    """The thesis' defaults (Table 4.1 and thesis protocol notes §1)."""

    spacing: tuple[float, float, float] = (1.0, 1.0, 2.5)
    hu_min: float = -500.0
    hu_max: float = 500.0
    min_size: int = 96  # X and Y are padded to at least this (the crop side)
    # Z padded to at least this (0: not padded, the thesis' 2D store); 3D training needs the cube's side, as the
    # reference's 3D preprocessing pads to 96³. Recorded only when set, so existing stores keep their fingerprint.
    min_depth: int = 0
    allow_non_ct: bool = False  # skip the check that each image is plausible CT in HU (ctcheck.py)


@dataclass(frozen=True)
class CaseSource:
    case: str
    image: Path
    label: Path | None


@dataclass
class PreprocessReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (case, one-line reason naming the file)


def _strip_suffix(name: str) -> str | None:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _image_cases(folder: Path) -> dict[str, Path]:
    found = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        stem = _strip_suffix(path.name)
        if path.is_file() and stem and stem.endswith("_0000"):  # stray files are not data
            found[stem[: -len("_0000")]] = path
    return found


def discover_cases(input_dir: str | Path) -> tuple[list[CaseSource], list[tuple[str, str]]]:
    """FLARE layout: images/ (or the reference code's imgs/) *_0000.nii.gz, labels/<case>.nii.gz, unlabelled/.

    Returns:
        The cases found, and problems (case, reason) such as an image without its label.

    Raises:
        DataError: the folder is missing or holds no case at all.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise DataError(f"{root}: input folder does not exist")
    images = _image_cases(root / "images") or _image_cases(root / "imgs")
    labels = {}
    for path in sorted((root / "labels").iterdir()) if (root / "labels").is_dir() else []:
        stem = _strip_suffix(path.name)
        if path.is_file() and stem:
            labels[stem] = path
    unlabelled = _image_cases(root / "unlabelled")
    problems = [(c, f"{labels[c]}: label without an image") for c in sorted(set(labels) - set(images))]
    cases = []
    for case, image in images.items():
        if case not in labels:
            problems.append((case, f"{image}: no label {case}.nii.gz in {root / 'labels'}"))
            continue
        cases.append(CaseSource(case, image, labels[case]))
    for case, image in unlabelled.items():
        if case in images:
            problems.append((case, f"{image}: case id also used by a labelled image"))
            continue
        cases.append(CaseSource(case, image, None))
    if not cases and not problems:
        raise DataError(
            f"{root}: no cases found (expected images/<case>_0000.nii.gz with labels/<case>.nii.gz, "
            f"or unlabelled/<case>_0000.nii.gz)"
        )
    return cases, problems


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    try:
        img: Any = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for corrupt/truncated files
        raise DataError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc})") from None
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {data.shape}")
    return data, np.asarray(img.affine, dtype=np.float64)


def _check_label(source: CaseSource, image: np.ndarray, affine: np.ndarray, label: np.ndarray, l_aff) -> None:
    if label.shape != image.shape:
        raise DataError(f"{source.label}: label shape {label.shape} differs from image shape {image.shape}")
    if not np.allclose(affine, l_aff, atol=1e-3):
        raise DataError(f"{source.label}: label affine differs from the image's ({source.image.name})")
    values = np.unique(label)
    bad = values[(values < 0) | (values >= N_CLASSES) | (values != np.round(values))]
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in bad[:5])
        raise DataError(f"{source.label}: label values {shown} outside 0..{N_CLASSES - 1}")


def normalise_volume(
    image: np.ndarray, affine: np.ndarray, label: np.ndarray | None, settings: PreprocessSettings
) -> tuple[np.ndarray, np.ndarray | None]:
    """The thesis' MONAI pipeline on one volume; returns (Z, X, Y) image in [0, 1] and label (uint8)."""
    image_out, label_out, _ = normalise_with_grid(image, affine, label, settings)
    return image_out, label_out


def normalise_with_grid(
    image: np.ndarray, affine: np.ndarray, label: np.ndarray | None, settings: PreprocessSettings
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """``normalise_volume`` plus the record of the grid it produced (``grid.describe_grid``)."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import (
        Compose,
        CropForegroundd,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
        SpatialPadd,
    )

    keys = ["image"] if label is None else ["image", "label"]
    modes = ["bilinear"] if label is None else ["bilinear", "nearest"]
    tensor_affine = torch.as_tensor(affine)
    data = {"image": MetaTensor(torch.from_numpy(image)[None], affine=tensor_affine)}
    if label is not None:
        data["label"] = MetaTensor(torch.from_numpy(label)[None], affine=tensor_affine)
    pipeline = Compose(
        [
            Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            Spacingd(keys, pixdim=settings.spacing, mode=modes),
            ScaleIntensityRanged("image", settings.hu_min, settings.hu_max, 0.0, 1.0, clip=True),
            CropForegroundd(keys, source_key="image", margin=0, allow_smaller=True),
            SpatialPadd(keys, spatial_size=(settings.min_size, settings.min_size, settings.min_depth or -1),
                        method="symmetric"),  # fmt: skip
        ]
    )
    with torch.no_grad():
        out = pipeline(data)
    grid = describe_grid(affine, image.shape, out["image"])
    image_out = out["image"][0].permute(2, 0, 1).numpy()  # (X, Y, Z) -> (Z, X, Y)
    label_out = None if label is None else np.rint(out["label"][0].permute(2, 0, 1).numpy()).astype(np.uint8)
    return image_out, label_out, grid


def _save_verified(path: Path, array: np.ndarray) -> tuple[str, int]:
    """Write an .npy atomically, re-read it, check shape/dtype/hash; return (sha256, bytes)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array))
        handle.flush()
        os.fsync(handle.fileno())
    digest = sha256_file(tmp)
    os.replace(tmp, path)
    back = np.load(path, mmap_mode="r")
    if back.shape != array.shape or back.dtype != array.dtype or sha256_file(path) != digest:
        raise DataError(f"{path}: verification failed after writing (shape, dtype or checksum)")
    return digest, path.stat().st_size


def _copy_verified(source: Path, dest: Path) -> tuple[str, int]:
    """Copy a file atomically (fsynced, renamed into place); return (sha256, bytes) of the copy."""
    tmp = dest.with_name(dest.name + ".tmp")
    with open(source, "rb") as reader, open(tmp, "wb") as writer:
        shutil.copyfileobj(reader, writer)
        writer.flush()
        os.fsync(writer.fileno())
    os.replace(tmp, dest)
    return sha256_file(dest), dest.stat().st_size


def _checked_ct(image: np.ndarray, source: CaseSource, settings: PreprocessSettings) -> dict:
    """The CT statistics (NaN as None, for JSON); refuses a non-CT image unless ``allow_non_ct``."""
    stats = ct_statistics(image) if settings.allow_non_ct else check_ct(image, source.image)
    return {k: (v if np.isfinite(v) else None) for k, v in stats.items()}


def preprocess_case(source: CaseSource, out_root: Path, settings: PreprocessSettings) -> dict:
    """Normalise one case, write its arrays and then its meta.json (the done marker); return the meta."""
    image, affine = _read_nifti(source.image)
    label = None
    if source.label is not None:
        label, label_affine = _read_nifti(source.label)
        _check_label(source, image, affine, label, label_affine)
    ct = _checked_ct(image, source, settings)
    if not (image > settings.hu_min).any():
        raise DataError(f"{source.image}: no voxel above {settings.hu_min} HU (empty foreground)")
    volume, labels, grid = normalise_with_grid(image, affine, label, settings)
    if volume.shape[0] == 0 or min(volume.shape[1:]) < settings.min_size:
        raise DataError(f"{source.image}: volume {volume.shape} is smaller than the crop {settings.min_size}")
    meta = {"case": source.case, "labelled": labels is not None, "shape": list(volume.shape), "ct": ct}
    meta["source_image"] = source.image.name
    meta["grid"] = grid
    meta["image_sha256"], meta["image_bytes"] = _save_verified(
        case_array_path(out_root, source.case, "image"), quantise(volume)
    )
    if labels is not None:
        assert source.label is not None  # the labels were read from it
        meta["source_label"] = source.label.name
        meta["label_sha256"], meta["label_bytes"] = _save_verified(
            case_array_path(out_root, source.case, "label"), labels
        )
        copy = source_label_path(out_root, source.case, source.label.name)
        meta["source_label_copy"] = copy.name
        meta["source_label_sha256"], meta["source_label_bytes"] = _copy_verified(source.label, copy)
    meta["organs"] = organ_bitmasks(labels).tolist() if labels is not None else [0] * volume.shape[0]
    atomic_write_text(case_meta_path(out_root, source.case), json.dumps(meta) + "\n")
    return meta


def _run_case(source: CaseSource, out_root: Path, settings: PreprocessSettings) -> tuple[str, dict | str]:
    """Pool entry point: never raises for a user-caused problem, returns its one-line reason instead."""
    try:
        return source.case, preprocess_case(source, out_root, settings)
    except DataError as exc:
        return source.case, str(exc)
    except Exception as exc:  # a bug or resource problem in one volume must not stop the others
        return source.case, f"{source.image}: unexpected {type(exc).__name__}: {exc}"


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one volume per process; parallelism comes from the pool


def finished_meta(out_root: Path, case: str) -> dict | None:
    """A case's meta if its arrays are on disk with the recorded sizes (resume skips it), else None."""
    path = case_meta_path(out_root, case)
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if "grid" not in meta:  # made by an older ioussl (store format 1): redo it to record its grid
        return None
    files = [(case_array_path(out_root, case, "image"), meta.get("image_bytes"))]
    if meta.get("labelled"):
        files.append((case_array_path(out_root, case, "label"), meta.get("label_bytes")))
        copy = out_root / "cases" / str(meta.get("source_label_copy"))
        files.append((copy, meta.get("source_label_bytes")))
    for path, size in files:
        if not path.is_file() or path.stat().st_size != size:
            return None
    return meta


def settings_record(settings: PreprocessSettings) -> dict:
    """The settings as the store records them: ``min_depth`` only when set (older stores lack it)."""
    record = asdict(settings)
    if not record["min_depth"]:
        del record["min_depth"]
    return record


def _check_settings(out_root: Path, settings: PreprocessSettings) -> None:
    path = out_root / "settings.json"
    wanted = json.loads(json.dumps(settings_record(settings)))
    if path.is_file():
        existing = {"allow_non_ct": False, **json.loads(path.read_text())}  # stores made before the CT check
        if existing != wanted:
            raise DataError(f"{path}: store was made with other settings {existing}; use a new output folder")
    else:
        atomic_write_text(path, json.dumps(wanted, sort_keys=True) + "\n")


def preprocess_dataset(
    input_dir: str | Path,
    out_dir: str | Path,
    settings: PreprocessSettings | None = None,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> PreprocessReport:
    """Preprocess every case of a FLARE-layout folder into a slice store (resumable, verified).

    Args:
        input_dir: folder with images/ (or imgs/), labels/ and/or unlabelled/.
        out_dir: the store directory (created; reused to resume).
        settings: normalisation settings; defaults are the thesis'.
        workers: processes (1 = in this process).
        progress: called with (finished, total) after each case.

    Returns:
        What was done, skipped (already finished) and failed (with a reason naming the file).
    """
    settings = settings or PreprocessSettings()
    sources, problems = discover_cases(input_dir)
    out_root = Path(out_dir)
    (out_root / "cases").mkdir(parents=True, exist_ok=True)
    _check_settings(out_root, settings)
    report = PreprocessReport(failed=list(problems))
    metas = {}
    todo = []
    for source in sources:
        meta = finished_meta(out_root, source.case)
        if meta is not None:
            metas[source.case] = meta
            report.skipped.append(source.case)
        else:
            todo.append(source)
    total, finished = len(sources), len(report.skipped)
    for case, outcome in _execute(todo, out_root, settings, workers):
        finished += 1
        if isinstance(outcome, dict):
            metas[case] = outcome
            report.done.append(case)
        else:
            report.failed.append((case, outcome))
        if progress:
            progress(finished, total)
    write_index(out_root, {"settings": settings_record(settings)}, list(metas.values()))
    return report


def _execute(todo: list[CaseSource], out_root: Path, settings: PreprocessSettings, workers: int):
    if workers <= 1 or len(todo) <= 1:
        for source in todo:
            yield _run_case(source, out_root, settings)
        return
    import multiprocessing

    # spawn: the parent may hold torch/OpenMP threads, which fork does not copy safely.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker) as pool:
        futures = [pool.submit(_run_case, source, out_root, settings) for source in todo]
        for future in as_completed(futures):
            yield future.result()
