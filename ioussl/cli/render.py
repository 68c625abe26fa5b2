"""Rendering service results for the terminal (rich) or for scripts (JSON, CSV, markdown, LaTeX)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ioussl.plan.sweep import format_value, point_text
from ioussl.track.requeues import requeue_summary

if TYPE_CHECKING:
    from rich.progress import TaskID

    from ioussl.plan.importing import ImportOutcome
    from ioussl.plan.service import PlanOutcome
    from ioussl.registry.repo import RunRecord
    from ioussl.report.service import ReportOutcome
    from ioussl.report.tables import Report
    from ioussl.track.progress import LiveProgress, StatusView

# Piped output (logs, CI) gets a wide fixed width instead of rich's 80 columns, so tables do not wrap.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)

def _styles() -> dict[str, str]:
    from ioussl.status import RunStatus as S

    return {S.PLANNED: "dim", S.SUBMITTING: "yellow", S.PENDING: "yellow", S.RUNNING: "cyan", S.COMPLETED: "green",
            S.FAILED: "red", S.TIMEOUT: "red", S.CANCELLED: "magenta", S.BLOCKED: "red", S.LOST: "red",
            S.INVALID: "red", S.INTERRUPTED: "yellow"}


STATUS_STYLE = _styles()  # one entry per RunStatus (the vocabulary lives in status.py)


def plan_outcome(outcome: PlanOutcome) -> None:
    verb = "would add" if outcome.dry_run else "added"
    new_pre = sum(r.stage == "pretrain" for r in outcome.new)
    console.print(
        f"study [bold]{escape(outcome.study)}[/]: {verb} {len(outcome.new)} run(s) "
        f"({new_pre} pretrain, {len(outcome.new) - new_pre} finetune); {len(outcome.existing)} already planned"
        + (f"; resources updated on {outcome.resources_updated} unsubmitted run(s)"
           if outcome.resources_updated else "")
    )
    _plan_size(outcome)
    if outcome.detectable is not None:
        console.print(outcome.detectable.line(), markup=False, soft_wrap=True)
    elif outcome.power_note:
        console.print(outcome.power_note, markup=False, soft_wrap=True)
    _plan_changes(outcome)
    for warning in outcome.warnings:
        console.print(f"warning: {warning}", markup=False, soft_wrap=True)
    if len(outcome.new) > SUMMARY_ABOVE:
        _plan_per_axis_value(outcome)
    elif outcome.new:
        table = Table("run", "stage", "group", "pretrain seed", "seed", "parent", *(["point"] if outcome.axes else []))
        for run in outcome.new:
            point = [escape(point_text(run.point)) if run.point else "-"] if outcome.axes else []
            table.add_row(run.key, run.stage, escape(run.group), _opt(run.pretrain_seed), str(run.seed),
                          run.parent_key or "-", *point)
        console.print(table)


def _plan_changes(outcome: PlanOutcome) -> None:
    """Overrides, runs brought back from the archive, and recorded runs the study file no longer plans."""
    if outcome.overrides:
        console.print("overrides (recorded with the study): " + ", ".join(outcome.overrides), markup=False,
                      soft_wrap=True)
    would = "would be " if outcome.dry_run else ""
    if outcome.restored:
        console.print(f"{len(outcome.restored)} archived run(s) planned again: {would}restored", markup=False)
    if outcome.pruned:
        console.print(f"{len(outcome.pruned)} run(s) no longer in the study file: {would}archived (hidden from "
                      "status and report, kept; `ioussl archive --restore` brings them back)", markup=False)
    if outcome.stale:
        console.print(f"{len(outcome.stale)} recorded run(s) are no longer in the study file and still show in "
                      "status and report: `ioussl plan grid ... --prune` archives them", markup=False)


def _plan_size(outcome: PlanOutcome) -> None:
    """The sweep's axes, the study's runs per stage, and the GPU-hours its new runs request."""
    for name, values in outcome.axes.items():
        shown = ", ".join(format_value(v) for v in values)
        console.print(f"axis {name} ({len(values)}): {shown}", markup=False, soft_wrap=True)
    total = outcome.counts(outcome.new + outcome.existing)
    hours = {stage: n * outcome.gpu_hours_per_run.get(stage, 0.0) for stage, n in outcome.counts(outcome.new).items()}
    size = (f"runs per stage: {total['pretrain']:,} pretrain, {total['finetune']:,} finetune "
            f"({sum(total.values()):,} in the study)")
    if not outcome.new or sum(hours.values()) > 0:
        size += (f"; GPU-hours requested by the {len(outcome.new):,} new: {sum(hours.values()):,.1f} "
                 f"(pretrain {hours['pretrain']:,.1f}, finetune {hours['finetune']:,.1f})")
    else:  # a CPU study (gpus = 0): GPU-hours would be a meaningless 0.0
        size += f"; the {len(outcome.new):,} new run(s) request no GPU"
    console.print(size, markup=False, soft_wrap=True)


def _plan_per_axis_value(outcome: PlanOutcome) -> None:
    """New runs per interval and per axis value (a list of thousands of runs reads worse than this)."""
    counts: dict[str, dict[str, dict[str, int]]] = {"interval": {}}
    counts.update({axis: {format_value(v): {"pretrain": 0, "finetune": 0} for v in values}
                   for axis, values in outcome.axes.items()})
    for run in outcome.new:
        for axis, value in [("interval", run.group), *((k, format_value(v)) for k, v in run.point.items())]:
            counts[axis].setdefault(value, {"pretrain": 0, "finetune": 0})[run.stage] += 1
    table = Table("axis", "value", "pretrain", "finetune", title=f"{len(outcome.new):,} new runs per axis value")
    for axis, values in counts.items():
        for value, row in values.items():
            table.add_row(escape(axis), escape(value), str(row["pretrain"]), str(row["finetune"]))
        table.add_section()
    console.print(table)


SUMMARY_ABOVE = 400  # rows; past this a per-group summary reads better (and renders 30x faster) than a list


def status_table(records: Sequence[RunRecord], show_all: bool = False,
                 live: Mapping[str, LiveProgress] | None = None) -> None:
    """One row per run, grouped (by study too when several are shown); running runs with ``live`` progress get
    epoch, step, loss or validation DSC, throughput and ETA columns; then one line of counts per state.

    Narrow terminals keep every state readable: below ``WIDE_COLUMNS`` the optional columns (pretrain seed, job,
    tries, the live ones) are left out and each reason gets a line under the table instead of a column.
    """
    if not records:
        console.print("no runs match")
        return
    if len(records) > SUMMARY_ABOVE and not show_all:
        status_summary(records)
        if live:
            running_table(records, live)
        console.print(state_counts(records), markup=False)
        return
    live = live or {}
    wide = console.width >= WIDE_COLUMNS
    several = len({r.study for r in records}) > 1
    extra = LIVE_COLUMNS if wide and any(r.id in live for r in records) else ()
    rows, headings = _status_rows(records, live, wide, extra, several)
    names = ["run", "stage", *(["pre seed"] if wide else []), "seed", "state", *(["job", "tries"] if wide else []),
             "elapsed", *extra, "val DSC"]
    # Every column as wide as its widest cell, so nothing but the reason is ever cut; the reason gets the rest
    # of the line (rich would otherwise shrink every column and print "PL…").
    widths = [max([len(name)] + [len(_plain(row[i])) for row in rows if row]) for i, name in enumerate(names)]
    # Group labels head their blocks in the "run" column: as wide as the longest (a longer one folds).
    widths[0] = max(widths[0], min(LABEL_WIDTH, max(len(h) for h in headings if h is not None)))
    room = console.width - sum(widths) - 3 * (len(names) + 1) - 1
    table = Table(title="runs")
    for name, width in zip(names, widths, strict=True):
        table.add_column(name, no_wrap=name != "run", width=width, overflow="fold")
    if wide and room >= MIN_REASON:
        table.add_column("reason", no_wrap=True, overflow="ellipsis", width=min(room, REASON_WIDTH))
    for row, heading in zip(rows, headings, strict=True):
        if heading is not None:
            if table.row_count:
                table.add_section()
            table.add_row(f"[bold]{escape(heading)}[/]", *[""] * (len(table.columns) - 1))
            continue
        table.add_row(*row[:len(table.columns)])
    console.print(table)
    console.print(state_counts(records), markup=False)
    for record in [r for r in records if r.requeue_reasons][:20]:
        console.print(f"run {record.id} {requeue_summary(record.requeue_reasons)}", markup=False, soft_wrap=True)
    invalid = [record for record in records if record.status.value == "INVALID"]
    for record in invalid[:20]:
        console.print(f"run {record.id} INVALID: {record.status_reason}", markup=False, soft_wrap=True)
    if not wide:  # no room for a reason column: each reason on a line of its own, cut to the terminal
        told = [r for r in records if _reason(r) and r.status.value != "INVALID"]
        for record in told[:20]:
            line = f"run {record.id} {record.status.value}: {_reason(record)}"
            console.print(line if len(line) <= console.width else line[:console.width - 1] + "…", markup=False)
        if len(told) > 20:
            console.print(f"... and {len(told) - 20} more reasons: ioussl status --json", markup=False)
    if any(record.imported for record in records):
        console.print("* imported: the result was obtained outside ioussl (see ioussl status --json)")


def _status_rows(records: Sequence[RunRecord], live: Mapping[str, LiveProgress], wide: bool,
                 extra: Sequence[str], several: bool) -> tuple[list[list[str]], list[str | None]]:
    """The table's cells (markup) per run, with a heading (study and group) before each block."""
    rows: list[list[str]] = []
    headings: list[str | None] = []
    block = None
    for record in records:
        if (record.study, record.group) != block:
            block = (record.study, record.group)
            headings.append(f"{record.study}: {record.group}" if several else record.group)
            rows.append([])
        style = STATUS_STYLE.get(record.status.value, "")
        progress = live.get(record.id)
        rows.append([
            record.id, record.stage, *([_opt(record.pretrain_seed)] if wide else []), str(record.seed),
            f"[{style}]{record.status.value}[/]" + ("*" if record.imported else ""),
            *([record.job_id or "-", _tries(record)] if wide else []), _run_elapsed(record, progress),
            *(_live_cells(progress) if extra else ()),
            "-" if record.dsc is None else f"{record.dsc:.3f}",
            escape(_reason(record)),
        ])
        headings.append(None)
    return rows, headings


def _plain(cell: str) -> str:
    from rich.text import Text

    return Text.from_markup(cell).plain


WIDE_COLUMNS = 110  # narrower terminals get the essential columns only
LABEL_WIDTH = 28
MIN_REASON = 8
REASON_WIDTH = 60
QUIET_REASONS = frozenset({"PLANNED", "COMPLETED"})  # their reason says nothing a user needs at a glance


def _reason(record: RunRecord) -> str:
    """The run's status reason on one line ("" where it says nothing more than the state)."""
    if record.status.value in QUIET_REASONS or not record.status_reason:
        return ""
    return " ".join(record.status_reason.split())


def state_counts(records: Sequence[RunRecord]) -> str:
    """"5 runs: 2 completed, 1 running, 2 planned" (states in the order of the status vocabulary)."""
    counts: dict[str, int] = {}
    for record in records:
        counts[record.status.value] = counts.get(record.status.value, 0) + 1
    ordered = [state for state in STATUS_STYLE if state in counts] + sorted(set(counts) - set(STATUS_STYLE))
    return f"{len(records)} run(s): " + ", ".join(f"{counts[state]} {state.lower()}" for state in ordered)


LIVE_COLUMNS = ("epoch", "step", "loss|val DSC", "speed", "ETA")


def _tries(record: RunRecord) -> str:
    """Attempts, and the latest one's requeues (same job, resumed): "1 +2rq"."""
    return str(record.attempts) + (f" +{len(record.requeue_reasons)}rq" if record.requeue_reasons else "")
RUNNING_SHOWN = 50  # rows of the running table under a summary


def running_table(records: Sequence[RunRecord], live: Mapping[str, LiveProgress]) -> None:
    """The running runs of a large registry, with their live columns (the summary has no rows for them)."""
    running = [r for r in records if r.id in live]
    table = Table("run", "study", "group", "stage", "elapsed", *LIVE_COLUMNS,
                  title=f"running: {len(running)} with live progress")
    for record in running[:RUNNING_SHOWN]:
        progress = live[record.id]
        table.add_row(record.id, escape(record.study), escape(record.group), record.stage,
                      _run_elapsed(record, progress), *_live_cells(progress))
    console.print(table)
    if len(running) > RUNNING_SHOWN:
        console.print(f"... and {len(running) - RUNNING_SHOWN} more (narrow with --study or --interval)")


def status_view(view: StatusView, show_all: bool = False) -> None:
    """The status table, then what needs a user: fine-tunes nobody submitted, running runs without progress."""
    status_table(view.records, show_all=show_all, live=view.live)
    if view.waiting:
        shown = ", ".join(view.waiting[:8]) + (" ..." if len(view.waiting) > 8 else "")
        console.print(f"{len(view.waiting)} fine-tune(s) wait for `ioussl submit`: their pretrain completed but "
                      f"nothing submitted them ({shown}); a `submit --executor local` still running starts "
                      "them as slots free", markup=False, soft_wrap=True)
    for line in view.problems[:20]:
        console.print(line, markup=False, soft_wrap=True)


def _live_cells(progress: LiveProgress | None) -> tuple[str, ...]:
    if progress is None:
        return ("",) * len(LIVE_COLUMNS)
    if progress.stage == "pretrain":
        value = "-" if progress.loss is None else f"loss {progress.loss:.4f}"
    else:
        value = "-" if progress.val_dsc is None else f"val {progress.val_dsc:.3f}"
    speed = "-" if progress.items_per_s is None else f"{progress.items_per_s:,.1f} {progress.unit}"
    return (f"{progress.epoch}/{progress.epochs}", f"{progress.step:,}/{progress.steps_total:,}", value, speed,
            "-" if progress.eta_s is None else _elapsed(progress.eta_s))


def _run_elapsed(record: RunRecord, progress: LiveProgress | None) -> str:
    """The attempt's time so far: the scheduler's start, else (not reported yet) the job's own clock."""
    if record.elapsed_s is None and progress is not None:
        return _elapsed(progress.elapsed_s)
    return _elapsed(record.elapsed_s)


def status_summary(records: Sequence[RunRecord]) -> None:
    """Counts per (study, group, stage) and state, for registries too large to list row by row."""
    counts: dict[tuple[str, str, str], dict[str, int]] = {}
    for record in records:
        row = counts.setdefault((record.study, record.group, record.stage), {})
        row[record.status.value] = row.get(record.status.value, 0) + 1
    states = [s for s in STATUS_STYLE if any(s in row for row in counts.values())]
    table = Table("study", "group", "stage", *states, "total", title=f"{len(records)} runs (summary)")
    for (study, group, stage), row in counts.items():
        cells = [str(row.get(s, "")) for s in states]
        table.add_row(escape(study), escape(group), stage, *cells, str(sum(row.values())))
    console.print(table)
    if any(record.point for record in records):
        status_per_axis_value(records)
    console.print("list every run with --all, or narrow with --study, --stage, --state or --interval")


def status_per_axis_value(records: Sequence[RunRecord]) -> None:
    """A sweep's runs per (study, swept setting, value) and state: which corner of a sweep lags or fails."""
    from ioussl.report.grouping import hashable, natural_order

    # Runs that share a point share its object (repo.JsonTexts): count those first, then spread over the axes.
    same: dict[tuple[str, int, str], tuple[Mapping[str, Any], int]] = {}
    for record in records:
        seen = (record.study, id(record.point), record.status.value)
        point, n = same.get(seen, (record.point, 0))
        same[seen] = (point, n + 1)
    counts: dict[tuple[str, str], dict[object, dict[str, int]]] = {}
    for (study, _, state), (point, n) in same.items():
        for axis, value in point.items():
            row = counts.setdefault((study, axis), {}).setdefault(hashable(value), {})
            row[state] = row.get(state, 0) + n
    # Axes as the study file lists them: a fine-tune of a pretrain has every axis, in file order.
    order = {axis: i for i, axis in enumerate(max(records, key=lambda r: len(r.point)).point)}
    states = [s for s in STATUS_STYLE if any(s in row for values in counts.values() for row in values.values())]
    table = Table("study", "axis", "value", *states, "total", title="runs per swept value")
    for study, axis in sorted(counts, key=lambda k: (k[0], order.get(k[1], len(order)), k[1])):
        values = counts[(study, axis)]
        for value in sorted(values, key=natural_order):
            row = values[value]
            table.add_row(escape(study), escape(axis), escape(format_value(value)),
                          *[str(row.get(s, "")) for s in states], str(sum(row.values())))
        table.add_section()
    console.print(table)


def status_json(records: Sequence[RunRecord], live: Mapping[str, LiveProgress] | None = None,
                waiting: Sequence[str] = ()) -> None:
    live, waiting_ids = live or {}, set(waiting)
    rows = [
        {
            "id": r.id, "study": r.study, "stage": r.stage, "group": r.group, "i_min": r.i_min, "i_max": r.i_max,
            "random_crop": r.random_crop, "pretrain_seed": r.pretrain_seed, "seed": r.seed, "parent": r.parent_id,
            "status": r.status.value, "reason": r.status_reason, "job_id": r.job_id, "attempts": r.attempts,
            "elapsed_s": r.elapsed_s, "dsc": r.dsc, "dsc_3d": r.dsc_3d, "imported": r.imported,
            "run_dir": r.run_dir, "test_dsc": r.test_dsc, "flare_dsc": r.flare_dsc, "flare_nsd": r.flare_nsd,
            "flare_part": r.flare_part, "point": dict(r.point),
            "requeues": len(r.requeue_reasons), "requeue_reasons": list(r.requeue_reasons),
            "world_size": r.world_size,
            "progress": live[r.id].to_json() if r.id in live else None, "waits_for_submit": r.id in waiting_ids,
        }
        for r in records
    ]
    print(json.dumps(rows, indent=1))


def report(outcome: ReportOutcome, fmt: str, table: bool = True) -> None:
    """The report table in ``fmt`` (unless ``table`` is off), then which figures were written or skipped."""
    if table:
        report_table(outcome.report, fmt)
    if outcome.organs:
        organ_table(outcome, fmt)
    for line in [f"wrote {path}" for path in outcome.plots] + outcome.skipped:
        print(line, file=sys.stderr)  # whole lines: a path must not wrap


def report_table(report: Report, fmt: str) -> None:
    from ioussl.report import tables as fmt_report

    if fmt in ("markdown", "csv", "latex"):
        text = {"markdown": fmt_report.to_markdown, "csv": fmt_report.to_csv, "latex": fmt_report.to_latex}[fmt]
        print(text(report), end="")
        return
    # Narrow tables read better in an 80-column terminal than one wide one: the DSCs, their statistics
    # against the baseline, and (where recorded) the other scores of the same runs.
    head, cells = fmt_report.table(report)
    if len(cells) > SUMMARY_ABOVE:  # a large sweep's rows: plain columns (rich takes seconds for thousands)
        print(f"{report.study}: {_cases_label(report)} per group (std ddof={report.ddof}), {len(cells)} groups")
        print(plain_columns(head, cells), end="")
        for line in fmt_report.footer_lines(report):
            print(line)
        return
    values = head[: head.index("n") + 1]
    stats = ["group", "Δ baseline", "Δ 95% CI", "test", "p", "p Holm"]
    others = ["group", "cases", *fmt_report.optional_columns(report)]
    titles = [f"{report.study}: {_cases_label(report)} per group (std ddof={report.ddof})", "statistics",
              "other scores"]
    for title, names in zip(titles, (values, stats, others), strict=True):
        if names is others and len(others) == 2:
            continue
        part = Table(title=title)
        for name in names:
            part.add_column(name, no_wrap=True)
        for row in cells:
            part.add_row(*(escape(row[head.index(name)]) for name in names))
        console.print(part)
    for line in fmt_report.footer_lines(report):
        console.print(line, markup=False)


def organ_table(outcome: ReportOutcome, fmt: str) -> None:
    """``report --organs``: FLARE's DSC and NSD per group and organ (CSV in --format csv, else plain columns)."""
    import csv
    import io

    from ioussl.report.cases import organ_table as cells_of

    head, cells = cells_of(outcome.organs)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["group", "organ", "measure", "mean", "ci95_low", "ci95_high", "n"])
        for row in outcome.organs:
            writer.writerow([row.group, row.organ, row.measure, row.mean, *(row.ci or (None, None)), row.n])
        print("\n" + buffer.getvalue(), end="")
        return
    print("\nper organ (FLARE 2022, mean over each group's runs; 95% CI: nested bootstrap)")
    print(plain_columns(head, cells), end="")
def _cases_label(report: Report) -> str:
    """Which DSC the table holds: "val DSC" (validation cases, as `status` shows), "test DSC" (held-out test
    cases), or both (the "cases" column says which row)."""
    from ioussl.report.tables import HELD_OUT, METRICS

    kinds = {row.cases == HELD_OUT for row in report.rows}
    part = {frozenset({True}): "test", frozenset({False}): "val"}.get(frozenset(kinds), "val/test")
    return f"{part} {METRICS[report.metric]}"


def plain_columns(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned text columns, two spaces apart: a table of thousands of rows in milliseconds."""
    widths = [max(len(cell) for cell in column) for column in zip(head, *rows, strict=True)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in (head, *rows)]
    return "\n".join(lines) + "\n"


def import_outcome(outcome: ImportOutcome) -> None:
    console.print(
        f"study [bold]{escape(outcome.study)}[/]: imported {outcome.imported} result(s), "
        f"{outcome.unchanged} unchanged; "
        f"{outcome.pretrains_marked} pretrain(s) marked completed (implied by their imported fine-tunes)"
    )


def _opt(value: int | None) -> str:
    return "-" if value is None else str(value)


def _elapsed(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}"


class RunProgress:
    """A live progress bar over a study's runs (completed / total), fed with status records."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), console=console, transient=False)
        self._task: TaskID | None = None

    def __enter__(self) -> RunProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def say(self, text: str) -> None:
        self._bar.console.print(text, markup=False)

    def update(self, records: Sequence[RunRecord]) -> None:
        counts: dict[str, int] = {}
        for record in records:
            counts[record.status.value] = counts.get(record.status.value, 0) + 1
        from ioussl.status import TERMINAL

        done = sum(n for state, n in counts.items() if state in TERMINAL)
        detail = ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items()))
        if self._task is None:
            self._task = self._bar.add_task("runs", total=len(records))
        self._bar.update(self._task, completed=done, total=len(records), description=f"runs ({detail})")


class StatusLive:
    """``status --watch``: each refresh redraws the same lines of the terminal (rich Live), not a new copy."""

    def __init__(self) -> None:
        from rich.live import Live

        self._live = Live(console=console, auto_refresh=False, transient=False)

    def __enter__(self) -> StatusLive:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.stop()

    def show(self, heading: str, draw: Callable[[], None]) -> None:
        """Replace what is shown by ``heading`` and whatever ``draw`` prints (any renderer of this module)."""
        from rich.console import Group
        from rich.text import Text

        self._live.update(Group(Text(heading, style="dim"), _captured(draw)), refresh=True)


def _captured(draw: Callable[[], None]):
    """What ``draw`` prints to this module's console, as styled text: the renderers print, and a Live
    display needs one renderable (the module console is swapped for a recording one while they draw)."""
    import io

    from rich.text import Text

    global console
    shown = console
    console = Console(file=io.StringIO(), width=shown.width, color_system=cast(Any, shown.color_system),
                      force_terminal=shown.is_terminal, highlight=False)
    try:
        draw()
        text = Text.from_ansi(console.file.getvalue())  # type: ignore[attr-defined]
        text.rstrip()
        return text
    finally:
        console = shown
