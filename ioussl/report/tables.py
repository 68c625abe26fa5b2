"""Table 4.2: mean ± std per group, Δ to the baseline with its own interval and a test that respects the design
(pure, no ORM, no torch).

The thesis reports the population std (ddof=0) of the four DSCs of a group (thesis protocol notes §8);
``ddof=1`` gives the sample std. A group with fewer results than planned runs is marked ``n/N``.
Groups are the IoU intervals by default (the thesis table); ``by`` groups by any axes of a sweep, and
records of several studies give rows side by side (``grouping.py``).

The metric is a choice (:data:`METRICS`): the thesis' per-slice DSC (a replication's number), or FLARE
2022's DSC or NSD (the numbers to publish). A group's number is on held-out test cases when its runs recorded
one (a split with a test part), else on the validation cases, which also selected the checkpoint
("selection cases"). Each setting is compared with its baseline row by :mod:`ioussl.report.comparison`
(Δ, its nested-bootstrap interval, one named test); Holm's correction runs over the settings of a study.
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
from ioussl.report import bootstrap, comparison, grouping, statistics
from ioussl.report.bootstrap import CaseScores
from ioussl.report.grouping import INTERVAL, GroupKey, StudyOrder

# Where a group's number comes from: the cases that selected the checkpoint, or held-out test cases.
SELECTION, HELD_OUT = "val", "test"
CASES_LABEL = {SELECTION: "selection", HELD_OUT: "held-out test"}

# What a row averages: the column name a report shows, and what it measures (docs/statistics.md).
METRICS = {"dsc": "DSC", "flare_dsc": "FLARE DSC", "flare_nsd": "FLARE NSD"}
METRIC_MEANING = {
    "dsc": "the thesis' per-slice DSC (background included, classes absent from a slice ignored, averaged "
           "over slices): a replication's number",
    "flare_dsc": "FLARE 2022's DSC: per organ and case on the original grid, mean over cases, then organs",
    "flare_nsd": "FLARE 2022's NSD (normalised surface Dice at each organ's tolerance), averaged as its DSC",
}
CaseTable = Mapping[str, Mapping[str, CaseScores]]  # run id -> metric -> its per-case scores


@dataclass(frozen=True)
class GroupRow:
    group: str
    values: tuple[float, ...]  # the metric of each completed fine-tune, ordered by (pretrain seed, seed)
    run_ids: tuple[str, ...]
    planned: int
    mean: float | None
    std: float | None
    mean_ci: tuple[float, float] | None  # the group mean's nested-bootstrap interval (None: n too small)
    delta: float | None  # mean minus the baseline's mean
    delta_ci: tuple[float, float] | None = None  # Δ's own 95% interval (nested bootstrap)
    ci_note: str = ""  # why there is no interval ("n too small (...)")
    resamples: int = 0
    cases_resampled: int = 0  # test cases the bootstrap resampled (0: runs only)
    test: str = ""  # the test that gave p, named ("Welch (pretrainings)", "paired t by case (20)")
    p: float | None = None  # two-sided, against the baseline row
    p_holm: float | None = None  # Holm-adjusted over the report's settings (of the same study)
    pairing: str = ""  # "nested": fine-tunes known to sit in their pretrainings; "unknown": imported
    units: int = 0  # independent units of the row (pretrainings, or runs)
    baseline_units: int = 0  # and of the baseline row it is compared with
    cases: str = SELECTION  # SELECTION: validation cases; HELD_OUT: held-out test cases
    metric: str = "dsc"
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
    metric: str = "dsc"
    test: str = "welch"


def build_report(records: Sequence[RunRecord], study: str, ddof: int = 0, group_order: Sequence[str] = (), *,
                 by: Sequence[str] = (INTERVAL,), orders: Mapping[str, StudyOrder] | None = None,
                 metric: str = "dsc", test: str = "welch", case_scores: CaseTable | None = None,
                 resamples: int = bootstrap.RESAMPLES, pairing_known: Iterable[str] = ()) -> Report:
    """Group fine-tunes, compute mean/std and compare each setting with its no-pretraining baseline.

    Args:
        records: the runs of one study, or of every study in ``orders``.
        study: the report's title (the study's name, or several names).
        group_order: the study's interval labels in file order (when ``orders`` is not given).
        by: the axes to group by (``grouping.resolve_by``); the default is the thesis table.
        orders: study name -> its row order; several studies give rows side by side, labelled with it.
        metric: one of :data:`METRICS`.
        test: one of ``comparison.TESTS``.
        case_scores: run id -> metric -> per-case scores (FLARE's), for case resampling and case tests.
        pairing_known: imported runs whose pretraining is known (their import said so): nested like others.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    orders = orders or {study: StudyOrder(tuple(group_order))}
    finetunes = [r for r in records if r.stage == "finetune"]
    keys = grouping.keys_of(finetunes, by)
    groups: dict[GroupKey, list[RunRecord]] = {}
    for record, key in zip(finetunes, keys, strict=True):
        groups.setdefault(key, []).append(record)
    cases = {key: group_cases(runs, metric) for key, runs in groups.items()}
    left_out = tuple(_left_out(r, cases[key], metric) for r, key in zip(finetunes, keys, strict=True)
                     if score(r, cases[key], metric) is None)
    several = len(orders) > 1
    baselines = grouping.Baselines(groups)
    context = _Context(metric, test, case_scores or {}, resamples, frozenset(pairing_known))
    fields = []
    for key in grouping.sort_keys(groups, orders):
        base_key = baselines.of(key)
        # A setting is compared with its baseline row only on the same cases (and never with itself).
        baseline = groups[base_key] if base_key is not None and cases[base_key] == cases[key] else None
        fields.append({**_row_fields(groups[key], ddof, baseline, cases[key], context, is_baseline=key.baseline),
                       "group": key.label(several), "axes": key.axes(), "study": key.study})
    # Each row is built once, Holm's p included: a sweep's report has thousands of rows, and a frozen
    # dataclass costs as much to copy with dataclasses.replace as to build.
    rows = tuple(GroupRow(**row) for row in with_holm(fields))
    return Report(study, ddof, rows, left_out, max((row.planned for row in rows), default=0),
                  by=tuple(by), studies=tuple(orders), metric=metric, test=test)


@dataclass(frozen=True)
class _Context:
    metric: str
    test: str
    case_scores: CaseTable
    resamples: int
    pairing_known: frozenset[str] = frozenset()


def group_cases(runs: Sequence[RunRecord], metric: str = "dsc") -> str:
    """HELD_OUT when any run of the group scored held-out test cases (with this metric), else SELECTION."""
    if metric == "dsc":
        return HELD_OUT if any(r.test_dsc is not None for r in runs) else SELECTION
    return HELD_OUT if any(r.flare_part == HELD_OUT for r in runs) else SELECTION


def score(record: RunRecord, cases: str, metric: str = "dsc") -> float | None:
    """The run's ``metric`` on ``cases``: for the per-slice DSC ``test_dsc`` (HELD_OUT) or ``dsc``; FLARE's
    scores only where FLARE scored those cases."""
    if metric == "dsc":
        return record.test_dsc if cases == HELD_OUT else record.dsc
    if record.flare_part != cases:
        return None
    return record.flare_dsc if metric == "flare_dsc" else record.flare_nsd


def _left_out(record: RunRecord, cases: str, metric: str = "dsc") -> str:
    if metric != "dsc" and record.status.value == "COMPLETED":
        why = f"no {METRICS[metric]} on its group's {CASES_LABEL[cases]} cases"
    elif record.dsc is not None and cases == HELD_OUT:
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
        for row, p in zip(family, statistics.holm([row.get("p") for row in family]), strict=True):
            row["p_holm"] = p
    return rows


def _row_fields(runs: list[RunRecord], ddof: int, baseline: list[RunRecord] | None, cases: str,
                context: _Context, *, is_baseline: bool) -> dict[str, Any]:
    """A row's numbers (GroupRow's fields but its name, axes, study and Holm's p); ``baseline``: the runs of
    the row it is compared with, if any."""
    metric = context.metric
    done = sorted((r for r in runs if score(r, cases, metric) is not None),
                  key=lambda r: (r.pretrain_seed or 0, r.seed, r.id))
    members = _members(done, cases, context)
    values = tuple(m.value for m in members)
    mean = _mean(values)
    fields: dict[str, Any] = dict(
        values=values, run_ids=tuple(r.id for r in done), planned=len(runs), mean=mean,
        std=_std(values, ddof), mean_ci=_mean_ci(members), delta=None, cases=cases, metric=metric,
        units=len({m.unit for m in members}), selection_mean=_mean(_scores(done, SELECTION)),
        baseline=is_baseline, **_flare_means(done),
    )
    compared = _members([r for r in baseline if score(r, cases, metric) is not None], cases, context) \
        if baseline is not None and not is_baseline else []
    if members and compared:
        fields.update(comparison.compare(members, compared, test=context.test, resamples=context.resamples))
    elif is_baseline and members:
        fields["pairing"] = comparison.pairing_of(members)
    return fields


def _members(done: Sequence[RunRecord], cases: str, context: _Context) -> list[comparison.Member]:
    """Each scored run as the comparison sees it: value, unit (its pretraining; a baseline run is its own),
    whether imported, and its per-case scores of the metric where recorded."""
    return [comparison.Member(r.id, float(score(r, cases, context.metric)), r.parent_id or r.id,  # type: ignore[arg-type]
                              r.imported and r.id not in context.pairing_known,
                              context.case_scores.get(r.id, {}).get(context.metric))
            for r in done]


def _mean_ci(members: Sequence[comparison.Member]) -> tuple[float, float] | None:
    """The group mean's nested-bootstrap interval (pretrainings, fine-tunes within them), inside [0, 1] by
    construction; None below bootstrap.MIN_UNITS units."""
    if not members:
        return None
    design = comparison.design_of(members, comparison.pairing_of(members))
    seed = bootstrap.seed_for(*sorted(m.run_id for m in members))
    if len({m.unit for m in members}) < bootstrap.MIN_UNITS:
        return None
    return bootstrap.mean_interval(design, seed=seed)


def _scores(runs: Iterable[RunRecord], cases: str) -> list[float]:
    """The recorded per-slice DSCs on ``cases`` of these runs, in their order (runs without one left out)."""
    return [float(value) for value in (score(r, cases) for r in runs) if value is not None]


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
    extra = {"selection DSC": _fmt(row.selection_mean), "FLARE DSC": _flare_cell(row.flare_dsc, row),
             "FLARE NSD": _flare_cell(row.flare_nsd, row)}
    return [row.group, mean_std, CASES_LABEL[row.cases], *values, n, _fmt(row.delta, signed=True),
            delta_ci_cell(row), row.test or "-", format_p(row.p), format_p(row.p_holm),
            *[extra[name] for name in optional]]


def delta_ci_cell(row: GroupRow) -> str:
    """Δ's interval, "n too small" where the row has too few units for one, "-" where nothing is compared."""
    if row.delta_ci is not None:
        return f"[{row.delta_ci[0]:+.3f}, {row.delta_ci[1]:+.3f}]"
    return "n too small" if row.ci_note else "-"


def header(max_values: int, optional: Sequence[str] = (), metric: str = "dsc") -> list[str]:
    """Column names; ``optional`` adds some of OPTIONAL_COLUMNS (see :func:`optional_columns`)."""
    shown = min(max_values, MAX_VALUE_COLUMNS)
    more = ["…"] if max_values > MAX_VALUE_COLUMNS else []
    return ["group", "mean ± std", "cases", *[f"{METRICS[metric]} {i}" for i in range(1, shown + 1)], *more, "n",
            "Δ baseline", "Δ 95% CI", "test", "p", "p Holm", *optional]


OPTIONAL_COLUMNS = ("selection DSC", "FLARE DSC", "FLARE NSD")


def optional_columns(report: Report) -> tuple[str, ...]:
    """The columns worth showing for this report: the selection cases' DSC next to a held-out number, FLARE's
    (not the one the report's metric already is)."""
    present = {"selection DSC": report.metric == "dsc" and any(row.cases == HELD_OUT for row in report.rows),
               "FLARE DSC": report.metric != "flare_dsc" and any(row.flare_dsc is not None for row in report.rows),
               "FLARE NSD": report.metric != "flare_nsd" and any(row.flare_nsd is not None for row in report.rows)}
    return tuple(name for name in OPTIONAL_COLUMNS if present[name])


def table(report: Report) -> tuple[list[str], list[list[str]]]:
    """Header and cells of every row, with the optional columns this report has."""
    optional = optional_columns(report)
    return (header(report.max_values, optional, report.metric),
            [row_cells(row, report.max_values, optional) for row in report.rows])


def format_p(p: float | None) -> str:
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _flare_cell(value: float | None, row: GroupRow) -> str:
    return "-" if value is None else f"{value:.3f} ({row.flare_part}, n={row.flare_n})"


def legend_lines(report: Report) -> list[str]:
    """What the metric, the cases, Δ's interval, the tests and the pairing mean, for what this report shows."""
    kinds = {row.cases for row in report.rows}
    lines = [f"metric: {report.metric} = {METRIC_MEANING[report.metric]}"]
    if SELECTION in kinds:
        lines.append("cases: selection = the validation cases, which also selected the checkpoint")
    if HELD_OUT in kinds:
        lines.append("cases: held-out test = test cases that never influenced training or selection")
    compared = [row for row in report.rows if row.delta is not None]
    with_ci = [row for row in compared if row.delta_ci is not None]
    if compared:
        resamples = max((row.resamples for row in with_ci), default=bootstrap.RESAMPLES)
        cases = max((row.cases_resampled for row in with_ci), default=0)
        what = "pretrainings, the fine-tunes within them" + (f" and the {cases} test cases" if cases else "")
        lines.append(f"Δ baseline: difference of the group means; Δ 95% CI: percentile interval of a nested "
                     f"bootstrap ({resamples:,} resamples of {what}); n too small: fewer than "
                     f"{bootstrap.MIN_UNITS} independent units (pretrainings, or baseline runs) a side")
        few = [row for row in with_ci if min(row.units, row.baseline_units) < bootstrap.NOMINAL_UNITS]
        if few:
            lines.append(f"Δ 95% CI of {len(few)} row(s) rests on fewer than {bootstrap.NOMINAL_UNITS} units a side: "
                         "in simulated studies such intervals cover the true Δ less often than 95% (89% with 3 "
                         "pretrainings and 6 baseline runs; docs/statistics.md)")
    tested = [row for row in report.rows if row.p is not None]
    if tested:
        family = " (each study its own family)" if len(report.studies) > 1 else ""
        names = sorted({row.test for row in tested})
        lines.append(f"p: two-sided, the test each row names ({'; '.join(names)}); p Holm: Holm's adjustment "
                     f"over the {len(tested)} setting(s) tested{family}")
    if any(row.pairing == comparison.NESTED and row.p is not None for row in report.rows):
        lines.append("pairing: each fine-tune within its pretraining, each baseline run on its own (never by seed "
                     "number)")
    if any(row.pairing == comparison.UNKNOWN for row in report.rows):
        lines.append("pairing unknown: imported results do not say which fine-tune belongs to which pretraining; "
                     "their fine-tunes are compared unpaired (Welch t over runs), which treats them as independent")
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


CSV_COLUMNS = ("group", "mean", "std", "ddof", "n", "planned", "delta_baseline", "delta_ci95_low",
               "delta_ci95_high", "ci_note", "resamples", "test", "p", "p_holm", "pairing", "units", "values",
               "run_ids", "cases", "metric", "mean_ci95_low", "mean_ci95_high", "selection_mean", "flare_dsc",
               "flare_nsd", "flare_n", "flare_part")


def to_csv(report: Report) -> str:
    """Full precision; ``cases`` is "val" (selection) or "test" (held-out), ``metric`` the score averaged
    (``dsc``: the per-slice DSC, ``test_dsc`` on held-out cases; ``flare_dsc``, ``flare_nsd``).

    A report by sweep axes, or of several studies, ends each line with ``study`` and the row's value on each
    ``--by`` axis (empty where the row has none), after the thesis table's columns (which keep their places).
    """
    labelled = report.by != (INTERVAL,) or len(report.studies) > 1
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, *(("study", *report.by) if labelled else ())])
    for row in report.rows:
        low, high = row.delta_ci if row.delta_ci else (None, None)
        mean_low, mean_high = row.mean_ci if row.mean_ci else (None, None)
        metric = "test_dsc" if row.metric == "dsc" and row.cases == HELD_OUT else row.metric
        axes = [row.study, *(_csv_value(row.axes.get(axis)) for axis in report.by)] if labelled else []
        writer.writerow([row.group, row.mean, row.std, report.ddof, row.n, row.planned, row.delta, low, high,
                         row.ci_note, row.resamples, row.test, row.p, row.p_holm, row.pairing, row.units,
                         " ".join(f"{v:.6f}" for v in row.values), " ".join(row.run_ids), row.cases, metric,
                         mean_low, mean_high, row.selection_mean, row.flare_dsc, row.flare_nsd, row.flare_n,
                         row.flare_part, *axes])
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
    # Comments in ASCII words: pdflatex without inputenc reads a raw Δ or ± even there.
    lines += ["% " + line.replace("Δ", "Delta").replace("±", "+/-") for line in footer_lines(report)]
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
