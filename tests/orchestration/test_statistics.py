"""The report's statistics against scipy, on the thesis' own per-run DSCs (jobs/thesis-table-4.2.csv).

The expected values are computed here from the CSV with scipy directly (not through the report), so a
report that pairs the wrong runs, uses the wrong test or the wrong family for Holm fails.
"""

from __future__ import annotations

import csv
import math

import pytest
from scipy import stats

from ioussl.plan.importing import import_results
from ioussl.plan.service import plan_grid
from ioussl.report import statistics
from ioussl.report.service import report_study
from ioussl.report.tables import HELD_OUT, SELECTION, build_report, to_csv, to_latex, to_markdown
from ioussl.track.listing import status_rows

BASELINE = "no pretraining"


@pytest.fixture
def thesis_db(repo_root, db):
    import_results(repo_root / "jobs" / "thesis.toml", repo_root / "jobs" / "thesis-table-4.2.csv", db,
                   source="thesis Table 4.2")
    return db


@pytest.fixture
def table_4_2(repo_root) -> dict[str, list[dict[str, str]]]:
    groups: dict[str, list[dict[str, str]]] = {}
    with (repo_root / "jobs" / "thesis-table-4.2.csv").open() as handle:
        for row in csv.DictReader(handle):
            groups.setdefault(row["group"], []).append(row)
    return groups


def _holm_by_hand(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm's procedure written out: sort, multiply by (m - rank), carry the running maximum, cap at 1."""
    ordered = sorted(pvalues, key=pvalues.get)
    adjusted, running = {}, 0.0
    for rank, name in enumerate(ordered):
        running = max(running, min(1.0, (len(ordered) - rank) * pvalues[name]))
        adjusted[name] = running
    return adjusted


def test_imported_table_4_2_is_tested_unpaired_with_holm(thesis_db, table_4_2):
    """Issue 21: the thesis never says which DSC is whose, so no pairing is assumed: Welch over the fine-tunes
    (issue 11's numbers: [0.3, 0.6] p = 0.022, every other row p >= 0.058), Holm over the 5 settings."""
    base = [float(r["dsc"]) for r in table_4_2[BASELINE]]
    rows = {row.group: row for row in report_study(thesis_db, "thesis").report.rows}
    assert rows[BASELINE].p is None and rows[BASELINE].p_holm is None
    expected = {}
    for group, runs in table_4_2.items():
        if group != BASELINE:
            expected[group] = stats.ttest_ind([float(r["dsc"]) for r in runs], base, equal_var=False).pvalue
    holm = _holm_by_hand(expected)
    for group, p in expected.items():
        assert rows[group].p == pytest.approx(p, rel=1e-10)
        assert rows[group].p_holm == pytest.approx(holm[group], rel=1e-12)
        assert rows[group].test == "Welch (runs, pairing unknown)" and rows[group].pairing == "unknown"
    assert round(rows["[0.3, 0.6]"].p, 3) == 0.022
    others = [row.p for group, row in rows.items() if group not in (BASELINE, "[0.3, 0.6]")]
    assert min(round(p, 3) for p in others) == 0.058
    assert round(rows["[0.3, 0.6]"].p_holm, 3) == 0.108  # 5 settings: nothing survives Holm


@pytest.mark.parametrize("df", [1, 2, 3, 7, 29, 30, 31, 45, 120, 1000])
def test_t_quantile_is_scipys_beyond_any_table(df):
    # The hand-written table jumped to 1.96 above 30 degrees of freedom: 2.04 at df = 31 is 4% wider.
    assert statistics.t_quantile(df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-12)
    assert statistics.t_quantile(df) > 1.959963984540054


@pytest.mark.filterwarnings("ignore:Precision loss")  # scipy.stats on the side without spread
@pytest.mark.parametrize("seed", range(20))
def test_the_tests_are_scipy_stats_on_random_samples(seed):
    """statistics.py computes the t statistics itself (scipy.special's t distribution: a sweep's report runs
    thousands of tests); they must be scipy.stats' own, sizes and spreads of every kind included."""
    import random

    rng = random.Random(seed)
    n, m = rng.randint(2, 12), rng.randint(2, 12)
    a = [rng.uniform(0.5, 0.9) for _ in range(n)]
    b = [rng.uniform(0.5, 0.9) * rng.choice((1, 0.5)) for _ in range(n)]
    c = [0.7] * m if seed % 5 == 0 else [rng.gauss(0.7, rng.choice((0.001, 0.1))) for _ in range(m)]
    assert statistics.paired_t_pvalue(a, b) == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-10)
    assert statistics.welch_t_pvalue(a, c) == pytest.approx(stats.ttest_ind(a, c, equal_var=False).pvalue, rel=1e-10)
    assert statistics.mean_ci(a) == pytest.approx(stats.t.interval(0.95, n - 1, loc=sum(a) / n, scale=stats.sem(a)),
                                                  rel=1e-12)


def test_holm_matches_a_worked_example_and_leaves_untested_alone():
    # R: p.adjust(c(0.01, 0.02, 0.03, 0.04, 0.05), "holm") -> 0.05 0.08 0.09 0.09 0.09
    assert statistics.holm([0.03, None, 0.01, 0.05, 0.02, 0.04]) == pytest.approx(
        [0.09, None, 0.05, 0.09, 0.08, 0.09])
    assert statistics.holm([0.5, 0.9]) == [1.0, 1.0]
    assert statistics.holm([None, None]) == [None, None]
    assert statistics.holm([]) == []


def test_undefined_statistics_are_none():
    assert statistics.mean_ci([0.8]) is None
    assert statistics.paired_t_pvalue([0.8], [0.7]) is None  # one pair
    assert statistics.paired_t_pvalue([0.8, 0.9], [0.7, 0.8]) is None  # identical differences: no spread
    assert statistics.welch_t_pvalue([0.8, 0.8], [0.8, 0.8]) is None
    assert statistics.welch_t_pvalue([0.8], [0.7, 0.9]) is None
    assert 0.0 < statistics.welch_t_pvalue([0.8, 0.8], [0.7, 0.75]) < 1.0  # one side without spread is fine
    with pytest.raises(ValueError, match="2 values against 1"):
        statistics.paired_t_pvalue([0.8, 0.9], [0.7])


def test_outputs_show_raw_and_holm_adjusted_p(thesis_db):
    report = report_study(thesis_db, "thesis").report
    markdown, latex = to_markdown(report), to_latex(report)
    assert "| test | p | p Holm |" in markdown
    assert "| +0.010 | n too small | Welch (runs, pairing unknown) | 0.022 | 0.108 |" in markdown  # [0.3, 0.6]
    assert "Holm's adjustment over the 5 setting(s) tested" in markdown
    assert "0.022 & 0.108" in latex
    header, *lines = list(csv.reader(to_csv(report).splitlines()))
    row = dict(zip(header, next(line for line in lines if line[0] == "[0.3, 0.6]"), strict=True))
    assert float(row["p"]) == pytest.approx(0.021626, abs=1e-6)
    assert (row["cases"], row["metric"], row["pairing"], row["delta_ci95_low"]) == ("val", "dsc", "unknown", "")


def _with_scores(records, scores):  # type: ignore[no-untyped-def]
    """Records with (dsc, test_dsc, flare_dsc, flare_nsd, flare_part) set per (group, pretrain seed, seed)."""
    out = []
    for record in records:
        values = scores(record) if record.stage == "finetune" else None
        if values is not None:
            dsc, test, flare_dsc, flare_nsd, part = values
            record = record._replace(dsc=dsc, test_dsc=test, flare_dsc=flare_dsc, flare_nsd=flare_nsd,
                                     flare_part=part)
        out.append(record)
    return out


def test_a_split_with_a_test_part_reports_the_held_out_number(repo_root, db):
    plan_grid(repo_root / "jobs" / "thesis-test-split.toml", db, check_data=False)
    records = status_rows(db)

    def scores(record):  # type: ignore[no-untyped-def]
        bump = 0.02 if record.group == "[0.3, 0.6]" else 0.0
        wobble = 0.001 * (record.seed + 2 * (record.pretrain_seed or 0))
        return (0.90 + bump + wobble, 0.80 + bump + wobble, 0.70 + wobble, 0.60 + wobble, "test")

    report = build_report(_with_scores(records, scores), records[0].study)
    rows = {row.group: row for row in report.rows}
    assert {row.cases for row in report.rows} == {HELD_OUT}
    assert rows["[0.3, 0.6]"].mean == pytest.approx(sum(rows["[0.3, 0.6]"].values) / 4)
    assert 0.82 < rows["[0.3, 0.6]"].mean < 0.83  # the test_dsc, not the selection cases' 0.92
    assert 0.92 < rows["[0.3, 0.6]"].selection_mean < 0.93
    assert rows["[0.3, 0.6]"].delta == pytest.approx(rows["[0.3, 0.6]"].mean - rows[BASELINE].mean)
    assert rows[BASELINE].flare_dsc == pytest.approx(0.70 + 0.001 * 2.5) and rows[BASELINE].flare_part == "test"
    assert rows[BASELINE].flare_n == 4
    markdown = to_markdown(report)
    assert "| held-out test |" in markdown and "selection DSC" in markdown and "FLARE NSD" in markdown
    assert "held-out test = test cases that never influenced training or selection" in markdown
    assert f"{rows[BASELINE].flare_dsc:.3f} (test, n=4)" in markdown


def test_groups_are_compared_only_on_the_same_cases(repo_root, db):
    """A setting scored on test cases is not tested against a baseline scored on its selection cases."""
    plan_grid(repo_root / "jobs" / "thesis.toml", db, check_data=False)
    records = status_rows(db)

    def scores(record):  # type: ignore[no-untyped-def]
        test = 0.8 + 0.001 * record.seed if record.group == "[0, 0]" else None
        return (0.85 + 0.002 * record.seed + 0.003 * (record.pretrain_seed or 0), test, None, None, None)

    rows = {row.group: row for row in build_report(_with_scores(records, scores), "thesis").rows}
    assert rows["[0, 0]"].cases == HELD_OUT and rows[BASELINE].cases == SELECTION
    assert rows["[0, 0]"].delta is None and rows["[0, 0]"].p is None and rows["[0, 0]"].test == ""
    assert rows["[0.3, 0.6]"].p is not None and not math.isnan(rows["[0.3, 0.6]"].p)


def test_a_run_without_its_groups_held_out_score_is_left_out_and_named(repo_root, db):
    plan_grid(repo_root / "jobs" / "thesis-test-split.toml", db, check_data=False)
    records = status_rows(db)
    first = next(r for r in records if r.group == "[0, 0]" and r.stage == "finetune")

    def scores(record):  # type: ignore[no-untyped-def]
        return (0.9, None if record.id == first.id else 0.8, None, None, None)

    report = build_report(_with_scores(records, scores), records[0].study)
    row = next(row for row in report.rows if row.group == "[0, 0]")
    assert (row.n, row.planned) == (3, 4)
    assert f"run {first.id} ([0, 0]): no held-out test DSC (its group is scored on test cases)" in report.left_out
