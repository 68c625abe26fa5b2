"""Reports by any axes of a sweep, and several studies side by side (on SQLite and PostgreSQL)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from ioussl.errors import ConfigError
from ioussl.plan.importing import import_results
from ioussl.plan.service import plan_grid
from ioussl.registry import open_registry, repo
from ioussl.registry.models import Run
from ioussl.report.service import report_study
from ioussl.report.tables import to_csv
from ioussl.status import RunStatus

STUDY = """
[study]
name = "{name}"
runs_dir = "runs"
[data]
crop = 64
[model]
feature_size = 12
[pretrain]
seeds = [1, 2]
[finetune]
seeds = [1, 2]
baseline_seeds = [1, 2]
[sweep]
"pretrain.base_lr" = [0.05, 0.0125]
"data.crop" = [64, 96]
[[intervals]]
i_min = 0.3
i_max = 0.6
[[intervals]]
i_min = 0.0
i_max = 0.0
"""
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def dsc_of(run: Run) -> float:
    """A DSC that depends on the run's point, interval and seed, so every grouping has its own answer."""
    crop = 0.1 if run.point.get("data.crop") == 96 else 0.0
    if run.parent_id is None:
        return round(0.4 + crop + 0.01 * run.seed, 6)
    interval = 0.02 if run.group == "[0.3, 0.6]" else 0.0
    return round(0.5 + crop + run.point["pretrain.base_lr"] + interval + 0.01 * run.seed, 6)


def completed_sweep(db: str, tmp_path: Path, name: str = "sw") -> dict[str, Run]:
    """Plan the sweep study and give every fine-tune a result (dsc_of), as ingest would."""
    (tmp_path / f"{name}.toml").write_text(STUDY.format(name=name))
    plan_grid(tmp_path / f"{name}.toml", db, check_data=False)
    registry = open_registry(db)
    with registry.session() as session:
        runs = {run.id: run for run in repo.study_runs(session, name)}
        for run in runs.values():
            if run.stage == "finetune":
                repo.record_result(session, run, {"dsc": dsc_of(run)}, {"dsc": dsc_of(run)})
            repo.set_status(session, run, RunStatus.COMPLETED)
    registry.dispose()
    return runs


def test_by_crop_and_interval_compares_each_row_with_the_baseline_of_its_crop(registry_db, tmp_path):
    completed_sweep(registry_db, tmp_path)
    report = report_study(registry_db, "sw", by="data.crop,interval").report
    assert report.by == ("data.crop", "interval")
    assert [row.group for row in report.rows] == [
        "data.crop=64, no pretraining", "data.crop=64, [0.3, 0.6]", "data.crop=64, [0, 0]",
        "data.crop=96, no pretraining", "data.crop=96, [0.3, 0.6]", "data.crop=96, [0, 0]",
    ]
    rows = {row.group: row for row in report.rows}
    assert rows["data.crop=96, no pretraining"].axes == {"data.crop": 96, "interval": "no pretraining"}
    base96 = rows["data.crop=96, no pretraining"]
    assert base96.n == 2 and base96.mean == pytest.approx(0.515) and base96.delta is None
    row = rows["data.crop=96, [0.3, 0.6]"]  # 2 learning rates x 2 pretrain seeds x 2 seeds
    assert row.n == row.planned == 8
    assert row.mean == pytest.approx(0.6 + 0.03125 + 0.02 + 0.015)
    assert row.delta == pytest.approx(row.mean - 0.515)
    # units: its 4 pretrainings (2 learning rates x 2 seeds) against the crop's 2 baseline runs (too few for a CI)
    assert (row.test, row.units, row.pairing, row.delta_ci) == ("Welch (pretrainings)", 4, "nested", None)
    assert "n too small (4 pretraining(s) vs 2 baseline run(s)" in row.ci_note
    assert rows["data.crop=64, [0, 0]"].delta == pytest.approx(0.5 + 0.03125 + 0.015 - 0.415)
    lines = list(csv.DictReader(io.StringIO(to_csv(report))))  # the axes as columns of their own, at the end
    assert list(lines[0])[-3:] == ["study", "data.crop", "interval"]
    assert [(line["study"], line["data.crop"], line["interval"]) for line in lines][:2] == [
        ("sw", "64", "no pretraining"), ("sw", "64", "[0.3, 0.6]")]


def test_the_default_for_a_sweep_is_every_axis_then_the_interval(db, tmp_path):
    completed_sweep(db, tmp_path)
    report = report_study(db, "sw").report
    assert report.by == ("pretrain.base_lr", "data.crop", "interval")
    groups = [row.group for row in report.rows]
    assert groups[:4] == ["data.crop=64, no pretraining", "data.crop=96, no pretraining",
                          "pretrain.base_lr=0.05, data.crop=64, [0.3, 0.6]",
                          "pretrain.base_lr=0.05, data.crop=64, [0, 0]"]
    assert len(groups) == 2 + 2 * 2 * 2  # baselines per crop; learning rates x crops x intervals
    assert all(row.n == 4 for row in report.rows if "no pretraining" not in row.group)
    lr = [row.axes["pretrain.base_lr"] for row in report.rows[2:]]
    assert lr == [0.05] * 4 + [0.0125] * 4  # as the study file lists them, not sorted


def test_by_a_pretraining_setting_alone_pools_the_baseline_and_nests_fine_tunes_in_pretrainings(db, tmp_path):
    completed_sweep(db, tmp_path)
    rows = {row.group: row for row in report_study(db, "sw", by=["pretrain.base_lr"]).report.rows}
    assert list(rows) == ["no pretraining", "pretrain.base_lr=0.05", "pretrain.base_lr=0.0125"]
    base = rows["no pretraining"]
    assert base.n == 4 and base.axes == {"pretrain.base_lr": None}
    high = rows["pretrain.base_lr=0.05"]
    assert high.n == 16 and high.delta == pytest.approx(high.mean - base.mean)
    # 16 fine-tunes in 8 pretrainings (2 crops x 2 intervals x 2 seeds, 2 fine-tunes each) against 4 baseline
    # runs: enough units a side for Δ's interval
    assert high.units == 8 and high.test == "Welch (pretrainings)"
    assert high.delta_ci is not None and high.delta_ci[0] <= high.delta <= high.delta_ci[1]


def test_several_studies_side_by_side_each_against_its_own_baseline(db, tmp_path, repo_root):
    import_results(repo_root / "jobs" / "thesis.toml", repo_root / "jobs" / "thesis-table-4.2.csv", db,
                   source="thesis Table 4.2")
    completed_sweep(db, tmp_path)
    report = report_study(db, ["sw", "thesis"], by="interval").report
    assert report.studies == ("sw", "thesis") and report.study == "sw, thesis"
    groups = [row.group for row in report.rows]
    assert groups[:3] == ["sw: no pretraining", "sw: [0.3, 0.6]", "sw: [0, 0]"]
    assert groups[3:] == ["thesis: no pretraining", "thesis: [0, 0]", "thesis: [0.0001, 0.3]", "thesis: [0.3, 0.6]",
                          "thesis: [0.6, 1]", "thesis: random crop [0, 1]"]
    rows = {row.group: row for row in report.rows}
    assert rows["thesis: [0.3, 0.6]"].delta == pytest.approx(0.85325 - 0.843)  # the thesis' own baseline
    assert rows["sw: [0.3, 0.6]"].study == "sw" and rows["sw: [0.3, 0.6]"].n == 16
    with pytest.raises(ConfigError, match="several studies"):
        report_study(db, None)


def test_the_thesis_table_is_what_it_was(db, repo_root):
    import_results(repo_root / "jobs" / "thesis.toml", repo_root / "jobs" / "thesis-table-4.2.csv", db,
                   source="thesis Table 4.2")
    default = report_study(db, "thesis").report
    assert default.by == ("interval",) and default.studies == ("thesis",)
    assert to_csv(default) == to_csv(report_study(db, "thesis", by="interval").report)

    def without_run_ids(text: str) -> list[list[str]]:
        rows = list(csv.reader(io.StringIO(text)))
        column = rows[0].index("run_ids")  # they hash today's configs, which gained settings since v1
        return [row[:column] + row[column + 1:] for row in rows]

    assert without_run_ids(to_csv(default)) == without_run_ids((FIXTURES / "registry-v1.report.csv").read_text())
    assert [row.axes for row in default.rows][:2] == [{"interval": "no pretraining"}, {"interval": "[0, 0]"}]


@pytest.mark.parametrize(("by", "message"), [
    ("data.crp", "--by 'data.crp' is no axis of study sw (its axes: pretrain.base_lr, data.crop, interval); "
                 "closest: data.crop"),
    ("finetune.base_lr", "--by 'finetune.base_lr' is no axis of study sw"),
    (" , ", "--by names no axis"),
])
def test_by_an_axis_the_study_lacks_is_refused(db, tmp_path, by, message):
    completed_sweep(db, tmp_path)
    with pytest.raises(ConfigError) as caught:
        report_study(db, "sw", by=by)
    assert message in str(caught.value)


def test_statistics_hold_by_axes_and_each_study_is_its_own_holm_family(db, tmp_path, repo_root):
    import_results(repo_root / "jobs" / "thesis.toml", repo_root / "jobs" / "thesis-table-4.2.csv", db,
                   source="thesis Table 4.2")
    completed_sweep(db, tmp_path)
    alone = {row.group: row for row in report_study(db, "thesis").report.rows}
    both = {row.group: row for row in report_study(db, ["sw", "thesis"], by="interval").report.rows}
    assert sum(row.p_holm is not None for row in alone.values()) == 5
    for group, row in alone.items():  # a study beside another keeps its own tests and Holm family
        beside = both[f"thesis: {group}"]
        assert (beside.p, beside.p_holm, beside.test, beside.delta_ci, beside.mean_ci, beside.cases) == (
            row.p, row.p_holm, row.test, row.delta_ci, row.mean_ci, row.cases)
    rows = {row.group: row for row in report_study(db, "sw", by="data.crop,interval").report.rows}
    tested = {group: row for group, row in rows.items() if row.p is not None}
    assert sorted(tested) == ["data.crop=64, [0, 0]", "data.crop=64, [0.3, 0.6]", "data.crop=96, [0, 0]",
                              "data.crop=96, [0.3, 0.6]"]
    smallest = min(tested.values(), key=lambda row: row.p)
    assert smallest.p_holm == pytest.approx(min(1.0, 4 * smallest.p))  # Holm over the 4 tested
    assert all(row.cases == "val" for row in rows.values())
    assert [row.baseline for row in rows.values()] == [True, False, False, True, False, False]
    assert rows["data.crop=96, no pretraining"].p is None  # never tested against itself


def test_the_html_report_by_axes_and_across_studies(db, tmp_path, repo_root):
    import_results(repo_root / "jobs" / "thesis.toml", repo_root / "jobs" / "thesis-table-4.2.csv", db,
                   source="thesis Table 4.2")
    sweep_runs = completed_sweep(db, tmp_path)
    out = tmp_path / "both.html"
    outcome = report_study(db, ["sw", "thesis"], by="data.crop,interval", html_path=out)
    assert outcome.plots == [out]
    text = out.read_text()
    groups = [row.group for row in outcome.report.rows]
    assert groups[:3] == ["sw: data.crop=64, no pretraining", "sw: data.crop=64, [0.3, 0.6]",
                          "sw: data.crop=64, [0, 0]"]
    assert "thesis: [0.3, 0.6]" in groups
    for group in groups:  # every row in both tables (scores, against the baseline)
        assert text.count(f"<td>{group}</td>") == 2, group
    assert text.count("<tr class='baseline'>") == 2 * 3  # two crops' baselines and the thesis' one, per table
    assert f"Runs ({len(sweep_runs) + 34})" in text and "<h1>sw, thesis</h1>" in text
