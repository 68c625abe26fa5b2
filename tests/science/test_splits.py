"""Splits: the thesis' fixed FLARE22 split, split files, seeded splits with an optional test part."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ioussl.errors import DataError
from ioussl.science.data.splits import THESIS_SPLIT, check_split_cases, load_split, make_split

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_thesis_split_is_15_35_and_covers_0001_to_0050():
    assert len(THESIS_SPLIT["train"]) == 15 and len(THESIS_SPLIT["val"]) == 35
    everything = sorted(THESIS_SPLIT["train"] + THESIS_SPLIT["val"])
    assert everything == [f"FLARE22_Tr_{i:04d}" for i in range(1, 51)]
    assert THESIS_SPLIT["train"][:3] == ["FLARE22_Tr_0003", "FLARE22_Tr_0006", "FLARE22_Tr_0011"]


def test_shipped_thesis_split_file_matches():
    assert load_split(REPO_ROOT / "jobs" / "splits" / "flare22-thesis.json") == THESIS_SPLIT


def test_make_split_is_seeded_disjoint_and_order_independent():
    cases = [f"C{i:03d}" for i in range(40)]
    a = make_split(cases, 10, 20, 5, seed=3)
    assert a == make_split(list(reversed(cases)), 10, 20, 5, seed=3)
    assert a != make_split(cases, 10, 20, 5, seed=4)
    assert [len(a[p]) for p in ("train", "val", "test")] == [10, 20, 5]
    assert len(set(a["train"]) | set(a["val"]) | set(a["test"])) == 35
    assert "test" not in make_split(cases, 10, 20)
    with pytest.raises(DataError, match="cannot split 40 cases"):
        make_split(cases, 30, 20)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a readable JSON split"),
        ('{"train": ["a"]}', "missing the 'val' list"),
        ('{"train": ["a"], "val": ["a"]}', "case 'a' appears in both 'train' and 'val'"),
        ('{"train": ["a"], "val": [1]}', "'val' must be a list of case ids"),
        ('{"train": [], "val": [], "holdout": []}', "unknown key"),
    ],
)
def test_load_split_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "split.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as info:
        load_split(path)
    assert str(path) in str(info.value)


def test_load_split_ignores_comment_and_checks_cases(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"_comment": "x", "train": ["a"], "val": ["b"], "test": ["c"]}))
    split = load_split(path)
    assert split == {"train": ["a"], "val": ["b"], "test": ["c"]}
    check_split_cases(split, ["a", "b", "c", "d"])
    with pytest.raises(DataError, match="1 case\\(s\\) not in the store: c"):
        check_split_cases(split, ["a", "b"])
    with pytest.raises(DataError, match="split file not found"):
        load_split(tmp_path / "missing.json")
