"""CLI: reset runs to PLANNED, archive or restore them; the confirmation every destructive command asks.

``cancel``, ``retry``, ``reset`` and ``archive`` show what they would change with ``--dry-run``, and ask before
they change it when run in a terminal (``--yes`` skips the question; without a terminal, as in a script, they
do not ask).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated

import typer

from ioussl.cli.options import DbOption, DryRunOption, GroupOption, StateOption, StudyOption

if TYPE_CHECKING:
    from ioussl.submit.lifecycle import Selection

YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before changing runs.")]
RunsOption = Annotated[
    list[str] | None,
    typer.Option("--run", metavar="<run id>", help="Only this run (id or unique prefix; repeatable)."),
]
SHOWN = 8


def interactive() -> bool:
    """Whether a person can answer a question (both ends of the terminal); a script is never asked."""
    return sys.stdin.isatty() and sys.stderr.isatty()


def confirm(what: str, run_ids: Sequence[str], yes: bool) -> None:
    """Ask "<what> N run(s) (ids)? [y/N]" in a terminal unless ``yes``; a no leaves everything as it was."""
    if yes or not interactive():
        return
    if not typer.confirm(f"{what} {len(run_ids)} run(s) ({ids_text(run_ids)})?", default=False, err=True):
        typer.echo("nothing changed", err=True)
        raise typer.Exit(1)


def ids_text(run_ids: Sequence[str]) -> str:
    return ", ".join(run_ids[:SHOWN]) + (f" and {len(run_ids) - SHOWN} more" if len(run_ids) > SHOWN else "")


def reset(
    db: DbOption = None,
    study: StudyOption = None,
    run: RunsOption = None,
    group: GroupOption = None,
    state: StateOption = None,
    dry_run: DryRunOption = False,
    yes: YesOption = False,
) -> None:
    """Put runs that ended without a result back to PLANNED (their attempts stay as history); `ioussl submit`
    then starts them again. Completed runs are never reset; active ones must be cancelled first."""
    from ioussl.cli.options import checked_states
    from ioussl.submit.lifecycle import reset as run_reset

    args = (db, study, tuple(run or ()), group, checked_states(state))
    _act(lambda dry: run_reset(*args, dry_run=dry), dry_run, yes, "reset")


def archive(
    db: DbOption = None,
    study: StudyOption = None,
    run: RunsOption = None,
    group: GroupOption = None,
    state: StateOption = None,
    restore: Annotated[bool, typer.Option("--restore", help="Bring archived runs back instead.")] = False,
    dry_run: DryRunOption = False,
    yes: YesOption = False,
) -> None:
    """Hide runs from status, report and submit, keeping them (attempts, results, metrics) in the registry;
    a pretrain takes its fine-tunes along. --restore brings them back. `plan grid --prune` archives the runs
    a study file no longer plans."""
    from ioussl.cli.options import checked_states
    from ioussl.submit.lifecycle import archive as run_archive

    args = (db, study, tuple(run or ()), group, checked_states(state))
    _act(lambda dry: run_archive(*args, restore=restore, dry_run=dry), dry_run, yes,
         "restore" if restore else "archive")


def _act(call: Callable[[bool], Selection], dry_run: bool, yes: bool, verb: str) -> None:
    """Dry run first (what would change); then ask, then do it."""
    planned = call(True)
    if dry_run:
        render_selection(planned)
        return
    confirm(verb, planned.run_ids, yes)
    render_selection(call(False))


def render_selection(outcome: Selection) -> None:
    past = {"reset": "reset", "archive": "archived", "restore": "restored"}[outcome.verb]
    head = f"would {outcome.verb}" if outcome.dry_run else past
    typer.echo(f"{head} {len(outcome.run_ids)} run(s): {ids_text(outcome.run_ids)}")
    for run_id, why in outcome.refused[:SHOWN]:
        typer.echo(f"left {run_id} alone: {why}")
    if len(outcome.refused) > SHOWN:
        typer.echo(f"... and {len(outcome.refused) - SHOWN} more left alone")
    if not outcome.dry_run and outcome.verb == "reset":
        typer.echo("`ioussl submit` starts them again")
    if not outcome.dry_run and outcome.verb == "archive":
        typer.echo("hidden from status, report and submit; `ioussl archive --restore` brings them back")


def register(app: typer.Typer) -> None:
    app.command("reset")(reset)
    app.command("archive")(archive)
