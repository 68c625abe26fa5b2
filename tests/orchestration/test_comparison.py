"""Δ with its own interval and tests that respect the design (issue 21, points 1 and 2).

Expected values come from scipy.stats on the numbers the test builds (never through the report), so a report
that pairs by seed, takes the group mean's interval for Δ's, or tests fine-tunes as if independent fails.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from ioussl.plan.service import plan_grid
from ioussl.report import bootstrap, comparison, statistics
from ioussl.report.bootstrap import CaseScores, Design
from ioussl.report.tables import build_report, delta_ci_cell, to_csv, to_latex, to_markdown
from ioussl.track.listing import status_rows

BASELINE = "no pretraining"


@pytest.fixture
def thesis_db(repo_root, db):
    from ioussl.plan.importing import import_results

    import_results(repo_root / "jobs" / "thesis.toml", repo_root / "jobs" / "thesis-table-4.2.csv", db,
                   source="thesis Table 4.2")
    return db


@pytest.fixture
def table_4_2(repo_root) -> dict[str, list[dict[str, str]]]:
    import csv

    groups: dict[str, list[dict[str, str]]] = {}
    with (repo_root / "jobs" / "thesis-table-4.2.csv").open() as handle:
        for row in csv.DictReader(handle):
            groups.setdefault(row["group"], []).append(row)
    return groups


def _scored(records, value, part=None):  # type: ignore[no-untyped-def]
    """Fine-tune records with dsc = value(record) (and FLARE's scores on ``part`` where given)."""
    out = []
    for record in records:
        if record.stage == "finetune":
            v = value(record)
            record = record._replace(dsc=v, flare_dsc=v if part else None, flare_nsd=v / 2 if part else None,
                                     flare_part=part)
        out.append(record)
    return out


@pytest.fixture
def grid(repo_root, db):
    """jobs/thesis.toml planned: 5 settings x 2 pretrainings x 2 fine-tunes, 4 baseline runs."""
    plan_grid(repo_root / "jobs" / "thesis.toml", db, check_data=False)
    return status_rows(db)


def _pretraining_effect(record) -> float:  # type: ignore[no-untyped-def]
    bump = {None: 0.0, 1: 0.004, 2: -0.003}[record.pretrain_seed]
    setting = 0.01 if record.group == "[0.3, 0.6]" else 0.0
    return 0.84 + setting + bump + 0.0017 * record.seed + 0.0005 * (hash(record.parent_id) % 3)


def test_welch_on_pretraining_means_is_scipys(grid):
    report = build_report(_scored(grid, _pretraining_effect), "thesis")
    rows = {row.group: row for row in report.rows}
    baseline = [r for r in _scored(grid, _pretraining_effect) if r.group == BASELINE and r.stage == "finetune"]
    for group, row in rows.items():
        if group == BASELINE:
            continue
        runs = [r for r in _scored(grid, _pretraining_effect) if r.group == group and r.stage == "finetune"]
        means = [np.mean([r.dsc for r in runs if r.parent_id == parent]) for parent in {r.parent_id for r in runs}]
        expected = stats.ttest_ind(means, [r.dsc for r in baseline], equal_var=False).pvalue
        assert row.p == pytest.approx(expected, rel=1e-10)
        assert row.test == "Welch (pretrainings)" and row.pairing == "nested" and row.units == 2
        assert row.delta == pytest.approx(np.mean([r.dsc for r in runs]) - np.mean([r.dsc for r in baseline]))
        # Two pretrainings cannot carry an interval: said, never an interval outside [0, 1].
        assert row.delta_ci is None and row.ci_note.startswith("n too small (2 pretraining(s) vs 4")
        assert delta_ci_cell(row) == "n too small"
    tested = {g: r.p for g, r in rows.items() if r.p is not None}
    holm = statistics.holm(list(tested.values()))
    assert [rows[g].p_holm for g in tested] == pytest.approx(holm, rel=1e-12)
    assert len(tested) == 5


def test_one_fine_tune_per_pretraining_is_a_difference_of_means_never_a_seed_pairing(repo_root, db, tmp_path):
    """The demo's design: one fine-tune per pretraining, two baseline runs; the issue's [0.6, 1] numbers."""
    text = (repo_root / "jobs" / "demo.toml").read_text().replace('"../demo/', f'"{tmp_path}/')
    study = tmp_path / "demo.toml"
    study.write_text(text)
    plan_grid(study, db, check_data=False)
    values = {(BASELINE, 1): 0.444, (BASELINE, 2): 0.629, ("[0.6, 1]", 1): 0.5365, ("[0.6, 1]", 2): 0.5380}

    def value(record):  # type: ignore[no-untyped-def]
        return values.get((record.group, record.pretrain_seed or record.seed), 0.5)

    rows = {row.group: row for row in build_report(_scored(status_rows(db), value), "demo").rows}
    row = rows["[0.6, 1]"]
    assert row.delta == pytest.approx((0.5365 + 0.5380) / 2 - (0.444 + 0.629) / 2)  # +0.00075, not -0.00125
    assert row.p == pytest.approx(stats.ttest_ind([0.5365, 0.5380], [0.444, 0.629], equal_var=False).pvalue,
                                  rel=1e-10)
    assert row.test == "Welch (runs)" and row.delta_ci is None and "n too small" in row.ci_note


def test_imported_results_without_known_pairing_are_compared_unpaired(thesis_db, table_4_2):
    from ioussl.report.service import report_study

    report = report_study(thesis_db, "thesis").report
    rows = {row.group: row for row in report.rows}
    base = [float(r["dsc"]) for r in table_4_2[BASELINE]]
    for group, runs in table_4_2.items():
        if group == BASELINE:
            continue
        expected = stats.ttest_ind([float(r["dsc"]) for r in runs], base, equal_var=False).pvalue
        assert rows[group].p == pytest.approx(expected, rel=1e-10)
        assert rows[group].pairing == "unknown" and "pairing unknown" in rows[group].test
        assert rows[group].delta_ci is None  # 2 pretrainings per setting, whichever DSC is whose
    assert round(rows["[0.3, 0.6]"].p, 3) == 0.022
    markdown = to_markdown(report)
    assert "pairing unknown: imported results" in markdown and "| n too small |" in markdown
    assert "Δ 95% CI" in markdown and "paired" not in markdown.split("\n")[0]


def _nested(rng, units, per_unit, shift, spread=0.01):  # type: ignore[no-untyped-def]
    return Design(tuple(tuple(0.8 + shift + a + rng.normal(0, 0.004, per_unit)) for a in rng.normal(0, spread, units)))


def test_the_bootstrap_interval_is_deltas_seeded_and_widens_with_the_pretraining_spread():
    rng = np.random.default_rng(3)
    group, base = _nested(rng, 6, 2, 0.02), Design(tuple((v,) for v in 0.8 + rng.normal(0, 0.004, 8)))
    interval = bootstrap.delta_interval(group, base, seed=11)
    assert interval is not None and interval.resamples == bootstrap.RESAMPLES
    assert interval.low < group.mean - base.mean < interval.high
    assert bootstrap.delta_interval(group, base, seed=11) == interval  # seeded: the same report twice
    # Fine-tunes treated as independent units hide the pretraining spread: the nested interval is wider.
    flat = Design(tuple((v,) for unit in group.units for v in unit))
    flat_interval = bootstrap.delta_interval(flat, base, seed=11)
    assert interval.high - interval.low > 1.3 * (flat_interval.high - flat_interval.low)
    assert bootstrap.delta_interval(Design(group.units[:2]), base) is None  # 2 pretrainings: n too small


def test_unnested_bootstrap_agrees_with_scipys():
    """Each unit one run, no cases: the resampling is scipy.stats.bootstrap's percentile interval of a
    difference of means (up to Monte Carlo error)."""
    rng = np.random.default_rng(5)
    a, b = 0.8 + rng.normal(0, 0.01, 12), 0.79 + rng.normal(0, 0.02, 9)
    ours = bootstrap.delta_interval(Design(tuple((v,) for v in a)), Design(tuple((v,) for v in b)),
                                    resamples=40_000, seed=1)
    theirs = stats.bootstrap((a, b), lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
                             method="percentile", n_resamples=40_000, random_state=2, vectorized=True)
    se = theirs.standard_error
    assert ours.low == pytest.approx(theirs.confidence_interval.low, abs=0.1 * se)
    assert ours.high == pytest.approx(theirs.confidence_interval.high, abs=0.1 * se)


def _cases(rng, level, names):  # type: ignore[no-untyped-def]
    values = np.clip(level + rng.normal(0, 0.05, (len(names), 3)), 0, 1)
    values[0, 2] = np.nan  # an organ not scored in one case
    return CaseScores(names, values)


def test_case_tests_are_scipys_and_cases_are_resampled():
    rng = np.random.default_rng(8)
    names = tuple(f"case{i}" for i in range(10))
    members = [comparison.Member(f"g{u}{r}", 0.0, f"p{u}", cases=_cases(rng, 0.82, names))
               for u in range(3) for r in range(2)]
    members = [m.__class__(m.run_id, bootstrap.run_score(m.cases), m.unit, cases=m.cases) for m in members]
    base = [comparison.Member(f"b{i}", 0.0, f"b{i}", cases=_cases(rng, 0.8, names)) for i in range(4)]
    base = [m.__class__(m.run_id, bootstrap.run_score(m.cases), m.unit, cases=m.cases) for m in base]
    a = [np.mean([np.nanmean(m.cases.values[k]) for m in members]) for k in range(10)]
    b = [np.mean([np.nanmean(m.cases.values[k]) for m in base]) for k in range(10)]
    paired = comparison.compare(members, base, test="cases", resamples=500)
    assert paired["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-10)
    assert paired["test"] == "paired t by case (10)" and paired["cases_resampled"] == 10
    signed = comparison.compare(members, base, test="wilcoxon", resamples=500)
    assert signed["p"] == pytest.approx(stats.wilcoxon(a, b).pvalue, rel=1e-10)
    welch = comparison.compare(members, base, resamples=500)
    assert welch["delta_ci"][0] < welch["delta"] < welch["delta_ci"][1]
    # a run's score recomputed from its cases is FLARE's summary: organ means over cases, then their mean
    run = members[0].cases
    assert bootstrap.run_score(run) == pytest.approx(np.nanmean(np.nanmean(run.values, axis=0)), rel=1e-12)


def test_outputs_name_the_test_and_the_resamples(grid):
    rng = np.random.default_rng(0)
    report = build_report(_scored(grid, lambda r: float(0.84 + rng.normal(0, 0.01))), "thesis")
    head = to_csv(report).splitlines()[0].split(",")
    assert {"delta_ci95_low", "delta_ci95_high", "test", "p", "p_holm", "pairing", "ci_note"} <= set(head)
    assert "p_paired" not in head and "paired_delta" not in head
    assert "Welch (pretrainings)" in to_latex(report)
    assert "metric: dsc = the thesis' per-slice DSC" in to_markdown(report)
    assert "pairing: each fine-tune within its pretraining" in to_markdown(report)


def test_units_of_many_fine_tunes_resample_from_a_bank_with_the_same_interval(monkeypatch):
    """A sweep's pooled row (pretrainings of 20 fine-tunes): the banked within-unit draws give the interval
    the full draws give, up to Monte Carlo error."""
    rng = np.random.default_rng(9)
    group, base = _nested(rng, 12, 20, 0.01), Design(tuple((v,) for v in 0.8 + rng.normal(0, 0.01, 10)))
    banked = bootstrap.delta_interval(group, base, resamples=20_000, seed=3)
    monkeypatch.setattr(bootstrap, "BANK_FROM", 10_000)
    full = bootstrap.delta_interval(group, base, resamples=20_000, seed=3)
    width = full.high - full.low
    assert banked.low == pytest.approx(full.low, abs=0.05 * width)
    assert banked.high == pytest.approx(full.high, abs=0.05 * width)


def test_per_case_scores_without_any_organ_are_input_not_a_crash():
    """Scores read back from the registry: a run whose cases scored nothing has no case-level information,
    and a case nothing was scored on is left out of the case test (never a NaN p or interval)."""
    names = ("a", "b", "c", "d")
    assert comparison.case_scores_of({"a": {"liver": {"dsc": None}}}, "dsc") is None
    rng = np.random.default_rng(2)

    def member(run_id, unit, level):  # type: ignore[no-untyped-def]
        values = np.clip(level + rng.normal(0, 0.05, (4, 2)), 0, 1)
        values[3] = np.nan  # case d: no organ scored in any run
        scores = CaseScores(names, values)
        return comparison.Member(run_id, bootstrap.run_score(scores), unit, cases=scores)

    group = [member(f"g{i}", f"p{i}", 0.8) for i in range(3)]
    base = [member(f"b{i}", f"b{i}", 0.7) for i in range(3)]
    result = comparison.compare(group, base, test="cases", resamples=300)
    assert result["test"] == "paired t by case (3)" and np.isfinite(result["p"])  # case d left out
    assert result["delta_ci"] is not None and all(np.isfinite(result["delta_ci"]))


def test_an_import_that_knows_its_pairing_is_nested_like_ioussls_own(repo_root, db, tmp_path, table_4_2):
    """`pairing = known` in the CSV: the pretrain seed column is the truth, so pretraining means are the units."""
    from ioussl.errors import DataError
    from ioussl.plan.importing import import_results
    from ioussl.report.service import report_study

    text = (repo_root / "jobs" / "thesis-table-4.2.csv").read_text().splitlines()
    known = tmp_path / "known.csv"
    known.write_text("\n".join([text[0] + ",pairing", *(line + ",known" for line in text[1:])]) + "\n")
    import_results(repo_root / "jobs" / "thesis.toml", known, db, source="pairing known")
    rows = {row.group: row for row in report_study(db, "thesis").report.rows}
    runs = table_4_2["[0.3, 0.6]"]
    means = [np.mean([float(r["dsc"]) for r in runs if r["pretrain_seed"] == seed]) for seed in ("1", "2")]
    base = [float(r["dsc"]) for r in table_4_2[BASELINE]]
    assert rows["[0.3, 0.6]"].test == "Welch (pretrainings)" and rows["[0.3, 0.6]"].pairing == "nested"
    assert rows["[0.3, 0.6]"].p == pytest.approx(stats.ttest_ind(means, base, equal_var=False).pvalue, rel=1e-10)
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([text[0] + ",pairing", text[1] + ",maybe"]) + "\n")
    with pytest.raises(DataError, match="pairing must be known or unknown, got 'maybe'"):
        import_results(repo_root / "jobs" / "thesis.toml", bad, db, source="x")
