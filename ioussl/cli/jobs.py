"""CLI: submit planned runs, retry failed ones, cancel; the sync that ``ioussl status`` runs first."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from ioussl.cli.cleanup import YesOption
from ioussl.cli.options import (
    DbOption,
    DryRunOption,
    Executor,
    ExecutorOption,
    GroupOption,
    StageOption,
    StateOption,
    StudyOption,
    checked_stage,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ioussl.cli.render import RunProgress
    from ioussl.registry.repo import RunRecord
    from ioussl.submit.service import CancelOutcome
    from ioussl.submit.submission import SubmitOutcome
    from ioussl.track.sync import SyncOutcome

RunOption = Annotated[
    list[str] | None,
    typer.Option("--run", metavar="<run id>", help="Only this run (id or unique prefix; repeatable)."),
]


def submit(
    db: DbOption = None,
    study: StudyOption = None,
    dry_run: DryRunOption = False,
    executor: ExecutorOption = Executor("auto"),
    stage: StageOption = None,
    group: GroupOption = None,
    run: RunOption = None,
    max_parallel: Annotated[
        int | None, typer.Option("--max-parallel", min=1, help="Local executor: runs at once [default 1].")
    ] = None,
) -> None:
    """Submit planned runs: one job per pretrain, its fine-tunes as one array held by afterok."""
    from ioussl.submit.interrupts import StopRequest, stop_on_signals
    from ioussl.submit.service import submit as run_submit
    from ioussl.submit.submission import RunFilter

    run_filter = RunFilter(stage=checked_stage(stage), group=group, run_ids=tuple(run or ()))
    concrete = _resolve(executor)
    with stop_on_signals(StopRequest()) as stop, LocalProgress() as bar:
        outcome = run_submit(db, study, executor=concrete, dry_run=dry_run, run_filter=run_filter,
                             max_parallel=max_parallel, progress=bar.update, stop=stop)
    render_submit(outcome)  # the executor was resolved above: no fallback line again
    exit_if_runs_failed(outcome)


def retry(
    db: DbOption = None,
    study: StudyOption = None,
    run: RunOption = None,
    state: StateOption = None,
    executor: ExecutorOption = Executor("auto"),
    dry_run: DryRunOption = False,
    yes: YesOption = False,
) -> None:
    """Resubmit FAILED, LOST or TIMEOUT runs (--state INVALID etc.) as new attempts; blocked fine-tunes follow."""
    from ioussl.cli.cleanup import confirm, ids_text
    from ioussl.cli.options import checked_states
    from ioussl.status import DEFAULT_RETRY
    from ioussl.submit.interrupts import StopRequest, stop_on_signals
    from ioussl.submit.service import retry as run_retry
    from ioussl.submit.service import retry_selection

    statuses = checked_states(state) or list(DEFAULT_RETRY)
    name, would = retry_selection(db, study, tuple(run or ()), statuses)
    if dry_run:
        typer.echo(f"study {name}: would retry {len(would)} run(s)" + (f": {ids_text(would)}" if would else ""))
        return
    if would:
        confirm("retry", would, yes)
    concrete = _resolve(executor)
    with stop_on_signals(StopRequest()) as stop, LocalProgress() as bar:
        outcome = run_retry(db, study, tuple(run or ()), statuses, executor=concrete, progress=bar.update,
                            stop=stop)
    render_submit(outcome)  # the executor was resolved above: no fallback line again
    exit_if_runs_failed(outcome)


def cancel(
    db: DbOption = None, study: StudyOption = None, run: RunOption = None, group: GroupOption = None,
    dry_run: DryRunOption = False, yes: YesOption = False,
) -> None:
    """Cancel planned, active and interrupted runs by run, interval or whole study (their jobs are cancelled
    too: scancel on SLURM, a stop signal on this machine)."""
    from ioussl.cli.cleanup import confirm
    from ioussl.submit.service import cancel as run_cancel

    planned = run_cancel(db, study, tuple(run or ()), group, dry_run=True)
    if not dry_run:
        confirm("cancel", planned.cancelled, yes)
        planned = run_cancel(db, study, tuple(run or ()), group)
    render_cancel(planned)


def _resolve(executor: Executor) -> str:
    """The concrete executor, saying first (before any progress bar) why ``auto`` runs on this machine."""
    from ioussl.backends.base import resolve_executor
    from ioussl.cli.render import console

    concrete, fell_back = resolve_executor(executor.value)
    if fell_back:
        console.print(_fell_back_line(fell_back), markup=False)
    return concrete


def _fell_back_line(why: str) -> str:
    return f"{why}: running on this machine with the local executor (--executor local)"


class LocalProgress:
    """The demo's progress bar over a study's runs, shown once the local executor's loop reports (SLURM
    submits return at once and show none)."""

    def __init__(self) -> None:
        self._bar: RunProgress | None = None

    def __enter__(self) -> LocalProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, records: Sequence[RunRecord]) -> None:
        if self._bar is None:
            from ioussl.cli.render import RunProgress

            self._bar = RunProgress().__enter__()
        self._bar.update(records)


def sync_for_status(db: str | None, study: str | None) -> SyncOutcome | None:
    """What ``ioussl status`` runs before it renders: one scheduler query per study, transitions, ingestion."""
    from ioussl.submit.service import sync_studies

    outcomes = sync_studies(db, study)
    for outcome in outcomes:
        if outcome.skipped:
            typer.echo(f"warning: {outcome.skipped}", err=True)
        for message in outcome.errors:
            typer.echo(f"warning: {message}", err=True)
    return outcomes[-1] if outcomes else None


def render_submit(outcome: SubmitOutcome) -> None:
    from ioussl.cli.render import console

    verb = "would submit" if outcome.dry_run else "submitted"
    if outcome.fell_back:
        console.print(_fell_back_line(outcome.fell_back), markup=False)
    runs = sum(len(u.run_ids) for u in outcome.units)
    if outcome.resumed:
        console.print(f"resuming {len(outcome.resumed)} interrupted run(s) from their last checkpoint", markup=False)
    for run_id in outcome.adopted:
        console.print(f"adopted the job of run {run_id} (an earlier submit was interrupted)")
    for run_id in outcome.reverted:
        console.print(f"run {run_id}: an earlier submit was interrupted before its job was complete; resubmitting")
    for unit in outcome.units:
        dependency = outcome.dependencies.get(unit.job_name)
        what = (
            "pretrain"
            if unit.stage == "pretrain"
            else (
                f"{len(unit.run_ids)} fine-tune(s)"
                + (f" of {unit.parent_id}" if unit.parent_id else ", no pretraining")
            )
        )
        jobs = ", ".join(outcome.job_ids.get(r, "-") for r in unit.run_ids) if not outcome.dry_run else ""
        tree = "  └─ " if unit.parent_id else ""
        console.print(
            f"{tree}{unit.job_name}: {what}"
            + (("  starts once its pretrain completed" if outcome.executor == "local" else f"  waits {dependency}")
               if dependency else "")
            + (f"  job {jobs}" if jobs else ""),
            markup=False,
        )
        command = outcome.commands.get(unit.job_name)
        if command:
            console.print("      " + command, soft_wrap=True, markup=False)
    for run_id, why in outcome.skipped:
        console.print(f"skipped {run_id}: {why}", markup=False)
    for message in dict.fromkeys(outcome.warnings):
        typer.echo(f"warning: {message}", err=True)
    if outcome.executor == "local":  # no sbatch and no GPU-hours on this machine: say what happened here
        console.print(f"study {outcome.study}: {verb} {runs} run(s) (local): on this machine, no sbatch",
                      markup=False)
        return
    console.print(
        f"study {outcome.study}: {verb} {runs} run(s) in {len(outcome.units)} job(s) "
        f"({outcome.executor}); {outcome.sbatch_calls} sbatch call(s); "
        f"{outcome.gpu_hours:.1f} GPU-hours requested",
        markup=False,
    )


def exit_if_runs_failed(outcome: SubmitOutcome) -> None:
    """Exit 1 when a run this (local) submit ran ended without a result: a script or CI sees it."""
    if outcome.failed:
        shown = ", ".join(f"{run_id} {status.lower()}" for run_id, status in sorted(outcome.failed.items())[:6])
        more = " ..." if len(outcome.failed) > 6 else ""
        typer.echo(f"error: {len(outcome.failed)} run(s) ended without a result ({shown}{more}); "
                   "`ioussl status` shows why, `ioussl retry` runs them again", err=True)
        raise typer.Exit(1)


def render_cancel(outcome: CancelOutcome) -> None:
    from ioussl.cli.cleanup import ids_text

    # Each executor's own word: SLURM jobs are scancelled, local ones are sent a stop signal.
    how = "stopped local job(s)" if outcome.executors == ["local"] else "scancel"
    head = "would cancel" if outcome.dry_run else "cancelled"
    typer.echo(
        f"{head} {len(outcome.cancelled)} run(s)"
        + (f" ({ids_text(outcome.cancelled)})" if outcome.dry_run else "")
        + (f"; {how} {' '.join(outcome.job_ids)}" if outcome.job_ids else "")
    )


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the root app."""
    app.command("submit")(submit)
    app.command("retry")(retry)
    app.command("cancel")(cancel)
