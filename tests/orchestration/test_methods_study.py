"""``pretrain.method`` is a setting like any other: validated, hashed (existing ids unchanged), sweepable, and
jobs/methods.toml plans method x interval x seeds with its baseline."""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from ioussl import profiles
from ioussl.cli import app
from ioussl.config import DinoConfig, RunConfig, config_hash
from ioussl.errors import ConfigError
from ioussl.plan.expand import expand_grid
from ioussl.plan.study import load_study, parse_study


def _with(cfg: RunConfig, **changes) -> RunConfig:  # type: ignore[no-untyped-def]
    return dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, **changes))


def test_the_default_method_leaves_every_existing_run_id_unchanged():
    cfg = profiles.thesis("pretrain")
    assert "method" not in cfg.to_json() and "dino" not in cfg.to_json()
    assert cfg.pretrain.method == "simsiam" and cfg.pretrain.dino is None
    ft = profiles.thesis("finetune")
    assert ft.finetune.init_from == "teacher" and "init_from" not in ft.to_json()
    # written out explicitly, the defaults are still the same run
    assert config_hash(_with(cfg, method="simsiam")) == config_hash(cfg)


def test_dino_is_another_run_and_carries_its_whole_section():
    cfg = profiles.thesis("pretrain")
    dino = _with(cfg, method="dino").validate()
    assert dino.pretrain.dino == DinoConfig() and config_hash(dino) != config_hash(cfg)
    written = json.loads(dino.to_json())["pretrain"]
    assert written["method"] == "dino" and written["dino"]["out_dim"] == 1024
    assert RunConfig.from_json(dino.to_json()) == dino  # the job reads back exactly what was hashed
    tweaked = _with(cfg, method="dino", dino=DinoConfig(teacher_temp=0.07))
    assert config_hash(tweaked) != config_hash(dino)
    # a [pretrain.dino] table does not reach SimSiam runs: equal runs, equal ids
    assert config_hash(_with(cfg, dino=DinoConfig(teacher_temp=0.07))) == config_hash(cfg)
    ft = profiles.thesis("finetune")
    student = dataclasses.replace(ft, finetune=dataclasses.replace(ft.finetune, init_from="student"))
    assert config_hash(student) != config_hash(ft)


@pytest.mark.parametrize(("changes", "message"), [
    ({"method": "byol"}, r"\[pretrain\].method must be one of 'simsiam', 'dino', got 'byol'"),
    ({"method": "dino", "dino": DinoConfig(teacher_temp=0.0)}, r"\[pretrain.dino\].teacher_temp must be >0"),
    ({"method": "dino", "dino": DinoConfig(teacher_momentum=1.5)}, r"teacher_momentum must be \[0, 1\]"),
    ({"method": "dino", "dino": DinoConfig(center_momentum=1.0)}, r"center_momentum must be \[0, 1\)"),
    ({"method": "dino", "dino": DinoConfig(clip_grad=-1.0)}, r"clip_grad must be >=0"),
])  # fmt: skip
def test_bad_method_settings_are_one_line_errors(changes, message):
    with pytest.raises(ConfigError, match=message):
        _with(profiles.thesis("pretrain"), **changes).validate()


def test_bad_values_in_a_study_file_are_one_line_errors(tmp_path, repo_root):
    raw = load_study(repo_root / "jobs" / "methods.toml").raw
    bad = {**raw, "pretrain": {**raw["pretrain"], "dino": {"out_dim": "many"}}}
    with pytest.raises(ConfigError, match=r"\[pretrain\].dino.out_dim: expected an integer"):
        parse_study(bad, path=None, base_dir=repo_root / "jobs")
    typo = {**raw, "pretrain": {**raw["pretrain"], "dino": {"teacher_temperature": 0.04}}}
    with pytest.raises(ConfigError, match="unknown key.*teacher_temperature.*valid keys"):
        parse_study(typo, path=None, base_dir=repo_root / "jobs")
    wrong = {**raw, "sweep": {"pretrain.method": ["simsiam", "byol"]}}
    with pytest.raises(ConfigError, match="byol"):
        expand_grid(parse_study(wrong, path=None, base_dir=repo_root / "jobs"))


def test_the_methods_study_sweeps_the_method_over_intervals_and_seeds(repo_root):
    runs = expand_grid(load_study(repo_root / "jobs" / "methods.toml"))
    pretrains = [r for r in runs if r.stage == "pretrain"]
    finetunes = [r for r in runs if r.stage == "finetune"]
    assert len(pretrains) == 2 * 2 * 2 and len(finetunes) == 8 * 2 + 4
    methods = sorted(r.config.pretrain.method for r in pretrains)
    assert methods == ["dino"] * 4 + ["simsiam"] * 4
    assert all(r.point == {"pretrain.method": r.config.pretrain.method} for r in pretrains)
    dino = [r.config.pretrain for r in pretrains if r.config.pretrain.method == "dino"]
    assert all(p.dino == DinoConfig() for p in dino)  # the file's [pretrain.dino] spells out the defaults
    assert all(r.config.pretrain.dino is None for r in pretrains if r.config.pretrain.method == "simsiam")
    # the SimSiam half is the thesis' own runs of those intervals: the same configs as jobs/thesis.toml's
    thesis = {config_hash(r.config) for r in expand_grid(load_study(repo_root / "jobs" / "thesis.toml"))
              if r.stage == "pretrain"}  # fmt: skip
    simsiam = {config_hash(r.config) for r in pretrains if r.config.pretrain.method == "simsiam"}
    assert len({config_hash(r.config) for r in pretrains}) == 8
    assert simsiam <= thesis


def test_plan_grid_dry_run_of_the_methods_study(repo_root, tmp_path):
    result = CliRunner().invoke(
        app, ["plan", "grid", str(repo_root / "jobs" / "methods.toml"), "--dry-run", "--no-check-data", "--db",
              str(tmp_path / "r.db")]
    )
    assert result.exit_code == 0, result.output
    assert "pretrain.method" in result.output and "GPU" in result.output
    assert not (tmp_path / "r.db").exists()  # a dry run writes nothing


@pytest.fixture
def thesis_db(repo_root, db):
    from ioussl.plan.importing import import_results

    import_results(repo_root / "jobs" / "thesis.toml", repo_root / "jobs" / "thesis-table-4.2.csv", db,
                   source="thesis Table 4.2")  # fmt: skip
    return db


def test_report_plots_dino_collapse_statistics_only_where_recorded(thesis_db, tmp_path):
    from ioussl.registry import open_registry, repo
    from ioussl.report.service import report_study

    before = report_study(thesis_db, "thesis", plot_dir=tmp_path / "none", html_path=tmp_path / "none.html")
    assert not any(p.name.startswith("teacher") for p in before.plots)  # SimSiam-only: no DINO figure, no note
    assert "DINO" not in (tmp_path / "none.html").read_text() and not any("teacher" in s for s in before.skipped)
    with open_registry(thesis_db, create=False).session() as session:
        for n, record in enumerate(repo.list_runs(session, study="thesis", stage="pretrain")[:2]):
            repo.record_metrics(session, record.id, [("teacher_entropy", e, None, 6.0 - e - n) for e in range(3)])
            repo.record_metrics(session, record.id, [("teacher_kl_uniform", e, None, 0.1 * e) for e in range(3)])
    after = report_study(thesis_db, "thesis", plot_dir=tmp_path / "fig", html_path=tmp_path / "r.html")
    names = {p.name for p in after.plots}
    assert {"teacher_entropy_per_epoch.png", "teacher_kl_uniform_per_epoch.png"} <= names
    for path in (p for p in after.plots if p.suffix == ".png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (tmp_path / "r.html").read_text()
    assert "DINO: teacher output entropy" in html and "DINO: the teacher&#x27;s mean distribution" in html
