"""CLI: `ioussl demo`, the whole study at tiny size on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ioussl.cli.options import DbOption, Executor, ExecutorOption


def demo(
    db: DbOption = None,
    study: Annotated[Path | None, typer.Option("--study", help="Demo study file [default jobs/demo.toml].")] = None,
    executor: ExecutorOption = Executor("auto"),
    max_parallel: Annotated[int, typer.Option("--max-parallel", min=1, help="Local runs at once.")] = 2,
) -> None:
    """Synthesise CT, preprocess, plan the scaled-down thesis grid, run it, report (resumable)."""
    from ioussl.cli import render
    from ioussl.demo import DEFAULT_STUDY, DemoSettings, run_demo
    from ioussl.errors import Interrupted

    settings = DemoSettings(study_file=study or DEFAULT_STUDY, executor=executor.value, max_parallel=max_parallel)
    try:
        with render.RunProgress() as progress:
            outcome = run_demo(settings, db, say=progress.say, progress=progress.update)
    except (KeyboardInterrupt, Interrupted) as exc:
        what = f"{exc}; " if str(exc) else ""
        typer.echo(f"interrupted: {what}run `ioussl demo` (or `make demo`) again to resume where it stopped",
                   err=True)
        raise typer.Exit(130) from None
    render.report(outcome, "terminal")
    if outcome.report.left_out:
        typer.echo(f"error: {len(outcome.report.left_out)} fine-tune(s) ended without a DSC (see above)", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
