"""Study files: the thesis grid, and every kind of bad input rejected with one clear message."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from ioussl.errors import ConfigError
from ioussl.plan.expand import BASELINE_GROUP, expand_grid
from ioussl.plan.study import load_study

MINIMAL = """
[study]
name = "s"
[data]
crop = 64
[model]
feature_size = 12
[pretrain]
seeds = [1, 2]
[finetune]
seeds = [1]
baseline_seeds = [7]
[[intervals]]
i_min = 0.3
i_max = 0.6
"""


def write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_thesis_grid_has_10_pretrains_24_finetunes_with_parent_links(repo_root):
    runs = expand_grid(load_study(repo_root / "jobs" / "thesis.toml"))
    stages = Counter(r.stage for r in runs)
    assert stages == {"pretrain": 10, "finetune": 24}
    keys = {r.key for r in runs}
    assert len(keys) == 34
    pretrains = {r.key: r for r in runs if r.stage == "pretrain"}
    finetunes = [r for r in runs if r.stage == "finetune"]
    baseline = [r for r in finetunes if r.group == BASELINE_GROUP]
    assert len(baseline) == 4 and all(r.parent_key is None for r in baseline)
    chained = [r for r in finetunes if r.group != BASELINE_GROUP]
    assert len(chained) == 20 and all(r.parent_key in pretrains for r in chained)
    assert Counter(r.parent_key for r in chained) == {key: 2 for key in pretrains}
    groups = Counter(r.group for r in finetunes)
    assert groups == {"no pretraining": 4, "[0, 0]": 4, "[0.0001, 0.3]": 4, "[0.3, 0.6]": 4, "[0.6, 1]": 4,
                      "random crop [0, 1]": 4}


def test_thesis_settings_are_table_4_1(repo_root):
    spec = load_study(repo_root / "jobs" / "thesis.toml")
    assert (spec.pretrain.batch_size, spec.pretrain.epochs, spec.pretrain.base_lr) == (128, 100, 0.025)
    assert (spec.pretrain.end_lr, spec.pretrain.momentum, spec.pretrain.weight_decay) == (1e-6, 0.9, 1e-5)
    assert (spec.finetune.batch_size, spec.finetune.crops_per_slice, spec.finetune.base_lr) == (32, 2, 1e-3)
    assert (spec.finetune.warmup_epochs, spec.finetune.end_lr, spec.finetune.patience) == (10, 5e-5, 20)
    assert spec.finetune.sw_overlap == 0.25 and spec.data.crop == 96 and spec.model.feature_size == 48
    assert spec.resources["pretrain"]["cpus_per_task"] == 10 and spec.resources["finetune"]["cpus_per_task"] == 4
    assert spec.resources["pretrain"]["gpus"] == 1
    assert spec.resources["pretrain"]["slurm"]["constraint"] == "v100"


def test_random_crop_row_samples_independent_crops(repo_root):
    runs = expand_grid(load_study(repo_root / "jobs" / "thesis.toml"))
    random = [r for r in runs if r.stage == "pretrain" and r.group.startswith("random")]
    assert len(random) == 2
    assert all(r.config.sampler.random_crop and (r.config.sampler.i_min, r.config.sampler.i_max) == (0, 1)
               for r in random)


def test_same_study_gives_same_identities(tmp_path):
    first = [r.key for r in expand_grid(load_study(write(tmp_path, MINIMAL)))]
    second = [r.key for r in expand_grid(load_study(write(tmp_path, MINIMAL, "copy.toml")))]
    assert first == second


def test_changing_a_hyperparameter_changes_identity(tmp_path):
    first = {r.key for r in expand_grid(load_study(write(tmp_path, MINIMAL)))}
    changed = MINIMAL.replace("[pretrain]\n", "[pretrain]\nepochs = 3\n")
    second = {r.key for r in expand_grid(load_study(write(tmp_path, changed, "b.toml")))}
    baseline_keys = {r.key for r in expand_grid(load_study(write(tmp_path, MINIMAL))) if r.group == BASELINE_GROUP}
    # pretrains and their fine-tunes change; the baseline does not depend on pretraining settings
    assert first - second and first & second == baseline_keys


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("[study]", "[study\n"), "malformed TOML"),
        (lambda t: t + "\n[bogus]\nx = 1\n", "unknown key(s) bogus; valid keys:"),
        (lambda t: t.replace("[pretrain]\n", "[pretrain]\nbatchsize = 3\n"), "unknown key(s) batchsize; valid keys:"),
        (lambda t: t.replace("i_max = 0.6", "i_max = 1.5"), "must lie inside [0, 1]"),
        (lambda t: t.replace("i_min = 0.3", "i_min = -0.1"), "must lie inside [0, 1]"),
        (lambda t: t.replace("i_min = 0.3\ni_max = 0.6", "i_min = 0.6\ni_max = 0.3"), "reversed"),
        (lambda t: t.replace("seeds = [1, 2]", "seeds = [1, 1]"), "duplicate seed(s) 1"),
        (lambda t: t.replace("baseline_seeds = [7]", "baseline_seeds = [7, 7]"), "duplicate seed(s) 7"),
        (lambda t: t.replace("crop = 64", "crop = 80"), "multiple of 32"),
        (lambda t: t.replace("crop = 64", "crop = 32"), "at least 64"),
        (lambda t: t.replace("feature_size = 12", "feature_size = 16"), "multiple of 12"),
        (lambda t: t.replace('name = "s"', 'name = ""'), "non-empty name"),
        (lambda t: t.replace("[study]", '[study]\ncluster = "nowhere.toml"'), "not found"),
        (lambda t: t.replace("i_max = 0.6", 'i_max = "high"'), "must be numbers"),
        (lambda t: t.replace("seeds = [1, 2]", "seeds = 3"), "list of integers"),
        (lambda t: t + "\n[[intervals]]\ni_min = 0.3\ni_max = 0.6\n", "listed twice"),
        (lambda t: t + "\n[[intervals]]\nrandom_crop = true\ni_min = 0.2\n", "random cropping means [0, 1]"),
        (lambda t: t.replace("[pretrain]\nseeds = [1, 2]", "[pretrain]\nseeds = []"), "[pretrain].seeds is empty"),
        (lambda t: t.split("[[intervals]]")[0].replace("baseline_seeds = [7]", ""), "the study is empty"),
        (lambda t: t.replace("crop = 64", "crop = true"), "expected an integer"),
    ],
)
def test_bad_study_is_one_clear_error(tmp_path, edit, message):
    path = write(tmp_path, edit(MINIMAL))
    with pytest.raises(ConfigError) as caught:
        expand_grid(load_study(path))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value).strip() or "TOML" in str(caught.value)


def test_missing_study_file(tmp_path):
    with pytest.raises(ConfigError, match="study file not found"):
        load_study(tmp_path / "nope.toml")


def test_cluster_profile_fills_slurm_resources(tmp_path):
    (tmp_path / "site.toml").write_text('[slurm]\npartition = "p"\naccount = "acc"\n')
    text = MINIMAL.replace("[study]", '[study]\ncluster = "site.toml"') + "\n[resources.pretrain]\ngpus = 1\n"
    spec = load_study(write(tmp_path, text))
    assert spec.resources["pretrain"] == {"slurm": {"partition": "p", "account": "acc"}, "gpus": 1}
    assert spec.resources["finetune"] == {"slurm": {"partition": "p", "account": "acc"}}


def test_unknown_key_in_cluster_profile_names_valid_keys(tmp_path):
    (tmp_path / "site.toml").write_text('[slurm]\npartitoin = "p"\n')
    with pytest.raises(ConfigError, match="unknown key.*partitoin.*valid keys:.*partition"):
        load_study(write(tmp_path, MINIMAL.replace("[study]", '[study]\ncluster = "site.toml"')))
