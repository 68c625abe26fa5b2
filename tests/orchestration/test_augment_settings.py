"""The augmentation specs as run settings ([pretrain.augment], [finetune.augment]): the committed studies keep
their run ids, a changed spec is a new run of the stage it reaches, a swept spec plans, and bad values are one
line before anything is written."""

from __future__ import annotations

import json
import tomllib

import pytest
from studyfiles import tiny_study
from typer.testing import CliRunner

from ioussl.cli import app
from ioussl.config import CropAugmentConfig, RunConfig, ViewAugmentConfig
from ioussl.errors import ConfigError
from ioussl.plan.expand import expand_grid
from ioussl.plan.study import load_study, parse_study


def test_the_thesis_study_plans_the_run_ids_and_configs_it_planned_before(repo_root):
    # Recorded before augmentation specs were settings (registry.db.example's runs until jobs/thesis.toml took
    # the thesis' fp16 numerics; the overrides give back the file of then): same hashes, same bytes.
    fixture = repo_root / "tests" / "fixtures" / "thesis-fast-runs.json"
    committed = json.loads(fixture.read_text())["configs_by_run_hash"]
    overrides = ("runtime.precision=auto", "runtime.tf32=true", "runtime.compile=true")
    runs = expand_grid(load_study(repo_root / "jobs" / "thesis.toml", overrides=overrides))
    assert len(runs) == len(committed) == 34
    assert {run.run_hash: run.config.to_json() for run in runs} == committed
    assert all('"augment":{' not in text for text in committed.values())  # nothing to leave out before
    assert {run.config.pretrain.augment for run in runs if run.config.pretrain} == {ViewAugmentConfig()}
    assert {run.config.finetune.augment for run in runs if run.config.finetune} == {CropAugmentConfig()}


def _study(extra: str = "") -> str:
    """One interval, one pretrain, its fine-tune and one no-pretraining fine-tune; ``extra`` appended."""
    text = tiny_study("aug", finetune_seeds=(1,)).replace(
        "seeds = [1]\n[[intervals]]", "seeds = [1]\nbaseline_seeds = [1]\n[[intervals]]"
    )
    return text + extra + "\n"


def _plan(tmp_path, extra: str = ""):  # type: ignore[no-untyped-def]
    return expand_grid(parse_study(tomllib.loads(_study(extra)), path=None, base_dir=tmp_path))


def _ids(runs) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """stage/group -> run hash (one run each in the study of ``_plan``)."""
    return {f"{run.stage}/{run.group}": run.run_hash for run in runs}


def test_a_changed_augmentation_is_a_new_run_of_the_stage_it_reaches_and_the_default_written_out_is_not(tmp_path):
    base = _ids(_plan(tmp_path))
    assert list(base) == ["pretrain/[0.3, 0.6]", "finetune/[0.3, 0.6]", "finetune/no pretraining"]
    assert _ids(_plan(tmp_path, "[pretrain.augment]\nzoom_prob = 0.75\nzoom_range = [0.8, 1.2]\n")) == base
    assert _ids(_plan(tmp_path, "[finetune.augment]\nflip_prob = 0.25\n")) == base
    views = _ids(_plan(tmp_path, "[pretrain.augment]\nzoom_prob = 0.5\n"))
    assert views["pretrain/[0.3, 0.6]"] != base["pretrain/[0.3, 0.6]"]
    assert views["finetune/[0.3, 0.6]"] != base["finetune/[0.3, 0.6]"]  # its parent changed
    assert views["finetune/no pretraining"] == base["finetune/no pretraining"]
    crops = _ids(_plan(tmp_path, '[finetune.augment]\norder = ["flip", "rot90"]\n'))
    assert crops["pretrain/[0.3, 0.6]"] == base["pretrain/[0.3, 0.6]"]
    assert crops["finetune/[0.3, 0.6]"] != base["finetune/[0.3, 0.6]"]
    assert crops["finetune/no pretraining"] != base["finetune/no pretraining"]


def test_a_partial_augmentation_table_keeps_the_thesis_values_of_the_rest_and_round_trips(tmp_path):
    runs = _plan(tmp_path, "[pretrain.augment]\nnoise_std = 0.05\nsigma_range = [0.5, 1.0]\n")
    view = runs[0].config.pretrain.augment
    assert view == ViewAugmentConfig(noise_std=0.05, sigma_range=(0.5, 1.0))
    assert view.zoom_prob == 0.75 and view.order[0] == "zoom"  # untouched settings keep protocol §3
    again = RunConfig.from_json(runs[0].config.to_json())  # config.json as the job reads it
    assert again == runs[0].config and again.pretrain.augment.noise_std == 0.05


def test_a_swept_augmentation_setting_plans_one_pretrain_per_value_and_records_its_point(tmp_path):
    runs = _plan(
        tmp_path, '[sweep]\n"pretrain.augment.flip_prob" = [0.25, 0.5]\n"finetune.augment.noise_std" = [0.01, 0.02]\n'
    )
    pretrains = [r for r in runs if r.stage == "pretrain"]
    assert [r.config.pretrain.augment.flip_prob for r in pretrains] == [0.25, 0.5]
    assert pretrains[0].point == {"pretrain.augment.flip_prob": 0.25}
    tuned = [r for r in runs if r.stage == "finetune" and r.parent_key is not None]
    assert len(tuned) == 4 and {r.config.finetune.augment.noise_std for r in tuned} == {0.01, 0.02}
    assert all(r.config.finetune.augment.flip_prob == 0.25 for r in tuned)  # the crops' default, not the sweep's
    unswept = _ids(_plan(tmp_path))
    at_defaults = next(r for r in pretrains if r.point == {"pretrain.augment.flip_prob": 0.5})
    assert at_defaults.run_hash == unswept["pretrain/[0.3, 0.6]"]  # the default value is the plain study's run


def test_a_swept_augmentation_plans_through_the_command_line(tmp_path):
    study = tmp_path / "study.toml"
    study.write_text(_study('[sweep]\n"pretrain.augment.zoom_range" = [[0.9, 1.1], [0.8, 1.2]]'))
    result = CliRunner().invoke(app, ["plan", "grid", str(study), "--db", str(tmp_path / "r.db"), "--no-check-data"])
    assert result.exit_code == 0, result.output
    rows = CliRunner().invoke(app, ["status", "--db", str(tmp_path / "r.db"), "--json", "--no-sync"])
    assert rows.exit_code == 0 and rows.stdout.count('"stage": "pretrain"') == 2


BAD = {
    "probability above 1": ("[pretrain.augment]\nzoom_prob = 1.5", "zoom_prob must be [0, 1], got 1.5"),
    "negative probability": ("[finetune.augment]\nflip_prob = -0.1", "[finetune.augment].flip_prob must be [0, 1]"),
    "reversed zoom range": ("[pretrain.augment]\nzoom_range = [1.2, 0.8]", "zoom_range must be [low, high] with low"),
    "one-number range": ("[pretrain.augment]\nsigma_range = [1.0]", "sigma_range must be [low, high]"),
    "zero sigma": ("[finetune.augment]\nsigma_range = [0, 1]", "[finetune.augment].sigma_range must be (0, 8], got 0"),
    "zoom 100": ("[pretrain.augment]\nzoom_range = [1, 100]", "zoom_range must be [0.1, 10], got 100"),
    "scale range 1": ("[pretrain.augment]\nscale_range = 1.0", "scale_range must be [0, 1), got 1.0"),
    "negative noise": ("[pretrain.augment]\nnoise_std = -0.01", "noise_std must be >=0, got -0.01"),
    "unknown operation": ('[pretrain.augment]\norder = ["zoom", "blur"]', "unknown operation 'blur'; operations: zoom"),
    "repeated operation": ('[finetune.augment]\norder = ["flip", "flip"]', "[finetune.augment].order lists 'flip'"),
    "unknown key": ("[pretrain.augment]\nbrightness_p = 0.5", "unknown key(s) brightness_p; valid keys: flip_prob"),
    "text probability": ('[pretrain.augment]\nnoise_prob = "high"', "noise_prob: expected a number, got 'high'"),
    "infinite noise": ("[pretrain.augment]\nnoise_std = inf", "noise_std: expected a finite number"),
    "swept probability above 1": ('[sweep]\n"pretrain.augment.flip_prob" = [0.5, 2.0]',
                                  "value 2.0 is out of range: [pretrain.augment].flip_prob must be [0, 1]"),
    "swept unknown setting": ('[sweep]\n"pretrain.augment.blur_prob" = [0.5]',
                              "unknown setting 'pretrain.augment.blur_prob'; closest:"),
    "swept reversed range": ('[sweep]\n"finetune.augment.sigma_range" = [[0.5, 1.0], [2.0, 1.0]]',
                             "sweep point finetune.augment.sigma_range=[2.0, 1.0]: [finetune.augment]"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_a_bad_augmentation_setting_is_one_line_and_plans_nothing(tmp_path, case):
    extra, message = BAD[case]
    with pytest.raises(ConfigError) as caught:
        _plan(tmp_path, extra)
    assert message in str(caught.value) and "\n" not in str(caught.value), str(caught.value)
    study = tmp_path / "study.toml"
    study.write_text(_study(extra))
    db = tmp_path / "r.db"
    result = CliRunner().invoke(app, ["plan", "grid", str(study), "--db", str(db), "--no-check-data"])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not db.exists()  # refused before the registry was created
