"""The metric is a choice, FLARE's per-case scores reach the report, the organ table, export and the API
(issue 21, points 3 and 4): a small study whose fine-tunes record FLARE sections, through the registry."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

import ioussl.api as api
from ioussl.cli import app
from ioussl.errors import ConfigError
from ioussl.plan.service import plan_grid
from ioussl.registry import open_registry, repo
from ioussl.report.service import report_study
from ioussl.status import RunStatus

STUDY = """
[study]
name = "small"
runs_dir = "runs"
[data]
crop = 64
[model]
feature_size = 12
[pretrain]
seeds = [1, 2, 3]
[finetune]
seeds = [1]
baseline_seeds = [1, 2, 3]
[[intervals]]
i_min = 0.3
i_max = 0.6
{report}
"""
CASES = ("case1", "case2", "case3", "case4")
ORGANS = ("liver", "spleen")


def _flare(run, number: int) -> dict:  # type: ignore[no-untyped-def]
    """A FLARE section whose scores depend on the run, the case and the organ (spleen unscored in case1)."""
    lift = 0.05 if run.parent_id else 0.0
    per_case = {}
    for k, case in enumerate(CASES):
        wobble = 0.004 * ((number * 7 + k * 3) % 5)  # differences that vary by case: a paired test has spread
        per_case[case] = {organ: {"dsc": round(0.6 + lift + 0.03 * k + 0.01 * number + 0.02 * j + wobble, 6),
                                  "nsd": round(0.5 + lift + 0.02 * k + 0.01 * number, 6)}
                          for j, organ in enumerate(ORGANS)}
    per_case["case1"]["spleen"] = {"dsc": None, "nsd": None}
    per_organ = {organ: {m: float(np.mean([c[organ][m] for c in per_case.values() if c[organ][m] is not None]))
                         for m in ("dsc", "nsd")} for organ in ORGANS}
    dsc = float(np.mean([per_organ[o]["dsc"] for o in ORGANS]))
    nsd = float(np.mean([per_organ[o]["nsd"] for o in ORGANS]))
    return {"part": "test", "dsc": dsc, "nsd": nsd, "per_organ": per_organ, "per_case": per_case}


@pytest.fixture
def small(db, tmp_path):  # type: ignore[no-untyped-def]
    def make(report: str = "") -> dict:
        (tmp_path / "small.toml").write_text(STUDY.format(report=report))
        plan_grid(tmp_path / "small.toml", db, check_data=False)
        registry = open_registry(db)
        flares = {}
        with registry.session() as session:
            for number, run in enumerate(sorted(repo.study_runs(session, "small"), key=lambda r: r.id)):
                if run.stage == "finetune":
                    flare = flares[run.id] = _flare(run, number)
                    columns = {"dsc": 0.7, "flare_dsc": flare["dsc"], "flare_nsd": flare["nsd"], "flare_part": "test"}
                    device = {"device": "cuda", "device_name": "NVIDIA H100", "autocast": "torch.bfloat16",
                              "tf32": True, "compile": number % 2 == 0}
                    repo.record_result(session, run, columns, {"dsc": 0.7, "flare": flare,
                                                               "provenance": {"device": device}})
                repo.set_status(session, run, RunStatus.COMPLETED)
        registry.dispose()
        return flares
    return make


def _case_means(flares: dict, run_ids, measure: str) -> list[float]:  # type: ignore[no-untyped-def]
    per_run = [[np.nanmean([np.nan if flares[r]["per_case"][c][o][measure] is None else
                            flares[r]["per_case"][c][o][measure] for o in ORGANS]) for c in CASES] for r in run_ids]
    return list(np.mean(per_run, axis=0))


def test_flare_metric_with_case_resampling_and_case_tests(small, db):
    flares = small()
    report = report_study(db, "small", metric="flare_nsd").report
    base, row = report.rows
    assert report.metric == "flare_nsd" and row.cases == "test"
    assert list(row.values) == pytest.approx([flares[r]["nsd"] for r in row.run_ids], rel=1e-12)
    assert row.cases_resampled == len(CASES) and row.delta_ci[0] <= row.delta <= row.delta_ci[1]
    assert row.test == "Welch (runs)"  # one fine-tune per pretraining
    from ioussl.report.tables import legend_lines

    assert any("rests on fewer than 8 units a side" in line for line in legend_lines(report))  # 3 vs 3: said
    paired = {r.group: r for r in report_study(db, "small", metric="flare_dsc", test="cases").report.rows}
    a = _case_means(flares, paired["[0.3, 0.6]"].run_ids, "dsc")
    b = _case_means(flares, paired["no pretraining"].run_ids, "dsc")
    assert paired["[0.3, 0.6]"].p == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-10)
    assert paired["[0.3, 0.6]"].test == f"paired t by case ({len(CASES)})"
    signed = report_study(db, "small", metric="flare_dsc", test="wilcoxon").report.rows[1]
    assert signed.p == pytest.approx(stats.wilcoxon(a, b).pvalue, rel=1e-10)
    # the per-slice DSC has no per-case scores: a case test says so and falls back to Welch
    assert report_study(db, "small", test="cases").report.rows[1].test == "Welch (runs, no shared cases)"


def test_the_study_file_chooses_the_metric_and_bad_choices_are_one_line(small, db, tmp_path):
    small('[report]\nmetric = "flare_dsc"\n')
    assert report_study(db, "small").report.metric == "flare_dsc"
    assert report_study(db, "small", metric="dsc").report.metric == "dsc"  # the command line wins
    with pytest.raises(ConfigError, match="unknown report metric 'iou'; valid: dsc, flare_dsc, flare_nsd"):
        report_study(db, "small", metric="iou")
    (tmp_path / "bad.toml").write_text(STUDY.format(report='[report]\nmetric = "iou"').replace("small", "bad"))
    with pytest.raises(ConfigError, match=r"\[report\]: metric must be one of dsc, flare_dsc, flare_nsd"):
        plan_grid(tmp_path / "bad.toml", db, check_data=False)
    result = CliRunner().invoke(app, ["report", "--db", db, "--metric", "iou"])
    assert result.exit_code != 0 and "unknown report metric" in result.output and "Traceback" not in result.output


def test_the_report_states_the_numerics_of_its_results(small, db):
    """Issue 21.8: precision, TF32 and compile of each recorded fine-tune, counted in the footer (every format,
    the HTML report's included)."""
    small()
    footer = "\n".join(report_study(db, "small").report.footer)
    assert "numerics of the recorded fine-tunes: bf16 autocast, TF32 on, compiled on NVIDIA H100 (" in footer
    assert "bf16 autocast, TF32 on, eager on NVIDIA H100 (" in footer


def test_metric_names_match_the_study_files():
    from ioussl.plan.study import REPORT_METRICS, REPORT_TESTS
    from ioussl.report.comparison import TESTS
    from ioussl.report.tables import METRICS

    assert tuple(METRICS) == REPORT_METRICS and TESTS == REPORT_TESTS


def test_organ_table_export_and_api_carry_the_per_case_scores(small, db, tmp_path):
    flares = small()
    outcome = report_study(db, "small", organs=True)
    rows = {(r.group, r.organ, r.measure): r for r in outcome.organs}
    run_ids = outcome.report.rows[1].run_ids
    liver = rows[("[0.3, 0.6]", "liver", "DSC")]
    assert liver.mean == pytest.approx(np.mean([flares[r]["per_organ"]["liver"]["dsc"] for r in run_ids]))
    assert liver.n == 3 and liver.ci is not None and liver.ci[0] <= liver.mean <= liver.ci[1]
    assert {measure for _, _, measure in rows} == {"DSC", "NSD"}
    table = api.report(db, "small", metric="flare_nsd", test="wilcoxon")
    assert list(table.metric) == ["flare_nsd"] * 2 and table.test[1].startswith("Wilcoxon by case")
    frame = api.cases(db, "small")
    assert len(frame) == 6 * len(CASES) * len(ORGANS)
    one = frame[(frame.run_id == run_ids[0]) & (frame.case == "case2") & (frame.organ == "spleen")]
    assert one.flare_dsc.item() == flares[run_ids[0]]["per_case"]["case2"]["spleen"]["dsc"]
    assert frame[(frame.case == "case1") & (frame.organ == "spleen")].flare_dsc.isna().all()
    out = tmp_path / "cases.csv"
    result = CliRunner().invoke(app, ["export", "cases", "--db", db, "-o", str(out)])
    assert result.exit_code == 0 and out.read_text().splitlines()[0].startswith("study,run_id,interval")
    shown = CliRunner().invoke(app, ["report", "--db", db, "--organs", "--metric", "flare_dsc"])
    assert shown.exit_code == 0 and "per organ (FLARE 2022" in shown.stdout and "liver" in shown.stdout


def test_the_html_report_names_the_metric_and_the_numerics(small, db, tmp_path):
    small()
    out = tmp_path / "report.html"
    report_study(db, "small", html_path=out, metric="flare_nsd")
    page = out.read_text()
    assert "the main number is the FLARE NSD on held-out test cases" in page
    assert "metric: flare_nsd = FLARE 2022" in page and "Δ 95% CI" in page
    assert "numerics of the recorded fine-tunes: bf16 autocast, TF32 on" in page
