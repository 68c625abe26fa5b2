"""Report figures: collapse per epoch per interval (thesis Fig. 4.3), DSC per group, pair semantics (Fig. 3.2).

matplotlib is imported inside each function (Agg backend), so importing this module stays cheap.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ioussl.errors import DataError
from ioussl.orchestration.report import Report


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_collapse(curves: Mapping[str, Sequence[Sequence[tuple[int, float]]]], path: Path) -> Path:
    """One line per pretrain run (thin) and the mean per interval (thick); curves: group -> runs -> points."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for colour, (group, runs) in zip(plt.cm.tab10.colors, sorted(curves.items()), strict=False):
        for points in runs:
            ax.plot([e + 1 for e, _ in points], [v for _, v in points], color=colour, alpha=0.35, lw=0.8)
        mean = _mean_curve(runs)
        ax.plot([e + 1 for e, _ in mean], [v for _, v in mean], color=colour, lw=2.2, label=group)
    ax.set(xlabel="epoch", ylabel="collapse coefficient  max(0, 1 - sqrt(d) s)", ylim=(-0.02, 1.02),
           title="Representation collapse during pretraining")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _mean_curve(runs: Sequence[Sequence[tuple[int, float]]]) -> list[tuple[int, float]]:
    by_epoch: dict[int, list[float]] = {}
    for points in runs:
        for epoch, value in points:
            by_epoch.setdefault(epoch, []).append(value)
    return [(epoch, sum(values) / len(values)) for epoch, values in sorted(by_epoch.items())]


def plot_dsc(report: Report, path: Path) -> Path:
    """Each fine-tune's DSC as a point, the group mean as a bar, ± std as an error bar."""
    plt = _pyplot()
    rows = [row for row in report.rows if row.values]
    if not rows:
        raise DataError("no fine-tune has a DSC yet: nothing to plot")
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(rows)), 4.5))
    for x, row in enumerate(rows):
        spread = [x + 0.08 * (i - (row.n - 1) / 2) for i in range(row.n)]
        ax.scatter(spread, row.values, s=22, color="tab:blue", zorder=3)
        ax.errorbar([x], [row.mean], yerr=[row.std or 0.0], fmt="_", color="black", markersize=22, capsize=6,
                    zorder=4)
    ax.set_xticks(range(len(rows)), [row.group for row in rows], rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="DSC (per slice, thesis definition)", title=f"{report.study}: DSC per group (mean ± std)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_pairs(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Share of sampled pairs that have an organ in common, per IoU interval (thesis Fig. 3.2)."""
    plt = _pyplot()
    labels = [f"[{r['i_min']:g}, {r['i_max']:g}]" for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    fractions = [float("nan") if r["fraction"] is None else r["fraction"] for r in rows]  # None: no organ seen
    ax.plot(labels, fractions, marker="o")
    ax.set(xlabel="IoU interval", ylabel="pairs sharing >= 1 organ", ylim=(0, 1),
           title="Pair semantics per IoU interval")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def read_pairs(path: Path) -> list[dict[str, Any]]:
    """The JSON that `ioussl analyze pairs --json` writes: a list of {i_min, i_max, fraction, ...}."""
    try:
        rows = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read pair analysis {path}: {exc}") from None
    if not isinstance(rows, list) or not all({"i_min", "i_max", "fraction"} <= set(r) for r in rows):
        raise DataError(f"{path} is not a pair analysis (expected a list of {{i_min, i_max, fraction}})")
    return rows


def _save(fig, path: Path) -> Path:  # type: ignore[no-untyped-def]
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    fig.clf()
    return path
