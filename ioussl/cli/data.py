"""CLI commands: ``ioussl data preprocess|synth|split`` and ``ioussl analyze pairs``.

Each command parses, calls one science function and renders; the science modules (torch, MONAI,
nibabel, matplotlib) are imported inside the command bodies only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ioussl.cli.options import command_group
from ioussl.errors import DataError

data_app = command_group(help="Prepare data: preprocess CTs into a slice store, synthesise, split.")
analyze_app = command_group(help="Analyse data and samplers.")


@data_app.command("preprocess")
def preprocess(
    input_dir: Annotated[
        Path, typer.Argument(help="FLARE layout: images/ (or imgs/), labels/, unlabelled/.")
    ],
    out: Annotated[Path, typer.Argument(help="Store directory (created; rerun to resume).")],
    workers: Annotated[int, typer.Option(help="Parallel processes.")] = 1,
    min_size: Annotated[int, typer.Option(help="Pad X and Y to at least this (the crop side).")] = 96,
    spacing: Annotated[
        str, typer.Option(metavar="<x,y,z>", help="Target voxel spacing in mm (the thesis' default).")
    ] = "1,1,2.5",
    min_depth: Annotated[
        int, typer.Option(min=0, help="Pad Z to at least this (0: no padding; 3D training needs the cube's side).")
    ] = 0,
    allow_non_ct: Annotated[
        bool,
        typer.Option(
            "--allow-non-ct",
            help="Preprocess images that fail the check for CT in Hounsfield units (recorded in the store).",
        ),
    ] = False,
) -> None:
    """Check each image is CT in HU, then normalise it (RAS, 1x1x2.5 mm, [-500, 500] HU -> [0, 1], foreground
    crop, pad) into a store that also keeps the original labels and grids for FLARE's evaluation."""
    from rich.progress import Progress

    from ioussl.science.data.preprocess import PreprocessSettings, preprocess_dataset

    _check_out_folder(out)
    with Progress(transient=True) as bar:
        task = bar.add_task("preprocessing", total=None)
        report = preprocess_dataset(
            input_dir,
            out,
            PreprocessSettings(min_size=min_size, allow_non_ct=allow_non_ct, min_depth=min_depth,
                               spacing=parse_spacing(spacing)),  # fmt: skip
            workers=workers,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    typer.echo(
        f"{len(report.done)} done, {len(report.skipped)} already done, {len(report.failed)} failed -> {out}"
    )
    for case, reason in report.failed:
        typer.echo(f"failed {case}: {reason}", err=True)
    if report.failed:
        raise typer.Exit(1)


@data_app.command("synth")
def synth(
    out: Annotated[Path, typer.Argument(help="Output folder (FLARE layout).")],
    cases: Annotated[int, typer.Option(help="Labelled cases.")] = 4,
    unlabelled: Annotated[int, typer.Option(help="Unlabelled cases.")] = 4,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    size: Annotated[int, typer.Option(help="Nominal in-plane voxels.")] = 128,
    slices: Annotated[int, typer.Option(help="Nominal slices per volume.")] = 24,
) -> None:
    """Write a small synthetic abdomen-like CT dataset (13 organs, varied spacing and orientation)."""
    from ioussl.science.data.synth import synth_dataset

    report = synth_dataset(out, cases, unlabelled, seed=seed, size=size, slices=slices)
    typer.echo(
        f"wrote {len(report.labelled)} labelled and {len(report.unlabelled)} unlabelled cases to {out}"
    )


@data_app.command("split")
def split(
    out: Annotated[Path, typer.Argument(help="Split JSON to write.")],
    store: Annotated[Path | None, typer.Option(help="Store whose labelled cases are split.")] = None,
    cases: Annotated[
        Path | None,
        typer.Option(help="Split these cases instead, no store needed: a split JSON (parts pooled) or one id a line."),
    ] = None,
    train: Annotated[int | None, typer.Option(
        help="Training cases [default 15, the thesis' split; on fewer than 50 cases 30% of them].")] = None,
    val: Annotated[int | None, typer.Option(
        help="Validation (model selection) cases [default 35; on fewer than 50 cases the rest].")] = None,
    test: Annotated[int, typer.Option(help="Test (reporting) cases; 0 = none.")] = 0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    thesis: Annotated[
        bool, typer.Option("--thesis", help="Write the thesis' fixed FLARE22 15/35 split.")
    ] = False,
    keep_train: Annotated[
        bool,
        typer.Option("--keep-train", help="With --cases SPLIT.json: keep its training cases and split its "
                                          "validation cases into --val (selection) and --test (reporting)."),
    ] = False,
) -> None:
    """Write a seeded train/val(/test) split of a store's labelled cases or of a list of cases, or the thesis' split."""
    from ioussl.science.data.splits import (
        THESIS_SPLIT,
        check_split_cases,
        keep_train_split,
        load_split,
        make_split,
        read_case_list,
        split_to_json,
    )

    if keep_train:
        if cases is None or store is not None or thesis:
            raise DataError("--keep-train splits the validation part of a split JSON: give --cases SPLIT.json only")
        if train is None or val is None:  # no defaults here: the counts must be the user's, checked below
            raise DataError("--keep-train needs --train (the split's training cases, as a check) and --val")
        result = keep_train_split(load_split(cases), train, val, test, seed)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(split_to_json(result, f"the training cases of {cases.name}; its validation cases split "
                                             f"(seed {seed}) into selection and test"))
        typer.echo(", ".join(f"{part} {len(ids)}" for part, ids in result.items()) + f" -> {out}")
        return

    if thesis:
        result, comment = THESIS_SPLIT, "FLARE2022 custom 15/35 split of the thesis"
        if store is not None:
            check_split_cases(result, _open_store(store).labelled_cases(), where="thesis split")
    else:
        if (store is None) == (cases is None):
            raise DataError("give either --store (split its labelled cases) or --cases (split a list), or --thesis")
        if store is not None:
            pool, source = _open_store(store).labelled_cases(), f"the labelled cases of {store.name}"
        else:
            assert cases is not None  # exactly one of store and cases, checked above
            pool = read_case_list(cases)
            source = f"the {len(pool)} cases of {cases.name}"
        train, val = split_sizes(len(set(pool)), train, val, test)
        result = make_split(pool, train, val, test, seed)
        comment = f"seeded split (seed {seed}) of {source}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(split_to_json(result, comment))
    typer.echo(", ".join(f"{part} {len(cases)}" for part, cases in result.items()) + f" -> {out}")


def _check_out_folder(out: Path) -> None:
    """The store folder, or the nearest of its parents that exists, must be a folder: say so in one line."""
    for where in (out, *out.parents):
        if where.exists():
            if not where.is_dir():
                raise DataError(f"cannot write the store {out}: {where} is a file, not a folder")
            return


THESIS_TRAIN, THESIS_VAL = 15, 35


def split_sizes(available: int, train: int | None, val: int | None, test: int) -> tuple[int, int]:
    """--train and --val as given, else the thesis' 15/35, or on a smaller pool 30% train and the rest val
    (after --test); numbers that do not fit are one line that says how many cases there are."""
    if train is None and val is None and available < THESIS_TRAIN + THESIS_VAL + test:
        train = max(1, round(0.3 * (available - test)))
        val = available - test - train
    train = THESIS_TRAIN if train is None else train
    val = THESIS_VAL if val is None else val
    if min(train, val, test) < 0 or train + val + test > available or min(train, val) < 1:
        raise DataError(f"cannot split {available} case(s) into train {train} + val {val} + test {test}: choose "
                        f"--train, --val (and --test) of at least 1 that add up to at most {available}")
    return train, val


def _open_store(path: Path):
    from ioussl.science.data.store import SliceStore

    return SliceStore(path)


def parse_spacing(text: str) -> tuple[float, float, float]:
    """'x,y,z' in mm, each positive and finite; a one-line DataError otherwise."""
    try:
        x, y, z = (float(v) for v in text.split(","))
    except ValueError:
        raise DataError(f"spacing {text!r} must be three numbers 'x,y,z' in mm, e.g. 1,1,2.5") from None
    if not all(0 < v < 100 for v in (x, y, z)):
        raise DataError(f"spacing {text!r}: each value must be a positive number of mm below 100")
    return x, y, z


def _parse_interval(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise DataError(f"interval {text!r} must be two numbers 'i_min,i_max', e.g. 0.3,0.6") from None
    return low, high


@analyze_app.command("pairs")
def pairs(
    store: Annotated[Path, typer.Argument(help="Slice store (labelled cases are analysed).")],
    split_file: Annotated[Path | None, typer.Option("--split", help="Split JSON; analyse one part.")] = None,
    part: Annotated[str, typer.Option(help="Split part to analyse (train, val, test).")] = "val",
    interval: Annotated[
        list[str] | None, typer.Option(metavar="<i_min,i_max>", help="'i_min,i_max'; repeat. Default: thesis' four.")
    ] = None,
    crop: Annotated[int, typer.Option(help="Crop side.")] = 96,
    spatial_dims: Annotated[
        int, typer.Option(min=2, max=3, help="2: pairs of squares per slice; 3: pairs of cubes per volume.")
    ] = 2,
    passes: Annotated[int, typer.Option(help="Passes over the slices per interval.")] = 5,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    plot: Annotated[Path, typer.Option(help="PNG to write.")] = Path("pairs-organ-overlap.png"),
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the rows as JSON (for ioussl report --pairs).")
    ] = None,
) -> None:
    """Share of IoU-sampled pairs whose views show a common organ, per interval (thesis Fig. 3.2)."""
    from rich.console import Console
    from rich.table import Table

    from ioussl.science.data.splits import check_split_cases, load_split
    from ioussl.science.sampling.analysis import (
        THESIS_INTERVALS,
        THESIS_SHARED,
        organ_overlap,
        organ_overlap_3d,
        plot_overlap,
    )

    slice_store = _open_store(store)
    cases = slice_store.labelled_cases()
    if split_file is not None:
        parts = load_split(split_file)
        if part not in parts:
            raise DataError(f"{split_file}: has no {part!r} part (parts: {', '.join(parts)})")
        check_split_cases({part: parts[part]}, cases, where=str(split_file))
        cases = parts[part]
    if not cases:
        raise DataError(f"{store}: no labelled cases to analyse")
    intervals = [_parse_interval(t) for t in interval] if interval else list(THESIS_INTERVALS)
    reference = THESIS_SHARED if spatial_dims == 2 else {}  # the thesis measured slices: no reference for cubes
    if spatial_dims == 3:
        rows = organ_overlap_3d(slice_store, cases, intervals, crop, passes, seed)
    else:
        rows = organ_overlap(slice_store, slice_store.slice_ids(cases), intervals, crop, passes, seed)
    table = Table(title=f"Pairs sharing an organ ({len(cases)} cases, {passes} passes, crop {crop})")
    for name in ("interval", "pairs", "counted", "shared", "fraction", "thesis", "fallbacks"):
        table.add_column(name, justify="right")
    for r in rows:
        ref = reference.get((r.i_min, r.i_max))
        table.add_row(
            f"[{r.i_min:g}, {r.i_max:g}]", str(r.pairs), str(r.counted), str(r.shared),
            f"{r.fraction:.3f}", "-" if ref is None else f"{ref:.2f}", str(r.fallbacks),
        )  # fmt: skip
    Console().print(table)
    typer.echo(f"plot -> {plot_overlap(rows, plot)}")
    if json_out is not None:
        import dataclasses
        import json

        from ioussl.runfiles import atomic_write_text

        payload = [{**dataclasses.asdict(r), "fraction": r.fraction if r.counted else None} for r in rows]
        atomic_write_text(json_out, json.dumps(payload, indent=1) + "\n")
        typer.echo(f"rows -> {json_out}")


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the root app."""
    app.add_typer(data_app, name="data")
    app.add_typer(analyze_app, name="analyze")
