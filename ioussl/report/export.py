"""Every run, every per-epoch series and a report as pandas tables: ``ioussl export`` and ``ioussl.api``.

Runs: one row per run, with its study, stage, id, parent, interval and seeds, every swept setting as a
column of its own (named by its dotted name, from ``runs.point``; a run the setting does not reach has
none), its status, attempts and the GPU-hours its jobs used, both DSCs (validation cases), the test and
FLARE 2022 scores where recorded, one ``dsc_<organ>`` column per organ, its best epoch and checkpoint, and
then every other setting of its configuration (``data.crop``, ``pretrain.base_lr``, ...: what it ran with, not
only what the study varied; a setting its stage does not have is empty).
Metrics: the per-epoch series in long form, one row per (run, metric, epoch), epochs counted from 1. Reads
only: no lock taken.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ioussl.errors import ConfigError, DataError
from ioussl.plan.sweep import format_value
from ioussl.registry import opened, repo
from ioussl.registry.models import utcnow

if TYPE_CHECKING:
    import pandas as pd

    from ioussl.report.tables import Report

FORMATS = ("csv", "jsonl", "parquet")
SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
RUN_HEAD = ("study", "stage", "run_id", "parent", "interval", "i_min", "i_max", "random_crop", "pretrain_seed",
            "seed")
RUN_STATE = ("status", "status_reason", "imported", "attempts", "job_id", "gpu_hours")
RUN_SCORES = ("dsc", "dsc_3d", "test_dsc", "test_dsc_3d", "flare_dsc", "flare_nsd", "flare_part")
RUN_TAIL = ("best_epoch", "checkpoint_path", "checkpoint_sha256", "run_dir")
METRIC_HEAD = ("study", "run_id", "stage", "interval", "pretrain_seed", "seed")
METRIC_TAIL = ("metric", "epoch", "step", "value")
INTEGER_COLUMNS = ("pretrain_seed", "seed", "attempts", "best_epoch", "epoch", "step")
CONFIG_SHOWN = ("stage", "seed")  # config keys that are columns of RUN_HEAD already


def runs_frame(db: str | None, study: str | Sequence[str] | None = None) -> pd.DataFrame:
    """One row per run of the named studies (default: every study); columns as the module says."""
    with opened(db) as registry, registry.session(write=False) as session:
        studies, axes = _studies(session, study)
        rows = _in_group_order(session, studies, repo.export_runs(session, studies))
        hours = _hours_used(repo.attempt_spans(session, studies))
        configs = repo.run_configs(session, studies)
    # Column by column (10,000 runs: a transpose and a few list comprehensions, not a dict per row).
    raw = dict(zip(repo.EXPORT_RUN_COLUMNS, zip(*rows, strict=True), strict=True)) if rows else \
        {name: () for name in repo.EXPORT_RUN_COLUMNS}
    gpus = {text: _gpus(text) for text in set(raw["resources"])}
    points = [point or {} for point in raw["point"]]
    per_organ = [organs or {} for organs in raw["per_organ"]]
    derived = {
        "status": [status.value for status in raw["status"]],
        "attempts": [n or 0 for n in raw["attempts"]],
        "gpu_hours": [hours.get(run_id, 0.0) * gpus[text] for run_id, text in zip(raw["run_id"], raw["resources"],
                                                                                    strict=True)],
    }
    columns: dict[str, Sequence[Any]] = {name: derived.get(name, raw.get(name, ())) for name in (*RUN_HEAD, *RUN_STATE,
                                                                                               *RUN_SCORES)}
    for name in axes:
        columns[name] = [_cell(point.get(name)) for point in points]
    organs = dict.fromkeys(organ for scores in per_organ for organ in scores)
    for organ in organs:
        columns[f"dsc_{organ}"] = [scores.get(organ) for scores in per_organ]
    columns.update({name: raw[name] for name in RUN_TAIL})
    ordered = [*RUN_HEAD, *axes, *RUN_STATE, *RUN_SCORES, *(f"dsc_{o}" for o in organs), *RUN_TAIL]
    settings = _settings_columns(raw["run_id"], configs, skip={*axes, *CONFIG_SHOWN})
    return _frame({**{name: list(columns[name]) for name in ordered}, **settings})


def _settings_columns(run_ids: Sequence[str], configs: dict[str, str], skip: set[str]) -> dict[str, list[Any]]:
    """Every setting of the runs' configs but those shown already, as dotted columns in name order (a setting
    the run's stage does not have, e.g. ``sampler.mode`` of a fine-tune, is empty)."""
    from ioussl.report.external import config_settings

    flat = [config_settings(configs.get(run_id)) for run_id in run_ids]
    names = sorted({name for settings in flat for name in settings} - skip)
    return {name: [_cell(settings.get(name)) for settings in flat] for name in names}


def metrics_frame(db: str | None, study: str | Sequence[str] | None = None, runs: Sequence[str] = (),
                  names: Sequence[str] = (), stage: str | None = None) -> pd.DataFrame:
    """The per-epoch series in long form: one row per (run, metric, epoch), with the run's axes."""
    with opened(db) as registry, registry.session(write=False) as session:
        studies, axes = _studies(session, study)
        run_ids = [repo.get_run(session, run).id for run in runs]
        about = {r.id: r for name in studies for r in repo.list_runs(session, study=name)}
        points = repo.export_metrics(session, studies, run_ids, names, stage)
    columns: dict[str, list[Any]] = {name: [] for name in (*METRIC_HEAD, *axes, *METRIC_TAIL)}
    for run_id, metric, epoch, step, value in points:
        record = about[run_id]
        for name, cell in zip(METRIC_HEAD, (record.study, run_id, record.stage, record.group,
                                            record.pretrain_seed, record.seed), strict=True):
            columns[name].append(cell)
        for name in axes:
            columns[name].append(_cell(record.point.get(name)))
        # Epochs count from 1, as `ioussl logs`, the plots and the TensorBoard and MLflow exports count them
        # (the run files number them from 0).
        for name, cell in zip(METRIC_TAIL, (metric, None if epoch is None else epoch + 1, step, value), strict=True):
            columns[name].append(cell)
    return _frame(columns)


CASE_HEAD = ("study", "run_id", "interval", "pretrain_seed", "seed")
CASE_TAIL = ("part", "case", "organ", "flare_dsc", "flare_nsd")


def cases_frame(db: str | None, study: str | Sequence[str] | None = None) -> pd.DataFrame:
    """FLARE's per-case scores in long form: one row per (fine-tune, case, organ) with the run's axes, the part
    of the split scored ("val" or "test") and the organ's DSC and NSD (None: not scored)."""
    from ioussl.report.cases import case_rows, flare_sections

    with opened(db) as registry, registry.session(write=False) as session:
        studies, axes = _studies(session, study)
        about = {r.id: r for name in studies for r in repo.list_runs(session, study=name, stage="finetune")}
        sections = flare_sections(session, about)
    columns: dict[str, list[Any]] = {name: [] for name in (*CASE_HEAD, *axes, *CASE_TAIL)}
    for run_id in sorted(sections, key=lambda r: (about[r].study, about[r].group, about[r].pretrain_seed or 0,
                                                  about[r].seed, r)):
        record = about[run_id]
        for row in case_rows(run_id, sections[run_id]):
            for name, cell in zip(CASE_HEAD, (record.study, run_id, record.group, record.pretrain_seed, record.seed),
                                  strict=True):
                columns[name].append(cell)
            for name in axes:
                columns[name].append(_cell(record.point.get(name)))
            for name, value in zip(CASE_TAIL, (row.part, row.case, row.organ, row.dsc, row.nsd), strict=True):
                columns[name].append(value)
    return _frame(columns)


def report_frame(report: Report) -> pd.DataFrame:
    """One row per report group: study, group, its value on each --by axis, then every GroupRow number."""
    import dataclasses

    from ioussl.report.tables import GroupRow

    skip = {"group", "study", "axes", "mean_ci", "delta_ci"}
    rows = []
    for row in report.rows:
        numbers = {f.name: getattr(row, f.name) for f in dataclasses.fields(GroupRow) if f.name not in skip}
        low, high = row.delta_ci if row.delta_ci else (None, None)
        mean_low, mean_high = row.mean_ci if row.mean_ci else (None, None)
        rows.append({"study": row.study, "group": row.group,
                     **{axis: _cell(value) for axis, value in row.axes.items()},
                     **numbers, "n": row.n, "ddof": report.ddof, "delta_ci95_low": low, "delta_ci95_high": high,
                     "mean_ci95_low": mean_low, "mean_ci95_high": mean_high,
                     "values": list(row.values), "run_ids": list(row.run_ids)})
    import pandas as pd

    return pd.DataFrame(rows)


def _studies(session: Any, study: str | Sequence[str] | None) -> tuple[list[str], list[str]]:
    """The studies asked for (each must exist; default every study) and their axes, in order."""
    names = [study] if isinstance(study, str) else list(dict.fromkeys(study or []))
    rows = [repo.find_study(session, name) for name in names] if names else repo.list_studies(session)
    axes = list(dict.fromkeys(axis for row in rows for axis in (row.axes or [])))
    return [row.name for row in rows], axes


def _in_group_order(session: Any, studies: list[str], rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows by study, then group as ``status`` and ``report`` list them (baseline first, then file order)."""
    from ioussl.plan.order import order_groups, study_group_order

    study_at, group_at = repo.EXPORT_RUN_COLUMNS.index("study"), repo.EXPORT_RUN_COLUMNS.index("interval")
    rank: dict[tuple[str, str], int] = {}
    for row in repo.list_studies(session):
        if row.name in studies:
            present = {r[group_at] for r in rows if r[study_at] == row.name}
            rank.update({(row.name, g): i for i, g in enumerate(order_groups(present, study_group_order(row.spec)))})
    return sorted(rows, key=lambda r: (r[study_at], rank[(r[study_at], r[group_at])]))


def _hours_used(spans: Sequence[tuple[str, Any, Any]]) -> dict[str, float]:
    """Run id -> hours its jobs ran (an attempt still running counts until now)."""
    now = utcnow()
    hours: dict[str, float] = {}
    for run_id, started, ended in spans:
        hours[run_id] = hours.get(run_id, 0.0) + max(0.0, ((ended or now) - started).total_seconds()) / 3600
    return hours


def _gpus(resources_json: str | None) -> int:
    """GPUs one job of a run holds, from its stored resources (0 when they cannot be read)."""
    from ioussl.resources import resources_for_run

    try:
        stored = json.loads(resources_json or "{}")
        return resources_for_run(stored if isinstance(stored, dict) else {}).gpus()
    except (ValueError, TypeError, ConfigError):
        return 0


def _cell(value: Any) -> Any:
    """A swept value as a table cell: lists (model.depths) as the study file writes them."""
    return format_value(value) if isinstance(value, list | tuple) else value


def _frame(columns: dict[str, list[Any]]) -> pd.DataFrame:
    """A DataFrame whose integer columns stay integers beside missing values (``Int64``), and flags ``boolean``."""
    import pandas as pd

    typed: dict[str, Any] = {}
    for name, values in columns.items():
        kinds = {type(v) for v in values if v is not None}
        if name in INTEGER_COLUMNS or (kinds and kinds <= {int}):
            typed[name] = pd.array(values, dtype="Int64")
        elif kinds == {bool}:
            typed[name] = pd.array(values, dtype="boolean")
        else:
            typed[name] = values
    return pd.DataFrame(typed)


def format_for(output: str | Path | None, fmt: str | None) -> str:
    """The format asked for (``fmt``), else the one the output's suffix names, else CSV (stdout)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ConfigError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
        return fmt
    if output is None or str(output) == "-":
        return "csv"
    suffix = Path(output).suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(f"cannot tell the format of {output} from its suffix; give --format "
                          f"({', '.join(FORMATS)})")
    return SUFFIXES[suffix]


def write_frame(frame: pd.DataFrame, output: str | Path | None, fmt: str) -> Path | None:
    """Write ``frame`` to ``output`` (None or "-": stdout) in ``fmt``; a file appears whole or not at all."""
    if fmt == "parquet":
        _need_pyarrow()
        if output is None or str(output) == "-":
            raise ConfigError("Parquet is binary: give --output FILE.parquet")
    if output is None or str(output) == "-":
        sys.stdout.write(_text(frame, fmt))
        return None
    path = Path(output)
    if path.is_dir():
        raise DataError(f"cannot write {path}: it is a directory")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")  # beside it: the rename is atomic
    try:
        with open(tmp, "xb") as stream:
            if fmt == "parquet":
                frame.to_parquet(stream, index=False)
            else:
                stream.write(_text(frame, fmt).encode())
        os.replace(tmp, path)
    except OSError as exc:
        raise DataError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # there only when writing failed
    return path


def _text(frame: pd.DataFrame, fmt: str) -> str:
    if fmt == "csv":
        return frame.to_csv(index=False)
    # The standard library's JSON, not pandas': floats keep every digit (pandas rounds to 10 by default).
    cells = frame.astype(object).where(frame.notna(), None)
    return "".join(json.dumps(dict(zip(cells.columns, row, strict=True)), default=_plain, allow_nan=False) + "\n"
                   for row in cells.itertuples(index=False))


def _plain(value: Any) -> Any:
    """numpy scalars (and arrays: a report's lists) as Python values, for json.dumps."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {value!r}")


def _need_pyarrow() -> None:
    import importlib.util

    if importlib.util.find_spec("pyarrow") is None:
        raise ConfigError("Parquet needs pyarrow, which is not installed: pip install 'ioussl[export]' "
                          "(or write --format csv or jsonl)")
