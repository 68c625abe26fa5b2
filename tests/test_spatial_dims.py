"""``model.spatial_dims`` (issue 20): 2 by default without touching any run id, 3 hashed, validated in one
line, and sweepable like any setting."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest

from ioussl.config import DataConfig, FinetuneConfig, ModelConfig, PretrainConfig, RunConfig, SamplerConfig, run_hash
from ioussl.errors import ConfigError
from ioussl.plan import expand as planning
from ioussl.plan.study import parse_study


def _run(stage: str = "pretrain", crop: int = 64, **model) -> RunConfig:  # type: ignore[no-untyped-def]
    sections = {"sampler": SamplerConfig(), "pretrain": PretrainConfig()} if stage == "pretrain" else {
        "finetune": FinetuneConfig()}  # fmt: skip
    return RunConfig(stage=stage, seed=1, data=DataConfig(crop=crop), model=ModelConfig(**model), **sections)


def test_the_default_is_left_out_of_the_hash_and_3d_is_hashed():
    flat, cubes = _run(), _run(spatial_dims=3)
    assert "spatial_dims" not in flat.to_json()  # every run planned before issue 20 keeps its id
    assert run_hash(_run(spatial_dims=2), None) == run_hash(flat, None)
    assert '"spatial_dims":3' in cubes.to_json() and run_hash(cubes, None) != run_hash(flat, None)
    assert RunConfig.from_json(cubes.to_json()) == cubes


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (lambda: _run(spatial_dims=4), "spatial_dims must be 2 .* or 3"),
        (lambda: _run(spatial_dims=True), "spatial_dims must be 2"),
        (lambda: _run(crop=48, spatial_dims=3), "multiple of 32"),
        (lambda: _run("finetune", crop=32, spatial_dims=3), "at least 64 for finetune in 3D"),
        (lambda: _run(crop=32), "at least 64, got 32"),  # 2D is as before
        (
            lambda: dataclasses.replace(_run(spatial_dims=3), data=DataConfig(crop=64, augment_on="loader")),
            "augments on the device only",
        ),
    ],
)
def test_bad_3d_settings_are_one_line_errors(config, message):
    with pytest.raises(ConfigError, match=message) as error:
        config().validate()
    assert "\n" not in str(error.value)


def test_3d_pretraining_takes_32_cubes():
    _run(crop=32, spatial_dims=3).validate()  # the encoder alone has no instance norm
    _run("finetune", crop=64, spatial_dims=3).validate()


STUDY = """
[study]
name = "dims"
runs_dir = "runs"
[data]
crop = 64
[model]
feature_size = 12
[pretrain]
seeds = [1]
[finetune]
seeds = [1]
baseline_seeds = [1]
[[intervals]]
i_min = 0.3
i_max = 0.6
"""


def test_spatial_dims_is_sweepable_and_read_from_a_study(tmp_path):
    spec = parse_study(tomllib.loads(STUDY + '\n[sweep]\n"model.spatial_dims" = [2, 3]\n'), path=None,
                       base_dir=tmp_path)  # fmt: skip
    runs = planning.expand_grid(spec)
    dims = {(r.stage, r.config.model.spatial_dims) for r in runs}
    assert dims == {("pretrain", 2), ("pretrain", 3), ("finetune", 2), ("finetune", 3)}
    assert len({r.run_hash for r in runs}) == len(runs) == 6  # a pretrain, its fine-tune and a baseline per point
    flat = parse_study(tomllib.loads(STUDY), path=None, base_dir=tmp_path)
    flat_ids = {r.run_hash for r in planning.expand_grid(flat)}
    assert flat_ids == {r.run_hash for r in runs if r.config.model.spatial_dims == 2}  # 2 is the old study
    three = parse_study(tomllib.loads(STUDY.replace("feature_size = 12", "feature_size = 12\nspatial_dims = 3")),
                        path=None, base_dir=tmp_path)  # fmt: skip
    assert {r.config.model.spatial_dims for r in planning.expand_grid(three)} == {3}
    with pytest.raises(ConfigError, match="spatial_dims"):
        parse_study(tomllib.loads(STUDY.replace("feature_size = 12", "feature_size = 12\nspatial_dims = 1")),
                    path=None, base_dir=tmp_path)  # fmt: skip


def test_the_3d_thesis_study_is_the_thesis_grid_on_volumes():
    from pathlib import Path

    from ioussl.plan.study import load_study

    jobs = Path(__file__).resolve().parents[1] / "jobs"
    flat, cubes = (planning.expand_grid(load_study(jobs / name)) for name in ("thesis.toml", "thesis-3d.toml"))
    assert len(cubes) == len(flat) == 34
    assert sorted((r.stage, r.group, r.seed, r.pretrain_seed) for r in cubes) == sorted(
        (r.stage, r.group, r.seed, r.pretrain_seed) for r in flat
    )
    assert {r.config.model.spatial_dims for r in cubes} == {3} and {r.config.data.crop for r in cubes} == {96}
    assert not {r.run_hash for r in cubes} & {r.run_hash for r in flat}
    for run in cubes:
        run.config.validate()


def test_the_report_says_which_dsc_a_3d_study_holds():
    from types import SimpleNamespace

    from ioussl.report.service import dsc_metric_note

    flat = SimpleNamespace(name="thesis", spec={"model": {"feature_size": 48}})
    cubes = SimpleNamespace(name="thesis-3d", spec={"name": "thesis-3d", "raw": {"model": {"spatial_dims": 3}}})
    swept = SimpleNamespace(name="both", spec={"sweep": {"model.spatial_dims": [2, 3]}})
    assert dsc_metric_note([flat]) == ()
    (note,) = dsc_metric_note([flat, cubes, swept])
    assert "in thesis-3d, both: the 3D DSC per case" in note and "per-slice DSC" in note
