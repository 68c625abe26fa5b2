"""CLI: export every run, or every run's per-epoch series, as CSV, JSON lines or Parquet."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from ioussl.cli.options import DbOption, StageOption, StudiesOption, command_group

export_app = command_group(help="Export the registry's runs and metric series as tables (CSV, JSON lines, Parquet), "
                                "or into TensorBoard or MLflow.")


class ExportFormat(StrEnum):
    csv = "csv"
    jsonl = "jsonl"
    parquet = "parquet"


FormatOption = Annotated[
    ExportFormat | None,
    typer.Option("--format", help="csv, jsonl or parquet (Parquet needs pyarrow) [default: from the --output "
                                  "suffix; csv on stdout]."),
]
OutputOption = Annotated[
    Path | None,
    typer.Option("--output", "-o", metavar="<file>",
                 help="Write here (replaced whole, never half-written) [default: stdout]."),
]


@export_app.command("runs")
def export_runs(db: DbOption = None, study: StudiesOption = None, fmt: FormatOption = None,
                output: OutputOption = None) -> None:
    """One row per run: study, stage, run id, parent, interval, seeds, every swept setting, status, attempts,
    GPU-hours used, DSCs (validation, test, FLARE), one DSC column per organ, best epoch, checkpoint."""
    from ioussl.report import export

    chosen = export.format_for(output, fmt.value if fmt else None)
    _wrote(export.write_frame(export.runs_frame(db, study), output, chosen))


@export_app.command("metrics")
def export_metrics(
    db: DbOption = None,
    study: StudiesOption = None,
    run: Annotated[list[str] | None, typer.Option("--run", metavar="<id>", help="Only this run (repeatable).")] = None,
    metric: Annotated[
        list[str] | None, typer.Option("--metric", metavar="<name>", help="Only this series, e.g. loss (repeatable).")
    ] = None,
    stage: StageOption = None,
    fmt: FormatOption = None,
    output: OutputOption = None,
) -> None:
    """The per-epoch series in long form: one row per run, metric and epoch, with the run's swept settings."""
    from ioussl.cli.options import checked_stage
    from ioussl.report import export

    chosen = export.format_for(output, fmt.value if fmt else None)
    frame = export.metrics_frame(db, study, runs=run or [], names=metric or [], stage=checked_stage(stage))
    _wrote(export.write_frame(frame, output, chosen))


@export_app.command("cases")
def export_cases(db: DbOption = None, study: StudiesOption = None, fmt: FormatOption = None,
                 output: OutputOption = None) -> None:
    """FLARE's per-case scores: one row per fine-tune, case and organ, with its DSC and NSD and the run's axes."""
    from ioussl.report import export

    chosen = export.format_for(output, fmt.value if fmt else None)
    _wrote(export.write_frame(export.cases_frame(db, study), output, chosen))


@export_app.command("tensorboard")
def export_tensorboard(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="Folder for the event files (created if missing).")],
    db: DbOption = None,
    study: StudiesOption = None,
) -> None:
    """Every run's per-epoch series, final scores and configuration as TensorBoard event files: one folder per
    run (DIR/<study>/<group>/<stage>-<seeds>-<run id>), replaced whole on each export; then
    `tensorboard --logdir DIR`."""
    from ioussl.report.external import export_tensorboard as export

    outcome = export(db, study, folder)
    typer.echo(f"wrote {outcome.points} value(s) of {outcome.runs} run(s) under {outcome.where}", err=True)


@export_app.command("mlflow")
def export_mlflow(
    tracking_uri: Annotated[
        str, typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", metavar="<uri>",
                          help="MLflow tracking store, e.g. sqlite:///mlflow.db or http://host:5000 "
                               "[env MLFLOW_TRACKING_URI].")
    ],
    db: DbOption = None,
    study: StudiesOption = None,
) -> None:
    """Every run into MLflow (pip install 'ioussl[mlflow]'): an experiment per study, a run per run with its
    settings as parameters, its series and final scores as metrics (step = epoch from 1) and its state; exporting
    again adds only what is new."""
    from ioussl.report.external import export_mlflow as export

    outcome = export(db, study, tracking_uri)
    typer.echo(f"exported {outcome.runs} run(s), {outcome.points} new value(s), to {outcome.where}", err=True)


def _wrote(path: Path | None) -> None:
    if path is not None:
        typer.echo(f"wrote {path}", err=True)


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
