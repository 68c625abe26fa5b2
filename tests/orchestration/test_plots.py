"""The report's figures, checked through their matplotlib objects: labels, baseline, ticks, ranges."""

from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

from ioussl.cli import app
from ioussl.plan.importing import import_results
from ioussl.report.plots import collapse_figure, dsc_figure, plot_collapse, plot_pretrain_loss
from ioussl.report.service import report_study


@pytest.fixture
def thesis_db(repo_root, db):
    import_results(repo_root / "jobs" / "thesis.toml", repo_root / "jobs" / "thesis-table-4.2.csv", db,
                   source="thesis Table 4.2")
    return db


def test_dsc_plot_has_axis_labels_and_a_dashed_baseline_at_its_mean(thesis_db):
    report = report_study(thesis_db, "thesis").report
    ax = dsc_figure(report).axes[0]
    assert ax.get_xlabel() and ax.get_ylabel().startswith("DSC")
    assert [t.get_text() for t in ax.get_xticklabels()] == [row.group for row in report.rows]
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    baseline = next(row for row in report.rows if row.group == "no pretraining")
    assert len(dashed) == 1 and list(dashed[0].get_ydata()) == pytest.approx([baseline.mean] * 2)
    assert any("no pretraining" in t.get_text() for t in ax.get_legend().get_texts())


def test_dsc_plot_never_zooms_onto_a_tiny_range_without_saying_so(repo_root, db):
    """Issue 21.9: scores within 0.001 of each other once filled a whole axis; now it spans >= 0.05, the title
    says it is zoomed, and a group with enough pretrainings shows its interval, the others their std, labelled."""
    from ioussl.plan.service import plan_grid
    from ioussl.report.plots import MIN_SPAN
    from ioussl.report.tables import build_report
    from ioussl.track.listing import status_rows

    plan_grid(repo_root / "jobs" / "thesis.toml", db, check_data=False)
    records = [r._replace(dsc=0.8 + 0.0001 * (r.seed + (r.pretrain_seed or 0))) if r.stage == "finetune" else r
               for r in status_rows(db)]
    report = build_report(records, "thesis")
    ax = dsc_figure(report).axes[0]
    bottom, top = ax.get_ylim()
    assert top - bottom >= MIN_SPAN - 1e-9 and bottom <= 0.8 <= top
    assert f"y-axis zoomed to [{bottom:.2f}, {top:.2f}]" in ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "mean ± std (n too small for a CI)" in labels  # 2 pretrainings per setting
    assert "mean, 95% CI (nested bootstrap)" in labels  # the baseline's 4 runs


def _curves() -> dict[str, list[list[tuple[int, float]]]]:
    """Three epochs of two groups, all between 0.90 and 0.96 (as real collapse curves bunch together)."""
    return {"[0, 0]": [[(0, 0.95), (1, 0.93), (2, 0.92)], [(0, 0.96), (1, 0.94), (2, 0.93)]],
            "[0.3, 0.6]": [[(0, 0.94), (1, 0.91), (2, 0.90)]]}


def test_collapse_plot_has_integer_epoch_ticks_and_a_range_fitted_to_the_data():
    ax = collapse_figure(_curves()).axes[0]
    fig = ax.figure
    fig.canvas.draw()  # tick positions are decided at draw time
    low, high = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if low <= t <= high]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert set(ticks) >= {1.0, 2.0, 3.0}  # epochs count from 1
    bottom, top = ax.get_ylim()
    assert 0.85 <= bottom < 0.90 and 0.96 < top <= 1.0  # fitted, not 0-1
    assert ax.get_xlabel() == "epoch" and "collapse" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["[0, 0]", "[0.3, 0.6]"]


def test_collapse_range_stays_sane_for_flat_and_empty_data():
    flat = collapse_figure({"a": [[(0, 0.5), (1, 0.5)]]}).axes[0].get_ylim()
    assert flat[0] < 0.5 < flat[1] and flat[1] - flat[0] < 0.1
    nan = collapse_figure({"a": [[(0, math.nan)]]}).axes[0].get_ylim()
    assert nan == (0.0, 1.0)


def test_pretrain_loss_plot_fits_negative_losses_and_labels_its_groups(tmp_path):
    curves = {"[0, 0]": [[(0, -0.01), (1, -0.2), (2, -0.4)], [(0, -0.02), (1, -0.25), (2, -0.45)]],
              "random crop [0, 1]": [[(0, -0.01), (1, -0.1)]]}  # a shorter run: its mean uses what exists
    path = plot_pretrain_loss(curves, tmp_path / "loss.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from ioussl.report.plots import curves_figure

    ax = curves_figure(curves, ylabel="loss", title="t", unit_range=False).axes[0]
    bottom, top = ax.get_ylim()
    assert -0.5 < bottom < -0.45 and -0.01 < top < 0.05  # fitted to the losses, not clamped to [0, 1]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["[0, 0]", "random crop [0, 1]"]


def test_plots_are_png_files(tmp_path):
    import matplotlib.colors
    import matplotlib.image
    import numpy as np

    path = plot_collapse(_curves(), tmp_path / "sub" / "c.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(path)[..., :3]  # decodes: a whole PNG, not just its signature
    fig = collapse_figure(_curves())
    width, height = fig.get_size_inches() * 120  # the dpi the report writes at
    assert pixels.shape[:2] == (round(height), round(width))
    assert (pixels < 0.9).any(axis=-1).mean() > 0.01  # not a blank canvas
    for line in fig.axes[0].get_lines():  # each group's curve is drawn in its colour
        colour = np.array(matplotlib.colors.to_rgb(line.get_color()))
        assert (np.abs(pixels - colour).max(axis=-1) < 0.05).sum() > 50, line.get_label()


def test_report_plot_on_an_imported_registry_says_why_there_is_no_collapse_plot(thesis_db, tmp_path):
    result = CliRunner().invoke(app, ["report", "--db", thesis_db, "--plot", str(tmp_path / "fig"), "--no-table"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # --no-table: figures only
    lines = result.stderr.splitlines()
    assert lines[0] == f"wrote {tmp_path / 'fig' / 'dsc_per_group.png'}"
    assert lines[1] == ("collapse plot skipped: its 10 pretrain(s) are imported results (ioussl import results), "
                        "which carry no per-epoch collapse series")
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == ["dsc_per_group.png"]


def test_no_table_without_plot_and_pairs_without_plot_are_errors(thesis_db, tmp_path):
    for args, fragment in ((["--no-table"], "--no-table without --plot"),
                           (["--pairs", str(tmp_path / "p.json")], "--pairs is plotted into the --plot")):
        result = CliRunner().invoke(app, ["report", "--db", thesis_db, *args])
        assert result.exit_code == 1 and result.stderr.startswith(f"error: {fragment}"), result.output
