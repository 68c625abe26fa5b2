"""Sweep axes: parsing, counting by arithmetic, expansion (fine-tune-only axes share their pretrains), and the
thesis grid unchanged by it."""

from __future__ import annotations

import collections
import json
import tomllib

import pytest

from ioussl.config import RunConfig
from ioussl.errors import ConfigError
from ioussl.plan import expand as planning
from ioussl.plan.study import load_study, parse_study
from ioussl.plan.sweep import SETTINGS, parse_sweep

# jobs/thesis.toml as it was before it replicated the thesis' fp16 numerics by default (its comments say so)
THESIS_FAST = ("runtime.precision=auto", "runtime.tf32=true", "runtime.compile=true")

BASE = """
[study]
name = "sw"
runs_dir = "runs"
[data]
crop = 64
[model]
feature_size = 12
[pretrain]
seeds = [1, 2]
[finetune]
seeds = [1, 2, 3]
baseline_seeds = [1, 2]
[[intervals]]
i_min = 0.3
i_max = 0.6
[[intervals]]
i_min = 0.6
i_max = 1.0
"""


def spec_with(tmp_path, sweep: str, base: str = BASE):  # type: ignore[no-untyped-def]
    return parse_study(tomllib.loads(base + "\n" + sweep), path=None, base_dir=tmp_path)


def test_axes_combine_as_a_product_and_a_zip_group_is_one_axis(tmp_path):
    spec = spec_with(tmp_path, """
[sweep]
"pretrain.base_lr" = [0.0125, 0.025, 0.05]
"data.crop" = [64, 96]
[[sweep.zip]]
"pretrain.batch_size" = [64, 128]
"pretrain.epochs" = [50, 100]
""")
    assert spec.sweep.names == ("pretrain.base_lr", "data.crop", "pretrain.batch_size", "pretrain.epochs")
    assert spec.sweep.count(None) == 3 * 2 * 2 and spec.sweep.count("pretrain") == 12
    runs = planning.expand_grid(spec)
    pretrains = [r for r in runs if r.stage == "pretrain"]
    assert len(pretrains) == 2 * 2 * 12  # intervals x pretrain seeds x points
    zipped = {(r.config.pretrain.batch_size, r.config.pretrain.epochs) for r in pretrains}
    assert zipped == {(64, 50), (128, 100)}  # paired by position, never crossed
    assert {(r.point["pretrain.batch_size"], r.point["pretrain.epochs"]) for r in pretrains} == zipped
    assert len({r.key for r in runs}) == len(runs) == planning.run_count(spec)
    baseline = [r for r in runs if r.parent_key is None and r.stage == "finetune"]
    assert len(baseline) == 2 * 2  # baseline seeds x crops: pretraining settings do not reach it
    assert {tuple(r.point) for r in baseline} == {("data.crop",)}


def test_a_fine_tune_only_axis_multiplies_fine_tunes_that_share_their_pretrains(tmp_path):
    plain = planning.expand_grid(spec_with(tmp_path, ""))
    swept = planning.expand_grid(spec_with(tmp_path, '[sweep]\n"finetune.base_lr" = [0.001, 0.002, 0.004]\n'))
    pre_plain = [r for r in plain if r.stage == "pretrain"]
    pre_swept = [r for r in swept if r.stage == "pretrain"]
    assert [r.key for r in pre_swept] == [r.key for r in pre_plain]  # the same pretrains, same identity
    assert all(r.point == {} for r in pre_swept)
    children = collections.Counter(r.parent_key for r in swept if r.parent_key)
    assert children == {r.key: 3 * 3 for r in pre_swept}  # 3 seeds x 3 learning rates share each pretrain
    tuned = [r for r in swept if r.parent_key]
    assert len(tuned) == 3 * len([r for r in plain if r.parent_key])
    for run in tuned:
        assert run.config.finetune.base_lr == run.point["finetune.base_lr"]
        assert run.pretrain_seed == next(p.seed for p in pre_swept if p.key == run.parent_key)
    baseline = [r for r in swept if r.stage == "finetune" and r.parent_key is None]
    assert len(baseline) == 2 * 3
    assert planning.stage_counts(spec_with(tmp_path, '[sweep]\n"finetune.base_lr" = [0.001, 0.002, 0.004]\n')) == {
        "pretrain": len(pre_swept), "finetune": len(swept) - len(pre_swept)}


def test_a_pretraining_axis_multiplies_pretrains_and_their_fine_tunes_not_the_baseline(tmp_path):
    runs = planning.expand_grid(spec_with(tmp_path, '[sweep]\n"sampler.mode" = ["exact", "algorithm1"]\n'))
    pretrains = [r for r in runs if r.stage == "pretrain"]
    assert len(pretrains) == 2 * 2 * 2
    assert collections.Counter(r.config.sampler.mode for r in pretrains) == {"exact": 4, "algorithm1": 4}
    for run in runs:
        if run.parent_key:  # a fine-tune carries its pretrain's point, its config holds no sampler
            parent = next(p for p in pretrains if p.key == run.parent_key)
            assert run.point == parent.point and run.config.sampler is None
    baseline = [r for r in runs if r.stage == "finetune" and r.parent_key is None]
    assert len(baseline) == 2 and all(r.point == {} for r in baseline)


def test_run_count_is_the_size_of_every_expansion(tmp_path):
    sweeps = [
        "",
        '[sweep]\n"data.crop" = [64, 96, 128]\n',
        '[sweep]\n"finetune.epochs" = [3, 4]\n"model.feature_size" = [12, 24]\n',
        '[sweep]\n[[sweep.zip]]\n"pretrain.epochs" = [5, 6, 7]\n"finetune.epochs" = [8, 8, 9]\n',
        '[sweep]\n"runtime.precision" = ["fp32", "bf16"]\n'
        '[[sweep.zip]]\n"sampler.r1" = [1, 2]\n"sampler.r2" = [3, 4]\n',
        '[sweep.pretrain]\nbase_lr = [0.1, 0.2]\n[sweep.finetune]\nbase_lr = [0.3]\n',  # nested tables
    ]
    for text in sweeps:
        spec = spec_with(tmp_path, text)
        runs = planning.expand_grid(spec)
        assert planning.run_count(spec) == len(runs) == len({r.run_hash for r in runs}), text
        counted = planning.stage_counts(spec)
        assert counted["pretrain"] == sum(r.stage == "pretrain" for r in runs), text


def test_a_mixed_zip_group_gives_each_pretrain_its_paired_fine_tuning_value(tmp_path):
    spec = spec_with(tmp_path, '[sweep]\n[[sweep.zip]]\n"pretrain.epochs" = [5, 6, 7]\n"finetune.epochs" = [8, 8, 9]\n')
    runs = planning.expand_grid(spec)
    by_key = {r.key: r for r in runs}
    for run in runs:
        if run.parent_key:
            pairing = {5: 8, 6: 8, 7: 9}
            assert run.config.finetune.epochs == pairing[by_key[run.parent_key].config.pretrain.epochs]
    baseline = [r for r in runs if r.stage == "finetune" and r.parent_key is None]
    assert sorted(r.config.finetune.epochs for r in baseline) == [8, 8, 9, 9]  # 2 distinct values x 2 seeds


def test_model_depths_can_be_swept_as_lists(tmp_path):
    spec = spec_with(tmp_path, '[sweep]\n"model.depths" = [[2, 2, 2, 2], [2, 2, 6, 2]]\n')
    assert {r.config.model.depths for r in planning.expand_grid(spec)} == {(2, 2, 2, 2), (2, 2, 6, 2)}
    assert spec.sweep.values() == {"model.depths": [[2, 2, 2, 2], [2, 2, 6, 2]]}


def test_every_run_config_setting_but_the_intervals_can_be_swept():
    assert {"data.crop", "pretrain.pred_hidden_dim", "sampler.mode", "finetune.patience"} <= set(SETTINGS)
    assert parse_sweep({"sampler.mode": ["exact"]}, "s").names == ("sampler.mode",)
    with pytest.raises(ConfigError, match="set by \\[\\[intervals\\]\\]"):
        parse_sweep({"sampler.i_min": [0.1]}, "s")


BAD_SWEEPS = {
    "unknown key": ('"pretrain.base_lrr" = [0.1]', "unknown setting 'pretrain.base_lrr'; closest: pretrain.base_lr"),
    "unknown section": ('"optim.lr" = [0.1]', "unknown setting 'optim.lr'; a setting is <section>.<name>"),
    "seeds": ('"pretrain.seeds" = [[1]]', "seeds are listed in [pretrain].seeds"),
    "wrong type": ('"data.crop" = [64, "96"]', '[sweep] "data.crop": expected an integer, got \'96\''),
    "bool for a number": ('"pretrain.base_lr" = [true]', '"pretrain.base_lr": expected a number, got True'),
    "out of range": ('"pretrain.base_lr" = [0.1, -1]', "value -1 is out of range: [pretrain].base_lr must be >0"),
    "fraction out of range": ('"pretrain.momentum" = [1.5]', "[pretrain].momentum must be [0, 1)"),
    "unknown literal": ('"sampler.mode" = ["fast"]', "expected one of 'exact', 'algorithm1', got 'fast'"),
    "empty axis": ('"data.crop" = []', '[sweep] "data.crop": the axis is empty'),
    "not a list": ('"data.crop" = 64', "an axis is a list of values, got 64"),
    "repeated value": ('"data.crop" = [64, 64]', "lists the value 64 twice"),
    "zip unequal": ('[[sweep.zip]]\n"pretrain.epochs" = [1, 2]\n"pretrain.base_lr" = [0.1]',
                    "zip group 1: its lists must have equal lengths (one value each per point); pretrain.epochs has 2"),
    "zip empty list": ('[[sweep.zip]]\n"pretrain.epochs" = []', "the axis is empty"),
    "zip repeated point": ('[[sweep.zip]]\n"pretrain.epochs" = [1, 1]\n"pretrain.base_lr" = [0.1, 0.1]',
                           "the point pretrain.epochs=1, pretrain.base_lr=0.1 is listed twice"),
    "zip not tables": ('zip = [1, 2]', "zip must be an array of tables"),
    "key in two axes": ('"pretrain.epochs" = [1]\n[[sweep.zip]]\n"pretrain.epochs" = [2]\n"pretrain.base_lr" = [0.1]',
                        "pretrain.epochs is swept twice ([sweep] \"pretrain.epochs\" and [[sweep.zip]] 1)"),
    "newline in a store": ('"data.store" = ["a\\nb"]', "contains the control character U+000A"),
}


@pytest.mark.parametrize("case", list(BAD_SWEEPS))
def test_a_bad_sweep_is_refused_with_one_line(tmp_path, case):
    text, message = BAD_SWEEPS[case]
    with pytest.raises(ConfigError) as caught:
        spec_with(tmp_path, "[sweep]\n" + text)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_point_that_cannot_run_names_the_point(tmp_path):
    spec = spec_with(tmp_path, '[sweep]\n"data.crop" = [64, 80]\n"pretrain.epochs" = [1, 2]\n')
    with pytest.raises(ConfigError, match=r"sweep point data.crop=80, pretrain.epochs=1: crop side must be a "
                                          r"multiple of 32"):
        planning.expand_grid(spec)


def test_the_cap_is_checked_by_arithmetic_before_expansion(tmp_path, monkeypatch):
    axes = "\n".join(f'"finetune.{name}" = {list(range(1, 11))}' for name in ("epochs", "patience", "eval_every"))
    spec = spec_with(tmp_path, "[sweep]\n" + axes + '\n"pretrain.epochs" = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n')
    monkeypatch.setattr(planning, "expand_grid", lambda spec: pytest.fail("expanded above the cap"))
    expected = 2 * 2 * 10 + 2 * 2 * 3 * 10**4 + 2 * 10**3
    with pytest.raises(ConfigError, match=f"expands to {expected:,} runs, more than the cap of 5,000; shrink its "
                                          "sweep axes"):
        planning.check_plan_size(spec)
    assert planning.check_plan_size(spec, max_runs=expected) == expected


def test_the_thesis_and_demo_plan_the_runs_they_planned_before_sweeps(repo_root):
    """The thesis' study in its fast numerics (bf16, TF32, compile: jobs/thesis.toml before it took the thesis'
    fp16 by default) plans the run ids recorded before [sweep] existed (tests/fixtures/thesis-fast-runs.json,
    the ids of registry.db.example until then)."""
    recorded = json.loads((repo_root / "tests" / "fixtures" / "thesis-fast-runs.json").read_text())["run_ids"]
    spec = load_study(repo_root / "jobs" / "thesis.toml", overrides=THESIS_FAST)
    runs = planning.expand_grid(spec)
    assert sorted(r.key for r in runs) == sorted(recorded) and len(recorded) == 34
    assert all(r.point == {} for r in runs)
    for study in ("thesis.toml", "demo.toml", "thesis-test-split.toml", "tiny.toml"):
        spec = load_study(repo_root / "jobs" / study)
        assert not spec.sweep and planning.run_count(spec) == len(planning.expand_grid(spec))


def test_planned_configs_serialise_to_the_canonical_json_of_their_dict(tmp_path):
    spec = spec_with(tmp_path, '[sweep]\n"model.depths" = [[2, 2, 2, 2], [2, 2, 6, 2]]\n"finetune.epochs" = [3, 4]\n')
    from ioussl.config import canonical_json

    for run in planning.expand_grid(spec):
        assert run.config.to_json() == canonical_json(run.config.to_dict())
        assert RunConfig.from_json(run.config.to_json()) == run.config


def test_the_ablation_study_plans_six_points_on_one_interval(repo_root):
    spec = load_study(repo_root / "jobs" / "ablation.toml")
    assert spec.sweep.values() == {"data.crop": [64, 96], "pretrain.base_lr": [0.0125, 0.025, 0.05]}
    assert [i.label for i in spec.intervals] == ["[0.3, 0.6]"]
    runs = planning.expand_grid(spec)
    assert planning.stage_counts(spec) == {"pretrain": 12, "finetune": 28} and len(runs) == 40
    crops = collections.Counter((r.config.data.crop, r.stage) for r in runs)
    assert crops == {(64, "pretrain"): 6, (96, "pretrain"): 6, (64, "finetune"): 14, (96, "finetune"): 14}
