"""Plan-time data checks against a real (synthetic) slice store: intervals the slices cannot meet."""

from __future__ import annotations

import pytest

from ioussl.errors import ConfigError, DataError
from ioussl.plan.service import plan_grid

STUDY = """
[study]
name = "check"
[data]
store = "{store}"
crop = {crop}
[model]
feature_size = 12
[pretrain]
seeds = [1]
[finetune]
seeds = [1]
[[intervals]]
i_min = {i_min}
i_max = {i_max}
"""


@pytest.fixture(scope="module")
def synth_store(tmp_path_factory):
    from ioussl.science.data.preprocess import preprocess_dataset
    from ioussl.science.data.store import SliceStore
    from ioussl.science.data.synth import synth_dataset

    raw = tmp_path_factory.mktemp("raw")
    synth_dataset(raw, 1, 2, seed=3)
    out = tmp_path_factory.mktemp("store")
    assert preprocess_dataset(raw, out).failed == []
    return SliceStore(out)


def study(tmp_path, store, crop=64, i_min=0.3, i_max=0.6):
    path = tmp_path / "s.toml"
    path.write_text(STUDY.format(store=store.root, crop=crop, i_min=i_min, i_max=i_max))
    return path


def test_a_feasible_interval_plans(tmp_path, synth_store, db):
    outcome = plan_grid(study(tmp_path, synth_store), db)
    assert len(outcome.new) == 2 and outcome.warnings == []


def test_an_interval_no_slice_can_meet_is_refused_before_writing(tmp_path, synth_store, db):
    # one pixel of shift already gives IoU 63*64 / (2*64*64 - 63*64) < 0.97: nothing lies in [0.99, 0.999]
    with pytest.raises(ConfigError, match=r"interval \[0.99, 0.999\]"):
        plan_grid(study(tmp_path, synth_store, i_min=0.99, i_max=0.999), db)
    assert not (tmp_path / "registry.db").exists()


def test_an_interval_only_some_slices_meet_is_a_warning(tmp_path, synth_store, db, monkeypatch):
    import numpy as np

    class TwoSizes:  # one slice too small for disjoint 96-crops (needs a 192 side), one large enough
        def __init__(self, root):
            pass

        def unlabelled_cases(self):
            return ["small", "large"]

        def labelled_cases(self):
            return []

        def slice_ids(self, cases):
            return np.arange(2)

        def shapes(self, ids):
            return np.array([[120, 150], [300, 260]])

    monkeypatch.setattr("ioussl.science.data.store.SliceStore", TwoSizes)
    outcome = plan_grid(study(tmp_path, synth_store, crop=96, i_min=0, i_max=0), db)
    assert len(outcome.new) == 2
    assert outcome.warnings == ["interval [0, 0]: 50.0% of the pretraining slices cannot meet it with this crop; "
                                "they give flagged, counted fallback pairs"]


def test_missing_split_file_is_refused(tmp_path, synth_store, db):
    path = study(tmp_path, synth_store)
    path.write_text(path.read_text().replace("crop = 64", 'crop = 64\nsplit = "nope.json"'))
    with pytest.raises(DataError, match="split file not found"):
        plan_grid(path, db)
