"""CLI: ``ioussl predict RUN CASE...``: a fine-tune's segmentation of whole cases, as NIfTI files and pictures."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from ioussl.cli.options import DbOption


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def predict(
    run: Annotated[str, typer.Argument(metavar="RUN", help="A completed fine-tune: id or unique prefix (4+ chars).")],
    cases: Annotated[list[str], typer.Argument(metavar="CASE...", help="Case ids of the run's data store.")],
    db: DbOption = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", metavar="<dir>",
                     help="Write here (created if missing) [default: the run directory's predictions/]."),
    ] = None,
    slices: Annotated[
        list[int] | None,
        typer.Option("--slice", metavar="<z>",
                     help="Draw this slice of the stored grid, from 0 (repeatable) [default: the slice with the "
                          "most labelled voxels and two more through the labelled range]."),
    ] = None,
    device: Annotated[Device, typer.Option("--device", help="Where the network runs.")] = Device.auto,
) -> None:
    """Segment whole cases with the run's best checkpoint: <case>.nii.gz on the case's original grid (opens
    over the CT in ITK-SNAP or 3D Slicer) and <case>_z<slice>.png pictures (CT, ground truth, prediction)."""
    from ioussl.report.predict import predict as run_predict

    outcome = run_predict(db, run, cases, out, slices or (), device.value)
    for case in outcome.cases:
        organs = ", ".join(case.voxels) or "no organ"
        typer.echo(f"{case.case}: {case.nifti} ({organs}); pictures of slice(s) "
                   f"{', '.join(map(str, case.slices))}: {', '.join(p.name for p in case.pictures)}")


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
