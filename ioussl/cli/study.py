"""CLI: plan a study, look at it, report it, import external results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ioussl.cli.options import (
    ByOption,
    DbOption,
    DryRunOption,
    GroupOption,
    JsonOption,
    ReportFormat,
    StageOption,
    StateOption,
    StudiesOption,
    StudyOption,
    checked_stage,
    checked_states,
    command_group,
)
from ioussl.errors import ConfigError

plan_app = command_group(help="Plan runs into the registry.")
import_app = command_group(help="Import externally obtained results.")


@plan_app.command("grid")
def plan_grid(
    study_file: Annotated[Path, typer.Argument(help="Study file (TOML), e.g. jobs/thesis.toml.")],
    db: DbOption = None,
    dry_run: DryRunOption = False,
    check_data: Annotated[
        bool, typer.Option("--check-data/--no-check-data", help="Require the data store to exist now.")
    ] = True,
    max_runs: Annotated[
        int | None,
        typer.Option("--max-runs", min=1, help="Refuse a study that expands to more runs [default 5000]."),
    ] = None,
    sd: Annotated[
        str | None,
        typer.Option("--sd", metavar="<sd[,baseline_sd]>",
                     help="With --dry-run: the SD of a pretraining's mean score (and of a baseline run's), for "
                          "the smallest Δ the seeds detect at 80% power [default: the study's [report] sd]."),
    ] = None,
    sd_from: Annotated[
        str | None,
        typer.Option("--sd-from", metavar="<study>",
                     help="With --dry-run: take those SDs from an earlier study in the registry."),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", metavar="<key=value>",
                     help="Override a setting of the study file, e.g. -s pretrain.epochs=50 (repeatable; "
                          "validated as the file is, recorded with the study)."),
    ] = None,
    prune: Annotated[
        bool, typer.Option("--prune", help="Archive the recorded runs this study file no longer plans (hidden "
                                           "from status and report, kept, restorable).")
    ] = False,
) -> None:
    """Validate a study and add its grid of runs (pretrains, fine-tunes, baseline); twice adds nothing."""
    from ioussl.cli import render
    from ioussl.plan.service import plan_grid as plan

    if (sd is not None or sd_from is not None) and not dry_run:
        raise ConfigError("--sd and --sd-from size the dry run's power: give --dry-run too")
    render.plan_outcome(plan(study_file, db, dry_run=dry_run, check_data=check_data, max_runs=max_runs,
                             sd=_numbers(sd, "--sd") if sd is not None else None, sd_from=sd_from,
                             prune=prune, overrides=tuple(overrides or ())))


def _numbers(text: str, option: str) -> list[float]:
    """"0.01" or "0.01,0.005" as numbers; a one-line error otherwise."""
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"{option} takes numbers separated by commas, got {text!r}") from None


def status(
    db: DbOption = None,
    study: StudyOption = None,
    stage: StageOption = None,
    state: StateOption = None,
    group: GroupOption = None,
    as_json: JsonOption = False,
    show_all: Annotated[bool, typer.Option("--all", help="List every run even in a large registry.")] = False,
    sync: Annotated[
        bool, typer.Option("--sync/--no-sync", help="Ask SLURM first (one sacct per study); ingest run files.")
    ] = True,
    watch: Annotated[
        float | None,
        typer.Option("--watch", min=1, metavar="<seconds>",
                     help="Redraw every this many seconds, in place, until every run has ended (Ctrl-C stops)."),
    ] = None,
) -> None:
    """Show the registry's runs grouped by interval: stage, seeds, state, job id, elapsed, DSC; running runs
    add epoch, step, loss or validation DSC, speed and ETA from their run files."""
    from ioussl.cli import render
    from ioussl.cli.jobs import sync_for_status
    from ioussl.track.progress import status_view

    def fetch():
        if sync:
            sync_for_status(db, study)
        return status_view(db, study=study, stage=checked_stage(stage), statuses=checked_states(state), group=group)

    if watch is not None:
        if as_json:
            raise ConfigError("--watch redraws a table; for scripts, call status --json at your own pace")
        _watch(fetch, watch, show_all)
        return
    view = fetch()
    if as_json:
        render.status_json(view.records, view.live, view.waiting)
    else:
        render.status_view(view, show_all=show_all)


def _watch(fetch, interval: float, show_all: bool) -> None:
    """Redraw until every run in view has ended; stop (exit 1) when nothing can move without a user."""
    import functools
    import time

    from ioussl.cli import render
    from ioussl.errors import NotFound
    from ioussl.track import progress

    view = fetch()
    if view.total == 0:
        raise NotFound("nothing to watch: no runs match (an empty registry, or a study without runs: "
                       "plan one with ioussl plan grid STUDY.toml)")
    rule = progress.WatchRule(progress.WATCH_IDLE_S)
    try:
        with render.StatusLive() as live:
            while True:
                live.show(_watch_heading(view, interval), functools.partial(render.status_view, view, show_all))
                if rule.done(view, time.monotonic()):
                    break
                time.sleep(interval)
                view = fetch()
    except KeyboardInterrupt:
        return
    if view.unfinished:
        typer.echo(f"stopped watching: nothing is queued or running, and {view.unfinished} planned run(s) wait "
                   "for `ioussl submit`", err=True)
        raise typer.Exit(1)
    render.console.print(f"every run has ended ({view.total} run(s))")


def _watch_heading(view, interval: float) -> str:
    import datetime as dt

    now = dt.datetime.now().strftime("%H:%M:%S")
    return (f"{now}: {view.active} active, {view.unfinished} not ended of {view.total} run(s); "
            f"redrawn every {interval:g} s until every run has ended (Ctrl-C stops)")


def report(
    db: DbOption = None,
    study: StudiesOption = None,
    by: ByOption = None,
    table: Annotated[
        bool, typer.Option("--table/--no-table", help="Print Table 4.2: mean ± std DSC per group (--no-table: "
                                                      "only write the figures of --plot or the --html file).")
    ] = True,
    fmt: Annotated[ReportFormat, typer.Option("--format", help="Output format.")] = ReportFormat.terminal,
    ddof: Annotated[
        int, typer.Option("--ddof", min=0, max=1, help="0: population std (as the thesis), 1: sample std.")
    ] = 0,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", metavar="<dir>",
                     help="Also write PNG figures (collapse, DSC per group) into this folder."),
    ] = None,
    pairs: Annotated[
        Path | None, typer.Option("--pairs", metavar="<json>",
                                  help="Pair analysis (ioussl analyze pairs --json) to plot; needs --plot or --html.")
    ] = None,
    html: Annotated[
        Path | None,
        typer.Option("--html", metavar="<file>",
                     help="Also write the whole report as one self-contained HTML file (tables, statistics, "
                          "figures, every run, provenance; opens without network)."),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option("--metric", metavar="<dsc|flare_dsc|flare_nsd>",
                     help="The score per run: the thesis' per-slice DSC, or FLARE 2022's DSC or NSD (the ones to "
                          "publish) [default: the study file's [report] metric, else dsc]."),
    ] = None,
    test: Annotated[
        str | None,
        typer.Option("--test", metavar="<welch|cases|wilcoxon>",
                     help="Against the baseline: Welch on pretraining means, or paired by test case (t or "
                          "Wilcoxon; needs FLARE's per-case scores) [default: [report] test, else welch]."),
    ] = None,
    organs: Annotated[
        bool, typer.Option("--organs", help="Also print FLARE's DSC and NSD per group and organ, with 95% CIs.")
    ] = False,
) -> None:
    """Mean ± std per group, each run's score, n, Δ to the no-pretraining baseline with its 95% CI, and a test.

    Groups are the IoU intervals (Table 4.2), or any axes of a sweep with --by; several --study give
    their rows side by side.
    """
    from ioussl.cli import render
    from ioussl.report.service import report_study

    if pairs is not None and plot is None and html is None:
        raise ConfigError("--pairs is plotted into the --plot folder or the --html report: give one of them too")
    if not table and plot is None and html is None:
        raise ConfigError("--no-table without --plot DIR or --html FILE leaves nothing to report")
    tail = None
    if html is not None:
        from ioussl.track.logtail import reader

        tail = reader(db)  # each run's last output lines, for the HTML report's run details
    outcome = report_study(db, study, ddof=ddof, plot_dir=plot, pairs_json=pairs, html_path=html, by=by,
                           metric=metric, test=test, organs=organs, log_tail=tail)
    render.report(outcome, fmt, table=table)


@import_app.command("results")
def import_results(
    study_file: Annotated[Path, typer.Argument(help="The study the results belong to (TOML).")],
    results_csv: Annotated[
        Path, typer.Argument(help="CSV: group, pretrain_seed, seed, dsc [, dsc_3d, note, pairing (known|unknown)].")
    ],
    source: Annotated[str, typer.Option("--source", help="Where the numbers come from (kept with each result).")],
    db: DbOption = None,
    base_dir: Annotated[
        str | None, typer.Option("--base-dir", help="Record the study's relative paths against this directory.")
    ] = None,
) -> None:
    """Import per-run results obtained elsewhere, marked as imported with their source."""
    from ioussl.cli import render
    from ioussl.plan.importing import import_results as run_import

    render.import_outcome(run_import(study_file, results_csv, db, source, base_dir=base_dir))


def register(app: typer.Typer) -> None:
    app.add_typer(plan_app, name="plan")
    app.command("status")(status)
    app.command("report")(report)
    app.add_typer(import_app, name="import")
