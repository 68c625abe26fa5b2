"""Fixtures for the data tests (imported by name: a conftest.py here would collide with other branches)."""

from __future__ import annotations

from pathlib import Path

import pytest

__all__ = ["real_ct_dir", "real_store", "synth_dir", "synth_store"]

REPO_ROOT = Path(__file__).resolve().parents[2]
REAL_CT = REPO_ROOT.parent / "shared" / "data" / "totalseg-example"


@pytest.fixture(scope="session")
def real_ct_dir() -> Path:
    if not (REAL_CT / "images").is_dir():
        pytest.skip(f"real CT example folder {REAL_CT} is absent (expected ../shared/data next to the repo)")
    return REAL_CT


@pytest.fixture(scope="session")
def real_store(real_ct_dir, tmp_path_factory):
    from ioussl.science.data.preprocess import preprocess_dataset
    from ioussl.science.data.store import SliceStore

    out = tmp_path_factory.mktemp("real-store")
    report = preprocess_dataset(real_ct_dir, out)
    assert report.failed == []
    return SliceStore(out)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    from ioussl.science.data.synth import synth_dataset

    out = tmp_path_factory.mktemp("synth")
    synth_dataset(out, cases=3, unlabelled=2, seed=0)
    return out


@pytest.fixture(scope="session")
def synth_store(synth_dir, tmp_path_factory):
    from ioussl.science.data.preprocess import preprocess_dataset
    from ioussl.science.data.store import SliceStore

    out = tmp_path_factory.mktemp("synth-store")
    report = preprocess_dataset(synth_dir, out)
    assert report.failed == []
    return SliceStore(out)
