"""Report arithmetic against the thesis' Table 4.2 (thesis protocol notes §8)."""

from __future__ import annotations

import itertools
import math

import pytest

from ioussl.errors import DataError
from ioussl.plan.importing import import_results
from ioussl.plan.service import plan_grid
from ioussl.report.service import report_study
from ioussl.report.tables import build_report, to_csv, to_latex, to_markdown
from ioussl.track.listing import status_rows

# Table 4.2 as printed: mean ± std.
THESIS = {
    "no pretraining": (0.843, 0.004), "[0, 0]": (0.838, 0.007), "[0.0001, 0.3]": (0.839, 0.012),
    "[0.3, 0.6]": (0.853, 0.002), "[0.6, 1]": (0.843, 0.013), "random crop [0, 1]": (0.824, 0.011),
}


@pytest.fixture
def thesis_db(repo_root, db):
    import_results(repo_root / "jobs" / "thesis.toml", repo_root / "jobs" / "thesis-table-4.2.csv", db,
                   source="thesis Table 4.2")
    return db


def test_means_and_population_stds_match_table_4_2(thesis_db):
    report = report_study(thesis_db, "thesis").report
    assert [row.group for row in report.rows] == list(THESIS)
    for row in report.rows:
        mean, std = THESIS[row.group]
        assert row.n == 4 and row.complete
        assert abs(row.mean - mean) <= 0.001 and abs(row.std - std) <= 0.001


def test_ddof_1_gives_the_sample_std(thesis_db):
    population = {r.group: r.std for r in report_study(thesis_db, "thesis", ddof=0).report.rows}
    sample = {r.group: r.std for r in report_study(thesis_db, "thesis", ddof=1).report.rows}
    for group, std in population.items():
        assert sample[group] == pytest.approx(std * math.sqrt(4 / 3))


def test_difference_to_baseline(thesis_db):
    rows = {r.group: r for r in report_study(thesis_db, "thesis").report.rows}
    assert rows["no pretraining"].delta is None
    assert rows["[0.3, 0.6]"].delta == pytest.approx(0.85325 - 0.843)
    assert rows["random crop [0, 1]"].delta == pytest.approx(0.824 - 0.843)
    # never paired by seed number (issue 21): imported, the nesting is unknown, so the runs are compared unpaired
    assert rows["[0.3, 0.6]"].pairing == "unknown" and rows["[0.3, 0.6]"].test == "Welch (runs, pairing unknown)"


def test_two_pretrainings_per_setting_give_no_interval_and_say_so(thesis_db):
    """Issue 21: the old "95% CI" [-0.640, 1.713] of a two-value group; now no interval outside [0, 1]."""
    rows = {r.group: r for r in report_study(thesis_db, "thesis").report.rows}
    for row in rows.values():
        assert row.mean_ci is None or 0 <= row.mean_ci[0] <= row.mean <= row.mean_ci[1] <= 1
        if not row.baseline:
            assert row.delta_ci is None and row.ci_note.startswith("n too small (2 pretraining(s) vs 4 baseline")
    # the baseline's four independent runs carry an interval of their mean, inside the values' range
    low, high = rows["no pretraining"].mean_ci
    assert min(rows["no pretraining"].values) <= low < rows["no pretraining"].mean < high \
        <= max(rows["no pretraining"].values)


def test_incomplete_groups_are_marked(repo_root, db):
    plan_grid(repo_root / "jobs" / "thesis.toml", db, check_data=False)
    records = status_rows(db, study="thesis")
    # give three of the four [0.3, 0.6] fine-tunes a DSC
    target = [r for r in records if r.group == "[0.3, 0.6]" and r.stage == "finetune"][:3]
    faked = [r if r not in target else r._replace(dsc=0.85) for r in records]
    report = build_report(faked, "thesis")
    row = {r.group: r for r in report.rows}["[0.3, 0.6]"]
    assert (row.n, row.planned, row.complete) == (3, 4, False)
    assert "3/4" in to_markdown(report)
    assert len(report.left_out) == 24 - 3


def test_formats_carry_the_same_numbers(thesis_db):
    report = report_study(thesis_db, "thesis").report
    markdown, csv_text, latex = to_markdown(report), to_csv(report), to_latex(report)
    assert "| [0.3, 0.6] | 0.853 ± 0.002 |" in markdown
    assert csv_text.splitlines()[0].startswith("group,mean,std,ddof,n")
    assert len(csv_text.splitlines()) == 7
    assert r"0.853 $\pm$ 0.002" in latex and r"\begin{tabular}" in latex


def test_import_twice_changes_nothing(repo_root, thesis_db):
    again = import_results(repo_root / "jobs" / "thesis.toml", repo_root / "jobs" / "thesis-table-4.2.csv",
                           thesis_db, source="thesis Table 4.2")
    assert again.imported == 0 and again.unchanged == 24


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("group,seed,dsc\n", "columns must be"),
        ("group,pretrain_seed,seed,dsc\n", "no result rows"),
        ("group,pretrain_seed,seed,dsc\n\"[0, 0]\",1,1,1.7\n", "must lie in [0, 1]"),
        ("group,pretrain_seed,seed,dsc\n\"[0, 0]\",1,1,abc\n", "must be a float"),
        ("group,pretrain_seed,seed,dsc\n\"[0, 0]\",1,9,0.8\n", "no fine-tune in study 'thesis'"),
        ("group,pretrain_seed,seed,dsc\n\"[0, 0]\",1,1,0.8\n\"[0, 0]\",1,1,0.8\n", "listed twice"),
    ],
)
def test_bad_import_changes_nothing(repo_root, db, tmp_path, content, message):
    csv_path = tmp_path / "r.csv"
    csv_path.write_text(content)
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        import_results(repo_root / "jobs" / "thesis.toml", csv_path, db, source="x")
    if message == "no fine-tune in study 'thesis'":  # the registry was opened, but the transaction rolled back
        assert status_rows(db) == []


def test_plots_are_written_from_recorded_series(thesis_db, tmp_path):
    from ioussl.registry import open_registry, repo

    registry = open_registry(thesis_db, create=False)
    with registry.session() as session:
        pretrains = repo.list_runs(session, study="thesis", stage="pretrain")
        for n, record in enumerate(pretrains):
            repo.record_metrics(session, record.id, [("collapse", e, None, 1.0 / (e + 1 + n)) for e in range(5)])
            if record.group == "[0.3, 0.6]":  # the loss figure draws whichever runs recorded a loss
                repo.record_metrics(session, record.id, [("loss", e, None, -0.1 * e - 0.01 * n) for e in range(5)])
    pairs = tmp_path / "pairs.json"
    pairs.write_text('[{"i_min": 0, "i_max": 0, "fraction": 0.2}, {"i_min": 0.3, "i_max": 0.6, "fraction": 0.8}]')
    outcome = report_study(thesis_db, "thesis", plot_dir=tmp_path / "fig", pairs_json=pairs)
    names = sorted(p.name for p in outcome.plots)
    assert names == ["collapse_per_epoch.png", "dsc_per_group.png", "pair_semantics.png",
                     "pretrain_loss_per_epoch.png"]
    for path in outcome.plots:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert list(outcome.pretrain_losses) == ["[0.3, 0.6]"] and len(outcome.pretrain_losses["[0.3, 0.6]"]) == 2
    series = outcome.pretrain_losses["[0.3, 0.6]"][0]
    assert [e for e, _ in series] == [0, 1, 2, 3, 4]
    assert [b - a for (_, a), (_, b) in itertools.pairwise(series)] == pytest.approx([-0.1] * 4)


def test_footer_names_registry_fingerprint_and_imports(thesis_db):
    footer = report_study(thesis_db, "thesis").report.footer
    assert "fingerprint" in footer[0] and "34 run(s)" in footer[0]
    assert any("24 fine-tune result(s) imported" in line for line in footer)


def test_fingerprint_changes_when_a_result_changes(repo_root, thesis_db, tmp_path):
    before = report_study(thesis_db, "thesis").report.footer[0]
    csv_path = tmp_path / "one.csv"
    csv_path.write_text('group,pretrain_seed,seed,dsc\n"[0, 0]",1,1,0.5\n')
    import_results(repo_root / "jobs" / "thesis.toml", csv_path, thesis_db, source="correction")
    assert report_study(thesis_db, "thesis").report.footer[0] != before
