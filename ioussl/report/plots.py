"""Report figures: collapse per epoch per interval (thesis Fig. 4.3), DSC per group, pair semantics (Fig. 3.2).

matplotlib is imported inside each function, so importing this module stays cheap. Figures are built
without pyplot (no global state, no backend to choose); ``*_figure`` return them for tests to inspect.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ioussl.errors import DataError
from ioussl.plan.expand import BASELINE_GROUP
from ioussl.report.tables import HELD_OUT, METRICS, Report


def _figure(width: float, height: float):
    """A figure outside pyplot's global state (nothing to close, safe in threads)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _colours() -> tuple[Any, ...]:
    import matplotlib

    return tuple(getattr(matplotlib.colormaps["tab10"], "colors"))  # noqa: B009 (a ListedColormap's, not typed)


def collapse_figure(curves: Mapping[str, Sequence[Sequence[tuple[int, float]]]]):
    """One line per pretrain run (thin) and the mean per group (thick); curves: group -> runs -> points.

    Epochs are counted from 1 on integer ticks; the y-range is fitted to the data (collapse curves of one
    study usually lie within a few hundredths of each other, which a fixed 0-1 range flattens into one band).
    """
    return curves_figure(curves, ylabel="collapse coefficient  (0: spread out, 1: collapsed)",
                         title="Representation collapse during pretraining (thin: runs, thick: group mean)",
                         legend_title="IoU interval")


def curves_figure(curves: Mapping[str, Sequence[Sequence[tuple[int, float]]]], ylabel: str, title: str,
                  unit_range: bool = True, legend_title: str = "group"):
    """Per-epoch series of runs (thin) and their group means (thick), one colour per group.

    Args:
        curves: group -> one [(epoch counted from 0, value)] series per run.
        unit_range: the values are scores in [0, 1]: the fitted y-range stays within it where the data does.
    """
    from matplotlib.ticker import MaxNLocator

    fig = _figure(7, 4.5)
    ax = fig.subplots()
    for colour, (group, runs) in zip(_colours(), curves.items(), strict=False):
        for points in runs:
            ax.plot([e + 1 for e, _ in points], [v for _, v in points], color=colour, alpha=0.35, lw=0.8)
        mean = _mean_curve(runs)
        ax.plot([e + 1 for e, _ in mean], [v for _, v in mean], color=colour, lw=2.2, label=group)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    values = [v for runs in curves.values() for points in runs for _, v in points]
    ax.set_ylim(*(_fitted_range(values) if unit_range else _padded_range(values)))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title=legend_title, title_fontsize=8)
    return fig


def plot_collapse(curves: Mapping[str, Sequence[Sequence[tuple[int, float]]]], path: Path) -> Path:
    """Write :func:`collapse_figure` as a PNG."""
    return _save(collapse_figure(curves), path)


def plot_pretrain_loss(curves: Mapping[str, Sequence[Sequence[tuple[int, float]]]], path: Path) -> Path:
    """The SimSiam loss per epoch as a PNG, laid out as the collapse figure (y-range fitted, not [0, 1])."""
    fig = curves_figure(curves, ylabel="SimSiam loss  (-1: the two views' embeddings agree)",
                        title="Pretraining loss per epoch (thin: runs, thick: group mean)", unit_range=False,
                        legend_title="IoU interval")
    return _save(fig, path)


def plot_curves(curves: Mapping[str, Sequence[Sequence[tuple[int, float]]]], path: Path, ylabel: str,
                title: str) -> Path:
    """Any per-epoch pretraining series (DINO's teacher entropy, its KL from uniform) as a PNG, laid out as the
    collapse figure with a y-range fitted to the data."""
    fig = curves_figure(curves, ylabel=ylabel, title=f"{title} (thin: runs, thick: group mean)", unit_range=False,
                        legend_title="group")
    return _save(fig, path)


def _fitted_range(values: Sequence[float]) -> tuple[float, float]:
    """The data's range with a margin (at least 0.01 either side), kept within [0, 1] where the data is."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low, high = _padded_range(finite)
    return max(low, min(min(finite), 0.0)), min(high, max(max(finite), 1.0))


def _padded_range(values: Sequence[float]) -> tuple[float, float]:
    """The data's range with an 8% margin either side (at least 0.01), for unbounded values such as losses."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    margin = max(0.08 * (high - low), 0.01)
    return low - margin, high + margin


def _mean_curve(runs: Sequence[Sequence[tuple[int, float]]]) -> list[tuple[int, float]]:
    by_epoch: dict[int, list[float]] = {}
    for points in runs:
        for epoch, value in points:
            by_epoch.setdefault(epoch, []).append(value)
    return [(epoch, sum(values) / len(values)) for epoch, values in sorted(by_epoch.items())]


MIN_SPAN = 0.05  # the narrowest y range drawn: a DSC axis is never zoomed onto a spread of 0.001


def dsc_figure(report: Report):
    """Each fine-tune's score as a point, the group mean with its 95% interval (nested bootstrap; the std
    where the group has too few pretrainings for one, said in the legend), the baseline's mean as a dashed
    line. The y-axis spans at least MIN_SPAN and says so when it does not start at 0."""
    rows = [row for row in report.rows if row.values]
    if not rows:
        raise DataError("no fine-tune has a DSC yet: nothing to plot")
    fig = _figure(max(6, 1.3 * len(rows)), 4.5)
    ax = fig.subplots()
    labelled: set[str] = set()
    for x, row in enumerate(rows):
        spread = [x + 0.08 * (i - (row.n - 1) / 2) for i in range(row.n)]
        ax.scatter(spread, row.values, s=22, color="tab:blue", zorder=3,
                   label="one fine-tune" if x == 0 else None)
        if row.mean_ci is not None:
            low, high = row.mean_ci
            kind, color = "mean, 95% CI (nested bootstrap)", "black"
        else:
            low = high = row.mean or 0.0
            low, high = low - (row.std or 0.0), high + (row.std or 0.0)
            kind, color = "mean ± std (n too small for a CI)", "tab:gray"
        mean = row.mean or 0.0
        ax.errorbar([x], [mean], yerr=[[mean - low], [high - mean]], fmt="_", color=color, markersize=22,
                    capsize=6, zorder=4, label=kind if kind not in labelled else None)
        labelled.add(kind)
    baselines = [row for row in rows if row.baseline]  # several (a sweep, studies side by side): no one line
    baseline = baselines[0] if len(baselines) == 1 else None
    if baseline is not None and baseline.mean is not None:
        ax.axhline(baseline.mean, color="tab:red", ls="--", lw=1, zorder=2,
                   label=f"{BASELINE_GROUP} (mean {baseline.mean:.3f})")
    ax.set_xticks(range(len(rows)), [row.group for row in rows], rotation=20, ha="right", fontsize=8)
    cases = {row.cases for row in rows}
    where = ("held-out test cases" if cases == {HELD_OUT} else "selection cases" if HELD_OUT not in cases
             else "see the cases column")
    low, high = y_range([v for row in rows for v in (*row.values, *(row.mean_ci or ()))])
    ax.set_ylim(low, high)
    zoom = "" if (low, high) == (0.0, 1.0) else f"; y-axis zoomed to [{low:.2f}, {high:.2f}]"
    ax.set(xlabel="pretraining (IoU interval of the positive pairs)", ylabel=f"{METRICS[report.metric]} ({where})",
           title=f"{report.study}: {METRICS[report.metric]} per group{zoom}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def y_range(values: Sequence[float]) -> tuple[float, float]:
    """[0, 1] where the scores spread over most of it; else a window of at least MIN_SPAN around them, inside
    [0, 1] (the title says it is zoomed)."""
    low, high = min(values), max(values)
    if high - low > 0.5:
        return 0.0, 1.0
    span = max(MIN_SPAN, 1.3 * (high - low))
    centre = (low + high) / 2
    bottom = min(max(0.0, centre - span / 2), 1.0 - span)
    return round(bottom, 4), round(bottom + span, 4)


def plot_dsc(report: Report, path: Path) -> Path:
    """Write :func:`dsc_figure` as a PNG."""
    return _save(dsc_figure(report), path)


def pairs_figure(rows: Sequence[Mapping[str, Any]]):
    """Share of sampled pairs that have an organ in common, per IoU interval (thesis Fig. 3.2)."""
    labels = [f"[{r['i_min']:g}, {r['i_max']:g}]" for r in rows]
    fig = _figure(6, 4)
    ax = fig.subplots()
    fractions = [float("nan") if r["fraction"] is None else r["fraction"] for r in rows]  # None: no organ seen
    ax.plot(labels, fractions, marker="o")
    ax.set(xlabel="IoU interval", ylabel="pairs sharing >= 1 organ", ylim=(0, 1),
           title="Pair semantics per IoU interval")
    ax.grid(alpha=0.3)
    return fig


def plot_pairs(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Write :func:`pairs_figure` as a PNG."""
    return _save(pairs_figure(rows), path)


def organ_figure(scores: Mapping[str, Mapping[str, float | None]], title: str):
    """A heat map: one row per group, one column per organ, each cell a DSC in [0, 1] written on it.

    Args:
        scores: group -> organ -> DSC (None: no run of the group scored that organ; drawn blank).
    """
    import numpy as np

    groups = list(scores)
    organs = list(dict.fromkeys(organ for row in scores.values() for organ in row))
    if not groups or not organs:
        raise DataError("no per-organ DSC recorded: nothing to draw")
    grid = np.array([[_or_nan(scores[g].get(o)) for o in organs] for g in groups], dtype=float)
    fig = _figure(max(6.5, 0.8 * len(organs) + 2.4), max(2.6, 0.38 * len(groups) + 1.9))
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for (row, column), value in np.ndenumerate(grid):
        if math.isfinite(value):
            ax.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if value > 0.6 else "white")
    ax.set_xticks(range(len(organs)), [o.replace("_", " ") for o in organs], rotation=30, ha="right", fontsize=9)
    ax.set_yticks(range(len(groups)), groups, fontsize=9)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02, label="DSC")
    return fig


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes (laid out tightly), for embedding."""
    import io

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def read_pairs(path: Path) -> list[dict[str, Any]]:
    """The JSON that `ioussl analyze pairs --json` writes: a list of {i_min, i_max, fraction, ...}."""
    try:
        rows = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read pair analysis {path}: {exc}") from None
    if not isinstance(rows, list) or not all({"i_min", "i_max", "fraction"} <= set(r) for r in rows):
        raise DataError(f"{path} is not a pair analysis (expected a list of {{i_min, i_max, fraction}})")
    return rows


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
