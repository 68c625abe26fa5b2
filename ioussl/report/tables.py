"""Table 4.2: mean ± std DSC per group, from recorded fine-tune results (pure, no ORM, no torch).

The thesis reports the population std (ddof=0) of the four DSCs of a group (thesis protocol notes §8);
``ddof=1`` gives the sample std. A group with fewer results than planned runs is marked ``n/N``.
Groups are the IoU intervals by default (the thesis table); ``by`` groups by any axes of a sweep, and
records of several studies give rows side by side (``grouping.py``).

A group's number is the per-slice DSC on held-out test cases (``test_dsc``) when its runs recorded one (a
split with a test part), else on the validation cases, which also selected the checkpoint ("selection
cases"). Tests against the baseline and Holm's correction come from :mod:`ioussl.report.statistics`;
with several studies, each study is its own family for Holm's correction.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ioussl.plan.sweep import format_value
from ioussl.registry.repo import RunRecord
from ioussl.report import grouping, statistics
from ioussl.report.grouping import INTERVAL, GroupKey, StudyOrder

# Where a group's number comes from: the cases that selected the checkpoint, or held-out test cases.
SELECTION, HELD_OUT = "val", "test"
CASES_LABEL = {SELECTION: "selection", HELD_OUT: "held-out test"}


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
    cases: str = SELECTION  # SELECTION: `dsc` on the validation cases; HELD_OUT: `test_dsc`
    p_paired: float | None = None  # two-sided paired t-test against the baseline, matched fine-tune seeds
    p_paired_holm: float | None = None  # Holm-adjusted over the report's settings (of the same study)
    p_welch: float | None = None  # two-sided Welch t-test against every baseline run (unpaired)
    p_welch_holm: float | None = None
    selection_mean: float | None = None  # mean `dsc` (validation cases) of the same runs
    flare_dsc: float | None = None  # FLARE 2022 evaluation, mean over the runs that recorded it
    flare_nsd: float | None = None
    flare_n: int = 0
    flare_part: str | None = None  # "val", "test" or "val+test": the cases FLARE scored
    axes: Mapping[str, Any] = field(default_factory=dict)  # the group's value on each --by axis (None: unset)
    study: str = ""
    baseline: bool = False  # fine-tunes without a pretrain (the no-pretraining row)

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
    keys = grouping.keys_of(finetunes, by)
    groups: dict[GroupKey, list[RunRecord]] = {}
    for record, key in zip(finetunes, keys, strict=True):
        groups.setdefault(key, []).append(record)
    cases = {key: group_cases(runs) for key, runs in groups.items()}
    left_out = tuple(_left_out(r, cases[key]) for r, key in zip(finetunes, keys, strict=True)
                     if score(r, cases[key]) is None)
    several = len(orders) > 1
    baselines = grouping.Baselines(groups)
    compared_with: dict[GroupKey, BaselineScores] = {}  # a baseline row's scores, indexed once for all its rows
    fields = []
    for key in grouping.sort_keys(groups, orders):
        base_key = baselines.of(key)
        # A setting is compared with its baseline row only on the same cases (and never with itself).
        baseline = None
        if base_key is not None and cases[base_key] == cases[key]:
            if base_key not in compared_with:
                compared_with[base_key] = BaselineScores.of(groups[base_key], cases[key])
            baseline = compared_with[base_key]
        fields.append({**_row_fields(groups[key], ddof, baseline, cases[key], is_baseline=key.baseline),
                       "group": key.label(several), "axes": key.axes(), "study": key.study})
    # Each row is built once, Holm's p included: a sweep's report has thousands of rows, and a frozen
    # dataclass costs as much to copy with dataclasses.replace as to build.
    rows = tuple(GroupRow(**row) for row in with_holm(fields))
    return Report(study, ddof, rows, left_out, max((row.planned for row in rows), default=0),
                  by=tuple(by), studies=tuple(orders))


def group_cases(runs: Sequence[RunRecord]) -> str:
    """HELD_OUT when any run of the group scored held-out test cases, else SELECTION."""
    return HELD_OUT if any(r.test_dsc is not None for r in runs) else SELECTION


def score(record: RunRecord, cases: str) -> float | None:
    """The run's per-slice DSC on ``cases``: ``test_dsc`` for HELD_OUT, ``dsc`` for SELECTION."""
    return record.test_dsc if cases == HELD_OUT else record.dsc


def _left_out(record: RunRecord, cases: str) -> str:
    if record.dsc is not None and cases == HELD_OUT:
        why = "no held-out test DSC (its group is scored on test cases)"
    else:
        why = record.status.value.lower() + (f" - {record.status_reason}" if record.status_reason else "")
    return f"run {record.id} ({record.group}): {why}"


def with_holm(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows' fields (:class:`GroupRow`'s) with Holm-adjusted p-values added, the family being every setting of
    the same study tested against its baseline (a study's p Holm does not change when another study is
    reported beside it)."""
    for study in dict.fromkeys(row["study"] for row in rows):
        family = [row for row in rows if row["study"] == study]
        paired = statistics.holm([row["p_paired"] for row in family])
        welch = statistics.holm([row["p_welch"] for row in family])
        for row, p, w in zip(family, paired, welch, strict=True):
            row["p_paired_holm"], row["p_welch_holm"] = p, w
    return rows


def _row_fields(runs: list[RunRecord], ddof: int, baseline: BaselineScores | None, cases: str, *,
                is_baseline: bool) -> dict[str, Any]:
    """A row's numbers (GroupRow's fields but its name, axes, study and Holm's p); ``baseline``: the row it is
    compared with, if any."""
    done = sorted((r for r in runs if score(r, cases) is not None),
                  key=lambda r: (r.pretrain_seed or 0, r.seed, r.id))
    values = tuple(_scores(done, cases))
    mean = _mean(values)
    base = baseline if baseline is not None and not is_baseline else None
    compared = base is not None
    base_values = base.values if base is not None else []
    pairs = base.pairs(done, cases) if base is not None else []
    base_mean = _mean(base_values)
    return dict(
        values=values, run_ids=tuple(r.id for r in done), planned=len(runs), mean=mean,
        std=_std(values, ddof), ci95=statistics.mean_ci(values),
        delta=None if mean is None or base_mean is None else mean - base_mean,
        paired_delta=_mean([a - b for a, b in pairs]), paired_n=len(pairs), cases=cases,
        p_paired=statistics.paired_t_pvalue([a for a, _ in pairs], [b for _, b in pairs]) if pairs else None,
        p_welch=statistics.welch_t_pvalue(values, base_values) if compared else None,
        selection_mean=_mean(_scores(done, SELECTION)), baseline=is_baseline, **_flare_means(done),
    )


def _scores(runs: Iterable[RunRecord], cases: str) -> list[float]:
    """The recorded scores on ``cases`` of these runs, in their order (runs without one left out)."""
    return [float(value) for value in (score(r, cases) for r in runs) if value is not None]


@dataclass(frozen=True)
class BaselineScores:
    """A baseline row's scores on its cases, and the same indexed by what a run is paired on."""

    values: list[float]
    settings: list[str]  # the fine-tuning settings its runs have (in a sweep), sorted
    by_pair: dict[tuple[Any, ...], float]

    @classmethod
    def of(cls, baseline: list[RunRecord], cases: str) -> BaselineScores:
        settings = sorted({name for r in baseline for name in r.point})
        by_pair = {grouping.pair_key(r, settings): value for r in baseline if (value := score(r, cases)) is not None}
        return cls(_scores(baseline, cases), settings, by_pair)

    def pairs(self, done: list[RunRecord], cases: str) -> list[tuple[float, float]]:
        """(run, baseline) scores for each run with a baseline fine-tune of the same fine-tune seed (same data
        order and init) and, in a sweep, the same value of each setting the baseline's runs have (their
        fine-tuning settings)."""
        return [(value, self.by_pair[key]) for r in done
                if (key := grouping.pair_key(r, self.settings)) in self.by_pair
                and (value := score(r, cases)) is not None]


def _flare_means(done: list[RunRecord]) -> dict[str, Any]:
    """FLARE 2022's DSC and NSD, each the mean over the runs that recorded it, and the cases it scored."""
    scored = [r for r in done if r.flare_dsc is not None]
    parts = sorted({r.flare_part for r in scored if r.flare_part})
    return {"flare_dsc": _mean([float(r.flare_dsc or 0.0) for r in scored]),
            "flare_nsd": _mean([float(r.flare_nsd) for r in scored if r.flare_nsd is not None]),
            "flare_n": len(scored), "flare_part": "+".join(parts) or None}


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _std(values: Sequence[float], ddof: int) -> float | None:
    if len(values) - ddof <= 0:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - ddof))


# ---- rendering (plain text formats; the terminal table is rich, in the CLI) ----

def _fmt(value: float | None, digits: int = 3, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


MAX_VALUE_COLUMNS = 8  # beyond this many runs per group, tables show the first ones and "+N more"


def row_cells(row: GroupRow, max_values: int, optional: Sequence[str] = ()) -> list[str]:
    """The cells under :func:`header` (same ``optional`` columns) — shared by every format."""
    mean_std = "-" if row.mean is None else f"{row.mean:.3f} ± {_fmt(row.std)}"
    shown = min(max_values, MAX_VALUE_COLUMNS)
    values = [_fmt(v) for v in row.values[:shown]] + [""] * max(0, shown - row.n)
    if max_values > MAX_VALUE_COLUMNS:
        values.append(f"+{row.n - shown} more" if row.n > shown else "")
    n = f"{row.n}" if row.complete else f"{row.n}/{row.planned}"
    ci = "-" if row.ci95 is None else f"[{row.ci95[0]:.3f}, {row.ci95[1]:.3f}]"
    paired = "-" if row.paired_delta is None else f"{row.paired_delta:+.3f} ({row.paired_n})"
    extra = {"selection DSC": _fmt(row.selection_mean), "FLARE DSC": _flare_cell(row.flare_dsc, row),
             "FLARE NSD": _flare_cell(row.flare_nsd, row)}
    return [row.group, mean_std, CASES_LABEL[row.cases], *values, n, _fmt(row.delta, signed=True), ci, paired,
            format_p(row.p_paired), format_p(row.p_paired_holm), *[extra[name] for name in optional]]


def header(max_values: int, optional: Sequence[str] = ()) -> list[str]:
    """Column names; ``optional`` adds some of OPTIONAL_COLUMNS (see :func:`optional_columns`)."""
    shown = min(max_values, MAX_VALUE_COLUMNS)
    more = ["…"] if max_values > MAX_VALUE_COLUMNS else []
    return ["group", "mean ± std", "cases", *[f"DSC {i}" for i in range(1, shown + 1)], *more, "n", "Δ baseline",
            "95% CI", "paired Δ (n)", "p", "p Holm", *optional]


OPTIONAL_COLUMNS = ("selection DSC", "FLARE DSC", "FLARE NSD")


def optional_columns(report: Report) -> tuple[str, ...]:
    """The columns worth showing for this report: the selection cases' DSC next to a held-out number, FLARE's."""
    present = {"selection DSC": any(row.cases == HELD_OUT for row in report.rows),
               "FLARE DSC": any(row.flare_dsc is not None for row in report.rows),
               "FLARE NSD": any(row.flare_nsd is not None for row in report.rows)}
    return tuple(name for name in OPTIONAL_COLUMNS if present[name])


def table(report: Report) -> tuple[list[str], list[list[str]]]:
    """Header and cells of every row, with the optional columns this report has."""
    optional = optional_columns(report)
    return (header(report.max_values, optional),
            [row_cells(row, report.max_values, optional) for row in report.rows])


def format_p(p: float | None) -> str:
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _flare_cell(value: float | None, row: GroupRow) -> str:
    return "-" if value is None else f"{value:.3f} ({row.flare_part}, n={row.flare_n})"


def legend_lines(report: Report) -> list[str]:
    """What the cases and p columns mean, for the kinds this report shows."""
    kinds = {row.cases for row in report.rows}
    lines = []
    if SELECTION in kinds:
        lines.append("cases: selection = per-slice DSC on the validation cases, which also selected the checkpoint")
    if HELD_OUT in kinds:
        lines.append("cases: held-out test = per-slice DSC on test cases that never influenced training or selection")
    tested = sum(row.p_paired is not None for row in report.rows)
    if tested:
        family = " (each study its own family)" if len(report.studies) > 1 else ""
        lines.append("p: two-sided paired t-test against the baseline fine-tune with the same seed; "
                     f"p Holm: Holm's adjustment over the {tested} setting(s) tested{family}")
    return lines


def footer_lines(report: Report) -> list[str]:
    lines = legend_lines(report) + list(report.footer)
    if report.left_out:
        lines.append(f"left out ({len(report.left_out)} fine-tune(s) without a DSC):")
        lines += [f"  {line}" for line in report.left_out[:20]]
        if len(report.left_out) > 20:
            lines.append(f"  ... and {len(report.left_out) - 20} more")
    return lines


def to_markdown(report: Report) -> str:
    head, cells = table(report)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    footer = footer_lines(report)
    if footer:
        lines += ["", *[f"> {line}" for line in footer]]
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ("group", "mean", "std", "ddof", "n", "planned", "delta_baseline", "ci95_low", "ci95_high",
               "paired_delta", "paired_n", "values", "run_ids", "cases", "metric", "p_paired", "p_paired_holm",
               "p_welch", "p_welch_holm", "selection_mean", "flare_dsc", "flare_nsd", "flare_n", "flare_part")


def to_csv(report: Report) -> str:
    """Full precision; ``cases`` is "val" (selection) or "test" (held-out), ``metric`` the column averaged.

    A report by sweep axes, or of several studies, ends each line with ``study`` and the row's value on each
    ``--by`` axis (empty where the row has none), after the thesis table's columns (which keep their places).
    """
    labelled = report.by != (INTERVAL,) or len(report.studies) > 1
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, *(("study", *report.by) if labelled else ())])
    for row in report.rows:
        low, high = row.ci95 if row.ci95 else (None, None)
        axes = [row.study, *(_csv_value(row.axes.get(axis)) for axis in report.by)] if labelled else []
        writer.writerow([row.group, row.mean, row.std, report.ddof, row.n, row.planned, row.delta, low, high,
                         row.paired_delta, row.paired_n, " ".join(f"{v:.6f}" for v in row.values),
                         " ".join(row.run_ids), row.cases, "test_dsc" if row.cases == HELD_OUT else "dsc",
                         row.p_paired, row.p_paired_holm, row.p_welch, row.p_welch_holm, row.selection_mean,
                         row.flare_dsc, row.flare_nsd, row.flare_n, row.flare_part, *axes])
    return buffer.getvalue()


def _csv_value(value: Any) -> Any:
    """A swept value as a CSV cell: lists as the study file writes them, None as empty."""
    return format_value(value) if isinstance(value, list | tuple) else value


def to_latex(report: Report) -> str:
    """A ``tabular`` for a paper: compiles with plain pdflatex (no package beyond the kernel)."""
    head, cells = table(report)
    lines = [r"\begin{tabular}{l" + "c" * (len(head) - 1) + "}", r"\hline",
             " & ".join(latex_cell(h) for h in head) + r" \\", r"\hline"]
    for row in cells:
        lines.append(" & ".join(latex_cell(c) for c in row) + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    lines += [f"% {line}" for line in footer_lines(report)]
    return "\n".join(lines) + "\n"


_LATEX = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "Δ": r"$\Delta$",
    "…": r"\ldots{}", "<": r"$<$", ">": r"$>$",
}


def latex_cell(text: str) -> str:
    """One table cell as LaTeX: special characters escaped, ± and Δ as math.

    A cell that starts with "[" is braced: after the previous row's ``\\`` LaTeX would read "[0, 0]"
    as the optional row-spacing argument ("Illegal unit of measure").
    """
    escaped = "".join(_LATEX.get(char, char) for char in text)
    return "{" + escaped + "}" if escaped.startswith("[") else escaped
