"""Table 4.2: mean ± std DSC per group, from recorded fine-tune results (pure, no ORM, no torch).

The thesis reports the population std (ddof=0) of the four DSCs of a group (thesis protocol notes §8);
``ddof=1`` gives the sample std. A group with fewer results than planned runs is marked ``n/N``.
Groups are the IoU intervals by default (the thesis table); ``by`` groups by any axes of a sweep, and
records of several studies give rows side by side (``grouping.py``).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ioussl.orchestration import grouping
from ioussl.orchestration.grouping import INTERVAL, GroupKey, StudyOrder
from ioussl.orchestration.planning import BASELINE_GROUP
from ioussl.orchestration.registry.repo import RunRecord
from ioussl.orchestration.study import Interval

# Two-sided 95% Student-t quantiles by degrees of freedom (df > 30: the normal 1.96 is within 4%).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 25: 2.060, 30: 2.042}


@dataclass(frozen=True)
class GroupRow:
    group: str
    values: tuple[float, ...]  # DSC of each completed fine-tune, ordered by (pretrain seed, seed)
    run_ids: tuple[str, ...]
    planned: int
    mean: float | None
    std: float | None
    ci95: tuple[float, float] | None
    delta: float | None  # mean minus the baseline's mean
    paired_delta: float | None  # mean over matched fine-tune seeds of (group - baseline)
    paired_n: int
    axes: Mapping[str, Any] = field(default_factory=dict)  # the group's value on each --by axis (None: unset)
    study: str = ""

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def complete(self) -> bool:
        return self.n == self.planned


@dataclass(frozen=True)
class Report:
    study: str
    ddof: int
    rows: tuple[GroupRow, ...]
    left_out: tuple[str, ...]  # "run <id> (<group>): <why>"
    max_values: int
    footer: tuple[str, ...] = ()  # provenance: code versions, registry fingerprint
    by: tuple[str, ...] = (INTERVAL,)  # the axes rows are grouped by
    studies: tuple[str, ...] = ()  # several: rows side by side, labelled with their study


def build_report(records: Sequence[RunRecord], study: str, ddof: int = 0, group_order: Sequence[str] = (), *,
                 by: Sequence[str] = (INTERVAL,), orders: Mapping[str, StudyOrder] | None = None) -> Report:
    """Group fine-tunes, compute mean/std/CI and the difference to the no-pretraining baseline.

    Args:
        records: the runs of one study, or of every study in ``orders``.
        study: the report's title (the study's name, or several names).
        group_order: the study's interval labels in file order (when ``orders`` is not given).
        by: the axes to group by (``grouping.resolve_by``); the default is the thesis table.
        orders: study name -> its row order; several studies give rows side by side, labelled with it.
    """
    orders = orders or {study: StudyOrder(tuple(group_order))}
    finetunes = [r for r in records if r.stage == "finetune"]
    groups: dict[GroupKey, list[RunRecord]] = {}
    for record in finetunes:
        groups.setdefault(grouping.key_of(record, by), []).append(record)
    left_out = tuple(
        f"run {r.id} ({r.group}): {r.status.value.lower()}{' - ' + r.status_reason if r.status_reason else ''}"
        for r in finetunes if r.dsc is None
    )
    several = len(orders) > 1
    rows = []
    baselines = grouping.Baselines(groups)
    for key in grouping.sort_keys(groups, orders):
        base_key = baselines.of(key)
        baseline = groups[base_key] if base_key is not None else []
        base_mean = _mean([r.dsc for r in baseline if r.dsc is not None])
        row = _row(key.label(several), groups[key], ddof, base_mean, baseline)
        rows.append(replace(row, axes=key.axes(), study=key.study))
    return Report(study, ddof, tuple(rows), left_out, max((row.planned for row in rows), default=0),
                  by=tuple(by), studies=tuple(orders))


def study_group_order(spec: Mapping[str, Any]) -> list[str]:
    """The study's groups as its file lists them (``studies.spec`` intervals), for :func:`order_groups`."""
    return [Interval(**interval).label for interval in spec.get("intervals", [])]


def order_groups(groups: Iterable[str], group_order: Sequence[str]) -> list[str]:
    """The one group order of status and report: the baseline, then the study's order, then the rest."""
    present = set(groups)
    head = [BASELINE_GROUP] if BASELINE_GROUP in present else []
    known = [g for g in dict.fromkeys(group_order) if g in present and g != BASELINE_GROUP]
    rest = sorted(present - set(head) - set(known))
    return head + known + rest


def in_group_order(records: Sequence[RunRecord], orders: Mapping[str, Sequence[str]]) -> list[RunRecord]:
    """Records sorted by study, then group in :func:`order_groups` order; stable within a group.

    ``orders`` maps a study name to its :func:`study_group_order`.
    """
    rank: dict[tuple[str, str], int] = {}
    for study in {record.study for record in records}:
        names = order_groups({r.group for r in records if r.study == study}, orders.get(study, ()))
        rank.update({(study, name): i for i, name in enumerate(names)})
    return sorted(records, key=lambda record: (record.study, rank[(record.study, record.group)]))


def _row(name: str, runs: list[RunRecord], ddof: int, base_mean: float | None,
         baseline: list[RunRecord]) -> GroupRow:
    done = sorted((r for r in runs if r.dsc is not None), key=lambda r: (r.pretrain_seed or 0, r.seed, r.id))
    values = tuple(float(r.dsc) for r in done if r.dsc is not None)
    mean = _mean(values)
    std = _std(values, ddof)
    paired = _paired(done, baseline) if name != BASELINE_GROUP else []
    return GroupRow(
        group=name, values=values, run_ids=tuple(r.id for r in done), planned=len(runs), mean=mean, std=std,
        ci95=_ci95(values), delta=None if mean is None or base_mean is None or name == BASELINE_GROUP
        else mean - base_mean,
        paired_delta=_mean(paired), paired_n=len(paired),
    )


def _paired(done: list[RunRecord], baseline: list[RunRecord]) -> list[float]:
    """Differences to the baseline fine-tune with the same fine-tune seed (same data order and init) and, in a
    sweep, the same value of each setting the baseline's runs have (their fine-tuning settings)."""
    settings = sorted({name for r in baseline for name in r.point})
    by_seed = {grouping.pair_key(r, settings): r.dsc for r in baseline if r.dsc is not None}
    pairs = [(r.dsc, by_seed.get(grouping.pair_key(r, settings))) for r in done if r.dsc is not None]
    return [float(dsc) - float(base) for dsc, base in pairs if base is not None]


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _std(values: Sequence[float], ddof: int) -> float | None:
    if len(values) - ddof <= 0:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - ddof))


def _ci95(values: Sequence[float]) -> tuple[float, float] | None:
    if len(values) < 2:
        return None
    df = len(values) - 1
    quantile = _T95.get(df) or (_T95[max(k for k in _T95 if k <= df)] if df <= 30 else 1.96)
    mean = sum(values) / len(values)
    half = quantile * (_std(values, 1) or 0.0) / math.sqrt(len(values))
    return mean - half, mean + half


# ---- rendering (plain text formats; the terminal table is rich, in the CLI) ----

def _fmt(value: float | None, digits: int = 3, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


MAX_VALUE_COLUMNS = 8  # beyond this many runs per group, tables show the first ones and "+N more"


def row_cells(row: GroupRow, max_values: int) -> list[str]:
    """Group, mean ± std, DSC 1..k, n, Δ baseline, 95% CI, paired Δ (n) — shared by every format."""
    mean_std = "-" if row.mean is None else f"{row.mean:.3f} ± {_fmt(row.std)}"
    shown = min(max_values, MAX_VALUE_COLUMNS)
    values = [_fmt(v) for v in row.values[:shown]] + [""] * max(0, shown - row.n)
    if max_values > MAX_VALUE_COLUMNS:
        values.append(f"+{row.n - shown} more" if row.n > shown else "")
    n = f"{row.n}" if row.complete else f"{row.n}/{row.planned}"
    ci = "-" if row.ci95 is None else f"[{row.ci95[0]:.3f}, {row.ci95[1]:.3f}]"
    paired = "-" if row.paired_delta is None else f"{row.paired_delta:+.3f} ({row.paired_n})"
    return [row.group, mean_std, *values, n, _fmt(row.delta, signed=True), ci, paired]


def header(max_values: int) -> list[str]:
    shown = min(max_values, MAX_VALUE_COLUMNS)
    more = ["…"] if max_values > MAX_VALUE_COLUMNS else []
    return ["group", "mean ± std", *[f"DSC {i}" for i in range(1, shown + 1)], *more, "n", "Δ baseline",
            "95% CI", "paired Δ (n)"]


def footer_lines(report: Report) -> list[str]:
    lines = list(report.footer)
    if report.left_out:
        lines.append(f"left out ({len(report.left_out)} fine-tune(s) without a DSC):")
        lines += [f"  {line}" for line in report.left_out[:20]]
        if len(report.left_out) > 20:
            lines.append(f"  ... and {len(report.left_out) - 20} more")
    return lines


def to_markdown(report: Report) -> str:
    head = header(report.max_values)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row_cells(row, report.max_values)) + " |" for row in report.rows]
    footer = footer_lines(report)
    if footer:
        lines += ["", *[f"> {line}" for line in footer]]
    return "\n".join(lines) + "\n"


def to_csv(report: Report) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["group", "mean", "std", "ddof", "n", "planned", "delta_baseline", "ci95_low", "ci95_high",
                     "paired_delta", "paired_n", "values", "run_ids"])
    for row in report.rows:
        low, high = row.ci95 if row.ci95 else (None, None)
        writer.writerow([row.group, row.mean, row.std, report.ddof, row.n, row.planned, row.delta, low, high,
                         row.paired_delta, row.paired_n, " ".join(f"{v:.6f}" for v in row.values),
                         " ".join(row.run_ids)])
    return buffer.getvalue()


def to_latex(report: Report) -> str:
    """A ``tabular`` for a paper: compiles with plain pdflatex (no package beyond the kernel)."""
    head = header(report.max_values)
    lines = [r"\begin{tabular}{l" + "c" * (len(head) - 1) + "}", r"\hline",
             " & ".join(latex_cell(h) for h in head) + r" \\", r"\hline"]
    for row in report.rows:
        lines.append(" & ".join(latex_cell(c) for c in row_cells(row, report.max_values)) + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    lines += [f"% {line}" for line in footer_lines(report)]
    return "\n".join(lines) + "\n"


_LATEX = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "Δ": r"$\Delta$",
    "…": r"\ldots{}",
}


def latex_cell(text: str) -> str:
    """One table cell as LaTeX: special characters escaped, ± and Δ as math.

    A cell that starts with "[" is braced: after the previous row's ``\\`` LaTeX would read "[0, 0]"
    as the optional row-spacing argument ("Illegal unit of measure").
    """
    escaped = "".join(_LATEX.get(char, char) for char in text)
    return "{" + escaped + "}" if escaped.startswith("[") else escaped
