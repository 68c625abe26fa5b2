"""The store serves sub-volumes from the per-case memory maps, checked as slices are (issue 20.2)."""

from __future__ import annotations

import numpy as np
import pytest
from volumefix import write_volume_store

from ioussl.errors import DataError
from ioussl.science.data.store import case_array_path

SHAPES = {"A": (40, 50, 60), "B": (33, 70, 64), "U": (36, 48, 48)}


@pytest.fixture()
def store(tmp_path):
    return write_volume_store(tmp_path / "store", SHAPES, labelled={"A", "B"})


def test_sub_volumes_are_the_volume_s_boxes_read_from_the_memory_map(store):
    assert store.volume_shape("B") == (33, 70, 64)
    np.testing.assert_array_equal(store.volume_shapes(["A", "U"]), [[40, 50, 60], [36, 48, 48]])
    image, label = store.volume("A")
    stored = store.stored_subvolume("A", (3, 10, 20), (32, 32, 32))
    assert stored.dtype == np.uint16 and isinstance(stored.base, np.memmap | np.ndarray)
    assert np.shares_memory(stored, store._image_array(store.cases.index("A")))  # a view: nothing else read
    np.testing.assert_array_equal(store.subvolume("A", (3, 10, 20), (32, 32, 32)), image[3:35, 10:42, 20:52])
    np.testing.assert_array_equal(store.label_subvolume("A", (8, 18, 28), (32, 32, 32)), label[8:40, 18:50, 28:60])
    assert store.label_volume("B").shape == (33, 70, 64)
    for idx in store.slice_ids(["A"])[[0, 17]]:  # the slices agree with the sub-volumes
        _, z = store.slice_case(int(idx))
        np.testing.assert_array_equal(store.subvolume("A", (z, 0, 0), (1, 50, 60))[0], store.image(int(idx)))


@pytest.mark.parametrize(
    ("start", "size"),
    [
        ((9, 0, 0), (32, 32, 32)),
        ((0, -1, 0), (32, 32, 32)),
        ((0, 0, 30), (32, 32, 31)),
        ((0, 0), (32, 32)),
    ],  # fmt: skip
)
def test_boxes_leaving_the_volume_are_refused(store, start, size):
    with pytest.raises(DataError, match="sub-volume"):
        store.stored_subvolume("A", start, size)


def test_crops_leaving_a_slice_are_refused_too(store):
    idx = int(store.slice_ids(["A"])[0])
    assert store.stored_region(idx, (18, 28), (32, 32)).shape == (32, 32)
    with pytest.raises(DataError, match="leaves slice"):
        store.stored_region(idx, (19, 0), (32, 32))  # NumPy would have returned 31 rows


def test_unlabelled_and_unknown_cases(store):
    with pytest.raises(DataError, match="unlabelled"):
        store.label_subvolume("U", (0, 0, 0), (8, 8, 8))
    with pytest.raises(DataError, match="unknown case"):
        store.stored_subvolume("Z", (0, 0, 0), (8, 8, 8))


@pytest.mark.parametrize("damage", ["shape", "dtype"])
def test_an_array_that_is_not_the_indexed_volume_is_refused_for_slices_and_sub_volumes(tmp_path, damage):
    store = write_volume_store(tmp_path / "s", SHAPES, labelled={"A"})
    path = case_array_path(store.root, "A", "image")
    array = np.load(path)
    np.save(path, array[:-1] if damage == "shape" else array.astype(np.float32))
    with pytest.raises(DataError, match="index says uint16 \\(40, 50, 60\\)"):
        store.stored_subvolume("A", (0, 0, 0), (8, 8, 8))
    fresh = type(store)(store.root)
    with pytest.raises(DataError, match="index says"):
        fresh.image(int(fresh.slice_ids(["A"])[0]))


def test_preprocessing_pads_the_depth_for_3d_and_the_labels_still_map_back(tmp_path):
    import json

    from ioussl.science.data.grid import to_source_grid
    from ioussl.science.data.preprocess import PreprocessSettings, preprocess_dataset
    from ioussl.science.data.store import SliceStore
    from ioussl.science.data.synth import synth_dataset

    synth_dataset(tmp_path / "raw", cases=1, unlabelled=0, seed=5, size=48, slices=12)
    flat, deep = tmp_path / "flat", tmp_path / "deep"
    assert preprocess_dataset(tmp_path / "raw", flat, PreprocessSettings(min_size=48)).failed == []
    assert preprocess_dataset(tmp_path / "raw", deep, PreprocessSettings(min_size=48, min_depth=64)).failed == []
    (case,) = SliceStore(deep).labelled_cases()
    z_flat, z_deep = SliceStore(flat).volume_shape(case)[0], SliceStore(deep).volume_shape(case)[0]
    assert z_flat < 64 == z_deep  # padded to the cube's side, X and Y as before
    assert SliceStore(flat).volume_shape(case)[1:] == SliceStore(deep).volume_shape(case)[1:]
    assert "min_depth" not in json.loads((flat / "settings.json").read_text())  # older stores' records unchanged
    assert json.loads((deep / "settings.json").read_text())["min_depth"] == 64
    store = SliceStore(deep)
    truth, _ = store.source_label(case)
    np.testing.assert_array_equal(to_source_grid(store.volume(case)[1], store.source_grid(case)), truth)


def test_the_preprocessing_spacing_option_is_parsed_in_one_line():
    from ioussl.cli.data import parse_spacing

    assert parse_spacing("1,1,2.5") == (1.0, 1.0, 2.5)  # the default: the thesis' and the reference's 3D
    assert parse_spacing("1.5, 1.5, 1.5") == (1.5, 1.5, 1.5)
    for bad in ("1,1", "a,b,c", "0,1,1", "1,1,nan", "1,1,-2"):
        with pytest.raises(DataError, match="spacing") as error:
            parse_spacing(bad)
        assert "\n" not in str(error.value)
