"""Train/val(/test) splits of labelled cases: the thesis' fixed 15/35 split, split files, seeded splits.

The thesis used one FLARE22 split for both model selection and reporting (thesis protocol notes §1, §4);
a seeded split with a test part keeps the two apart.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ioussl.errors import DataError

_TRAIN_IDS = "0003 0006 0011 0012 0016 0019 0023 0027 0028 0031 0036 0039 0042 0045 0046"
_VAL_IDS = (
    "0001 0002 0004 0005 0007 0008 0009 0010 0013 0014 0015 0017 0018 0020 0021 0022 0024 0025 0026 0029 "
    "0030 0032 0033 0034 0035 0037 0038 0040 0041 0043 0044 0047 0048 0049 0050"
)
THESIS_SPLIT: dict[str, list[str]] = {
    "train": [f"FLARE22_Tr_{i}" for i in _TRAIN_IDS.split()],
    "val": [f"FLARE22_Tr_{i}" for i in _VAL_IDS.split()],
}
PARTS = ("train", "val", "test")


def validate_split(split: dict, where: str = "split") -> dict[str, list[str]]:
    """Check keys, types, duplicates and overlaps; return {part: [case, ...]} (drops keys starting with _)."""
    if not isinstance(split, dict):
        raise DataError(f"{where}: expected a JSON object with train/val(/test) lists")
    parts = {k: v for k, v in split.items() if not k.startswith("_")}
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise DataError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: train, val, test")
    for required in ("train", "val"):
        if required not in parts:
            raise DataError(f"{where}: missing the {required!r} list")
    seen: dict[str, str] = {}
    for part, cases in parts.items():
        if not isinstance(cases, list) or not all(isinstance(c, str) and c for c in cases):
            raise DataError(f"{where}: {part!r} must be a list of case ids (strings)")
        for case in cases:
            if case in seen:
                raise DataError(f"{where}: case {case!r} appears in both {seen[case]!r} and {part!r}")
            seen[case] = part
    return {part: list(parts[part]) for part in PARTS if part in parts}


def load_split(path: str | Path) -> dict[str, list[str]]:
    """Read and validate a split file (JSON: train, val, optional test; '_comment'-style keys ignored)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: split file not found") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable JSON split ({exc})") from None
    return validate_split(raw, where=str(path))


def read_case_list(path: str | Path) -> list[str]:
    """Case ids to split: a split JSON (all its parts pooled) or a text file with one id per line ('#' comments).

    Raises:
        DataError: the file is missing or unreadable, lists no case, lists one twice, or an id has spaces.
    """
    path = Path(path)
    if path.suffix == ".json":
        return sorted(case for cases in load_split(path).values() for case in cases)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the case list ({exc.strerror or exc})") from None
    cases = [line.split("#", 1)[0].strip() for line in lines]
    cases = [case for case in cases if case]
    if not cases:
        raise DataError(f"{path}: lists no case (one case id per line)")
    bad = next((case for case in cases if len(case.split()) != 1), None)
    if bad is not None:
        raise DataError(f"{path}: {bad!r} is not a case id (one id per line, no spaces)")
    twice = sorted({case for case in cases if cases.count(case) > 1})
    if twice:
        raise DataError(f"{path}: case {twice[0]!r} is listed more than once")
    return sorted(cases)


def check_split_cases(split: dict[str, list[str]], available: Iterable[str], where: str = "split") -> None:
    """Raise DataError naming the cases of the split that the store does not hold."""
    missing = sorted(set().union(*split.values()) - set(available))
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(f"{where}: {len(missing)} case(s) not in the store: {', '.join(missing[:5])}{more}")


def make_split(
    cases: Sequence[str], n_train: int, n_val: int, n_test: int = 0, seed: int = 0
) -> dict[str, list[str]]:
    """A seeded random split of ``cases`` (order-independent: the cases are sorted first).

    Each part is returned sorted; ``test`` is present only when n_test > 0.
    """
    unique = sorted(set(cases))
    if min(n_train, n_val, n_test) < 0 or n_train + n_val + n_test > len(unique):
        raise DataError(
            f"cannot split {len(unique)} cases into train {n_train} + val {n_val} + test {n_test}"
        )
    order = np.random.default_rng(seed).permutation(len(unique))
    picked = [unique[i] for i in order]
    split = {
        "train": sorted(picked[:n_train]),
        "val": sorted(picked[n_train : n_train + n_val]),
    }
    if n_test:
        split["test"] = sorted(picked[n_train + n_val : n_train + n_val + n_test])
    return split


def keep_train_split(split: dict[str, list[str]], n_train: int, n_val: int, n_test: int,
                     seed: int = 0) -> dict[str, list[str]]:
    """``split``'s training cases unchanged, its validation cases split (seeded) into ``n_val`` selection and
    ``n_test`` test cases: a held-out test part without changing what the models train on (issue 21.6)."""
    if "val" not in split or "train" not in split:
        raise DataError("--keep-train needs a split with a train and a val part")
    if n_train != len(split["train"]):
        raise DataError(f"--keep-train keeps the split's {len(split['train'])} training cases; --train {n_train} "
                        "asks for another number")
    rest = make_split(split["val"], 0, n_val, n_test, seed)
    return {"train": sorted(split["train"]), "val": rest["val"], **({"test": rest["test"]} if n_test else {})}


def split_to_json(split: dict[str, list[str]], comment: str | None = None) -> str:
    body = ({"_comment": comment} if comment else {}) | split
    return json.dumps(body, indent=2) + "\n"
