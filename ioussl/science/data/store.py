"""The preprocessed slice store: one memory-mapped array per volume plus a per-slice index.

Layout of a store directory (format version 2)::

    store.json             format, dtype, quantisation, spacing, HU window, per-case entries
    index.npz              per slice: case (int32 position in store.json cases), z, h, w, organs (uint16 bits)
    cases/<case>.image.npy uint16 (Z, H, W); value v in [0, 1] stored as round(v * 65535)
    cases/<case>.label.npy uint8 (Z, H, W), 0..13 (labelled cases only)
    cases/<case>.source_label.nii.gz   the original label file, copied byte for byte (labelled cases only)
    cases/<case>.meta.json written last, atomically: the case is done (resume skips it)

Format 2 adds, per case, ``grid`` (what preprocessing did: ``grid.describe_grid``), ``ct`` (the CT
plausibility statistics) and the copy of the original label, which FLARE 2022's evaluation on the original
image grid needs. Format 1 stores still train and score the thesis' DSC; FLARE's scores refuse them.

H is the RAS X axis and W the Y axis, as the reference code's PNGs (thesis protocol notes §1). Z is first so
a slice is one contiguous block: random access reads one page run, never a per-slice file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from ioussl.errors import DataError

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # format 1 lacks the grid records: training works, FLARE evaluation refuses it
IMAGE_DTYPE = "uint16"
IMAGE_SCALE = 65535  # stored = round(v * 65535): 16-bit, rounded (the thesis' PNGs truncate to 8 bits)
LABEL_DTYPE = "uint8"
N_CLASSES = 14  # background + 13 FLARE organs


class SliceStore:
    """Read-only random access to the slices of a preprocessed store directory.

    Args:
        root: the store directory (made by ``ioussl data preprocess``).

    Raises:
        DataError: the directory, its store.json or its index is missing or invalid.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        manifest = self.root / "store.json"
        if not manifest.is_file():
            raise DataError(f"{self.root}: not a slice store (no store.json); run `ioussl data preprocess`")
        try:
            self.meta = json.loads(manifest.read_text())
            with np.load(self.root / "index.npz") as index:
                self._case_of = index["case"].astype(np.int64)
                self._z = index["z"].astype(np.int64)
                self._hw = np.stack([index["h"], index["w"]], axis=1).astype(np.int64)
                self._organs = index["organs"].astype(np.int64)
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise DataError(f"{self.root}: unreadable store ({exc})") from None
        if self.meta.get("format_version") not in READABLE_VERSIONS:
            raise DataError(
                f"{manifest}: format version {self.meta.get('format_version')!r}, expected one of "
                f"{', '.join(map(str, READABLE_VERSIONS))}"
            )
        self.cases: list[str] = [entry["case"] for entry in self.meta["cases"]]
        self._entries = {entry["case"]: entry for entry in self.meta["cases"]}
        self._case_pos = {case: i for i, case in enumerate(self.cases)}
        self._first = np.searchsorted(self._case_of, np.arange(len(self.cases) + 1))
        self.fingerprint: str = hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]
        self._images: dict[int, np.ndarray] = {}
        self._labels: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self._z.size)

    def __getstate__(self) -> dict:
        # Memory maps are reopened lazily in each DataLoader worker instead of being pickled.
        state = self.__dict__.copy()
        state["_images"], state["_labels"] = {}, {}
        return state

    def labelled_cases(self) -> list[str]:
        return [c for c in self.cases if self._entries[c]["labelled"]]

    def unlabelled_cases(self) -> list[str]:
        return [c for c in self.cases if not self._entries[c]["labelled"]]

    def is_labelled(self, case: str) -> bool:
        return bool(self._entry(case)["labelled"])

    def slice_ids(self, cases: Sequence[str] | None = None) -> np.ndarray:
        """Global slice indices (int64) of the given cases (all cases when None), in store order."""
        if cases is None:
            return np.arange(len(self), dtype=np.int64)
        parts = [np.arange(self._first[p], self._first[p + 1]) for p in (self._position(c) for c in cases)]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)

    def slice_case(self, idx: int) -> tuple[str, int]:
        return self.cases[int(self._case_of[idx])], int(self._z[idx])

    def shape(self, idx: int) -> tuple[int, int]:
        h, w = self._hw[idx]
        return int(h), int(w)

    def shapes(self, ids: np.ndarray) -> np.ndarray:
        """[n, 2] slice shapes for many slice ids at once (vectorised sampling needs them)."""
        return self._hw[np.asarray(ids, dtype=np.int64)]

    def min_shape(self, cases: Sequence[str] | None = None) -> tuple[int, int]:
        ids = self.slice_ids(cases)
        if ids.size == 0:
            raise DataError(f"{self.root}: no slices for the requested cases")
        h, w = self._hw[ids].min(axis=0)
        return int(h), int(w)

    def organs(self, idx: int) -> frozenset[int]:
        mask = int(self._organs[idx])
        return frozenset(k for k in range(1, N_CLASSES) if mask >> k & 1)

    def organ_masks(self, ids: np.ndarray) -> np.ndarray:
        """Organ bitmasks (bit k = organ k present) for many slices, from the index."""
        return self._organs[np.asarray(ids, dtype=np.int64)]

    def image(self, idx: int) -> np.ndarray:
        """The whole slice as float32 (H, W) in [0, 1]."""
        pos, z = int(self._case_of[idx]), int(self._z[idx])
        return _dequantise(self._image_array(pos)[z])

    def image_region(self, idx: int, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
        """A crop of a slice as float32, read straight from the memory map (only the rows needed)."""
        return _dequantise(self.stored_region(idx, start, size))

    def stored_region(self, idx: int, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
        """A crop of a slice as stored (uint16, a view of the memory map): ``dequantise`` gives the values."""
        pos, z = int(self._case_of[idx]), int(self._z[idx])
        (y, x), (h, w) = start, size
        if y < 0 or x < 0 or y + h > self._hw[idx, 0] or x + w > self._hw[idx, 1]:  # NumPy would clip silently
            raise DataError(f"{self.root}: crop at {(y, x)} of size {(h, w)} leaves slice {idx} {self.shape(idx)}")
        return self._image_array(pos)[z, y : y + h, x : x + w]

    def label(self, idx: int) -> np.ndarray:
        """The slice's labels as uint8 (H, W); DataError for a slice of an unlabelled case."""
        pos, z = int(self._case_of[idx]), int(self._z[idx])
        return np.asarray(self._label_array(pos)[z])

    def source_grid(self, case: str) -> dict:
        """What preprocessing did to a case (``grid.describe_grid``), to map predictions back.

        Raises:
            DataError: the store predates the record (format 1) or the case has none.
        """
        grid = self._entry(case).get("grid")
        if not isinstance(grid, dict):
            raise DataError(
                f"{self.root}: case {case} has no original-grid record (store format "
                f"{self.meta.get('format_version')}); FLARE's evaluation needs one: re-run "
                f"`ioussl data preprocess` into a new folder"
            )
        return grid

    def source_label(self, case: str) -> tuple[np.ndarray, tuple[float, ...]]:
        """The original label volume as uint8 (array order as stored in the file) and its header spacing.

        Raises:
            DataError: no copy (unlabelled case, or a format 1 store), or the copy fails its checksum.
        """
        entry = self._entry(case)
        name = entry.get("source_label_copy")
        if not entry["labelled"] or not isinstance(name, str):
            raise DataError(
                f"{self.root}: case {case} has no copy of its original label; FLARE's evaluation needs one "
                f"(labelled cases of stores made by `ioussl data preprocess`, format 2)"
            )
        return _read_label_copy(self.root / "cases" / name, entry.get("source_label_sha256"))

    def volume(self, case: str) -> tuple[np.ndarray, np.ndarray | None]:
        """A whole case: image (Z, H, W) float32 and label (Z, H, W) uint8 or None if unlabelled."""
        pos = self._position(case)
        image = _dequantise(self._image_array(pos))
        label = np.asarray(self._label_array(pos)) if self._entries[case]["labelled"] else None
        return image, label

    def volume_shape(self, case: str) -> tuple[int, int, int]:
        """(Z, H, W) of a case's volume, from the index (no array is opened)."""
        pos = self._position(case)
        first, end = int(self._first[pos]), int(self._first[pos + 1])
        if end <= first:
            raise DataError(f"{self.root}: case {case} has no slices in the index")
        h, w = self._hw[first]
        return end - first, int(h), int(w)

    def volume_shapes(self, cases: Sequence[str]) -> np.ndarray:
        """[n, 3] (Z, H, W) volume shapes of many cases (the 3D sampler's image shapes)."""
        return np.asarray([self.volume_shape(c) for c in cases], dtype=np.int64).reshape(-1, 3)

    def stored_subvolume(self, case: str, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
        """A sub-volume (Z, H, W) as stored (uint16, a view of the memory map: only its pages are read)."""
        pos = self._position(case)
        return self._image_array(pos)[self._region(case, start, size)]

    def subvolume(self, case: str, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
        """A sub-volume as float32 in [0, 1], read straight from the memory map."""
        return _dequantise(self.stored_subvolume(case, start, size))

    def label_subvolume(self, case: str, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
        """A sub-volume of a case's labels as uint8; DataError for an unlabelled case."""
        pos = self._position(case)
        return np.asarray(self._label_array(pos)[self._region(case, start, size)])

    def label_volume(self, case: str) -> np.ndarray:
        """A case's whole label volume (Z, H, W) uint8, as a read-only memory map."""
        return self._label_array(self._position(case))

    def _region(self, case: str, start: Sequence[int], size: Sequence[int]) -> tuple[slice, ...]:
        """The slices of a box inside a case's volume; DataError when it leaves the volume (NumPy would
        silently return a smaller array)."""
        shape = self.volume_shape(case)
        start_t, size_t = tuple(int(s) for s in start), tuple(int(s) for s in size)
        if len(start_t) != 3 or len(size_t) != 3:
            raise DataError(f"{self.root}: a sub-volume needs 3 start and 3 size values, got {start_t}, {size_t}")
        if any(b < 0 or n < 1 or b + n > s for b, n, s in zip(start_t, size_t, shape, strict=True)):
            raise DataError(
                f"{self.root}: sub-volume at {start_t} of size {size_t} leaves case {case}'s volume {shape}"
            )
        return tuple(slice(b, b + n) for b, n in zip(start_t, size_t, strict=True))

    def _entry(self, case: str) -> dict:
        if case not in self._entries:
            raise DataError(f"{self.root}: unknown case {case!r}")
        return self._entries[case]

    def _position(self, case: str) -> int:
        self._entry(case)
        return self._case_pos[case]

    def _image_array(self, pos: int) -> np.ndarray:
        if pos not in self._images:
            self._images[pos] = self._open(self.cases[pos], "image")
        return self._images[pos]

    def _label_array(self, pos: int) -> np.ndarray:
        case = self.cases[pos]
        if not self._entries[case]["labelled"]:
            raise DataError(f"{self.root}: case {case} is unlabelled; it has no label slices")
        if pos not in self._labels:
            self._labels[pos] = self._open(case, "label")
        return self._labels[pos]

    def _open(self, case: str, kind: str) -> np.ndarray:
        path = case_array_path(self.root, case, kind)
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot open ({exc})") from None
        # Slices and sub-volumes are read from this map: it must be the volume the index describes.
        expected, dtype = self.volume_shape(case), IMAGE_DTYPE if kind == "image" else LABEL_DTYPE
        if array.shape != expected or array.dtype != np.dtype(dtype):
            raise DataError(
                f"{path}: holds {array.dtype} {array.shape}, the store's index says {dtype} {expected} "
                f"(changed or damaged store; preprocess again)"
            )
        return array


def case_array_path(root: Path, case: str, kind: str) -> Path:
    return Path(root) / "cases" / f"{case}.{kind}.npy"


def case_meta_path(root: Path, case: str) -> Path:
    return Path(root) / "cases" / f"{case}.meta.json"


def source_label_path(root: Path, case: str, original_name: str) -> Path:
    """Where the copy of a case's original label file goes (keeping its .nii or .nii.gz suffix)."""
    suffix = ".nii.gz" if original_name.endswith(".nii.gz") else ".nii"
    return Path(root) / "cases" / f"{case}.source_label{suffix}"


def _read_label_copy(path: Path, sha256: object) -> tuple[np.ndarray, tuple[float, ...]]:
    import nibabel as nib

    from ioussl.runfiles import sha256_file

    try:
        digest = sha256_file(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the original label copy ({exc})") from None
    if digest != sha256:
        raise DataError(f"{path}: checksum differs from store.json (changed or corrupt copy)")
    try:
        img: Any = nib.load(str(path))
        label = np.asarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise DataError(f"{path}: cannot read the original label copy ({type(exc).__name__}: {exc})") from None
    if label.ndim != 3:
        raise DataError(f"{path}: expected a 3D label volume, got shape {label.shape}")
    spacing = tuple(float(v) for v in img.header.get_zooms()[:3])
    return np.rint(label).astype(np.uint8), spacing


def quantise(image: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint16, rounded (1 step = 1000 HU / 65535, about 0.015 HU)."""
    return np.rint(np.clip(image, 0.0, 1.0) * IMAGE_SCALE).astype(np.uint16)


def _dequantise(stored: np.ndarray) -> np.ndarray:
    return np.multiply(stored, np.float32(1.0 / IMAGE_SCALE), dtype=np.float32)


def dequantise_tensor(stored: Any, device: Any = None) -> Any:
    """``_dequantise`` for a torch tensor of stored values, moved to ``device`` first (default: where it is);
    the same float32 product, so the same bits as the loader's NumPy conversion.

    A uint16 tensor crosses to a GPU as int16 (the same bits; pinned memory stays pinned) and is widened
    there with int16/int32 kernels: GPUs have few uint16 ones.
    """
    import torch

    device = stored.device if device is None else torch.device(device)
    if stored.dtype == torch.uint16 and device.type != "cpu":
        stored = widen_uint16(stored.view(torch.int16).to(device, non_blocking=True))
    else:
        stored = stored.to(device, non_blocking=True)
    return stored.float() * float(np.float32(1.0 / IMAGE_SCALE))


def widen_uint16(bits: Any) -> Any:
    """int16 (or uint16) tensor holding stored uint16 bits -> int32 values, with int16/int32 kernels only."""
    import torch

    return bits.view(torch.int16).to(torch.int32) & 0xFFFF


def organ_bitmasks(label: np.ndarray) -> np.ndarray:
    """Per-slice bitmask of the organs (1..13) present in a (Z, H, W) label volume."""
    masks = np.zeros(label.shape[0], dtype=np.uint16)
    flat = label.reshape(label.shape[0], -1)
    for organ in range(1, N_CLASSES):
        present = (flat == organ).any(axis=1)
        masks |= present.astype(np.uint16) << np.uint16(organ)
    return masks


def write_index(root: Path, settings: dict, case_metas: list[dict]) -> None:
    """Write store.json and index.npz from the finished cases' metadata (atomically, index first)."""
    from ioussl.runfiles import atomic_write_text

    case_metas = sorted(case_metas, key=lambda m: m["case"])
    columns: dict[str, list[np.ndarray]] = {k: [] for k in ("case", "z", "h", "w", "organs")}
    for pos, meta in enumerate(case_metas):
        z_count, h, w = meta["shape"]
        columns["case"].append(np.full(z_count, pos, dtype=np.int32))
        columns["z"].append(np.arange(z_count, dtype=np.int32))
        columns["h"].append(np.full(z_count, h, dtype=np.int32))
        columns["w"].append(np.full(z_count, w, dtype=np.int32))
        columns["organs"].append(np.asarray(meta["organs"], dtype=np.uint16))
    arrays = {k: (np.concatenate(v) if v else np.zeros(0, dtype=np.int32)) for k, v in columns.items()}
    tmp = root / "index.tmp.npz"
    np.savez(tmp, **cast(dict[str, Any], arrays))
    tmp.replace(root / "index.npz")
    entries = [{k: v for k, v in meta.items() if k != "organs"} for meta in case_metas]
    manifest = {
        "format_version": FORMAT_VERSION,
        "image_dtype": IMAGE_DTYPE,
        "image_scale": IMAGE_SCALE,
        "label_dtype": LABEL_DTYPE,
        "axes": ["z", "h=x(R)", "w=y(A)"],
        **settings,
        "index_sha256": hashlib.sha256((root / "index.npz").read_bytes()).hexdigest(),
        "cases": entries,
    }
    atomic_write_text(root / "store.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")
