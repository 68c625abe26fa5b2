"""``ioussl export tensorboard DIR`` and ``ioussl export mlflow``: the registry's runs in the tools users have.

Both read the same thing from the registry (:func:`read_runs`): every run of the chosen studies with its
configuration as dotted settings, its state, its final scores and its per-epoch series. Epochs count from 1,
as in ``ioussl logs`` and the report's plots.

TensorBoard: a folder per run, ``DIR/<study>/<group>/<stage>-<seeds>-<run id>`` (registry strings made safe
as folder names), holding one event file (:mod:`ioussl.report.eventfile`) written whole and replaced whole,
so exporting again never doubles a curve. Tags are ``<stage>/<metric>`` (``pretrain/loss``,
``finetune/val_dsc``), the final scores ``scores/<name>`` at the best epoch, and the configuration a Markdown
table under ``config`` (TensorBoard's Text tab).

MLflow (its client is the optional extra ``mlflow``): an experiment per study, an MLflow run per ioussl run,
found again by its ``ioussl.run_id`` tag so that a second export adds only what is new; the settings become
parameters, the series and final scores metrics (step = epoch), the state the MLflow status; a fine-tune is
nested under its pretraining run.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ioussl.errors import ConfigError, DataError
from ioussl.registry import opened, repo
from ioussl.registry.repo import RunRecord
from ioussl.runfiles import atomic_write_bytes
from ioussl.status import ACTIVE, RunStatus

SCORES = ("dsc", "dsc_3d", "test_dsc", "flare_dsc", "flare_nsd")  # RunRecord fields exported as final scores


@dataclass(frozen=True)
class ExportRun:
    """One run as the exports see it."""

    record: RunRecord
    settings: Mapping[str, Any]  # dotted setting -> value
    series: Mapping[str, Sequence[tuple[int, float]]]  # metric -> (epoch from 1, value)
    scores: Mapping[str, float]  # final scores: SCORES and dsc_<organ> (validation cases)
    best_epoch: int | None  # from 1
    wall_time: float  # seconds since 1970 when its latest job started (0 when it never ran)


@dataclass(frozen=True)
class ExportOutcome:
    runs: int
    points: int  # scalar values written
    where: str


def export_tensorboard(db: str | None, study: str | Sequence[str] | None, out_dir: Path) -> ExportOutcome:
    """``ioussl export tensorboard``: every run of the studies as event files under ``out_dir``."""
    return to_tensorboard(read_runs(db, study), out_dir)


def export_mlflow(db: str | None, study: str | Sequence[str] | None, tracking_uri: str) -> ExportOutcome:
    """``ioussl export mlflow``: every run of the studies into the MLflow tracking store at ``tracking_uri``."""
    return to_mlflow(read_runs(db, study), tracking_uri)


def read_runs(db: str | None, study: str | Sequence[str] | None = None) -> list[ExportRun]:
    """Every run of the named studies (default: every study), in each study's group order."""
    from ioussl.plan.order import in_group_order, study_group_order

    names = [study] if isinstance(study, str) else list(dict.fromkeys(study or []))
    with opened(db) as registry, registry.session(write=False) as session:
        rows = [repo.find_study(session, name) for name in names] or repo.list_studies(session)
        studies = [row.name for row in rows]
        records = in_group_order([r for name in studies for r in repo.list_runs(session, study=name)],
                                 {row.name: study_group_order(row.spec) for row in rows})
        configs = repo.run_configs(session, studies)
        results = repo.result_details(session, studies)
        points = repo.export_metrics(session, studies)
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for run_id, metric, epoch, _step, value in points:
        if isinstance(epoch, int) and _finite(value):
            series.setdefault(run_id, {}).setdefault(metric, []).append((epoch + 1, float(value)))
    runs = []
    for record in records:
        result = results.get(record.id) or {}
        best = result.get("best_epoch")
        runs.append(ExportRun(
            record=record, settings=config_settings(configs.get(record.id)), series=series.get(record.id, {}),
            scores=_scores(record, (result.get("organs") or {}).get("val DSC")),
            best_epoch=best + 1 if isinstance(best, int) and best >= 0 else None,
            wall_time=_seconds(record.started_at)))
    return runs


def config_settings(config_json: str | None) -> dict[str, Any]:
    """A run's canonical config as dotted settings (``finetune.base_lr``); lists stay one value."""
    try:
        config = json.loads(config_json or "{}")
    except ValueError:
        return {}
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = value

    if isinstance(config, dict):
        walk("", config)
    return flat


def _scores(record: RunRecord, organs: Any) -> dict[str, float]:
    scores = {name: float(getattr(record, name)) for name in SCORES
              if getattr(record, name, None) is not None and _finite(getattr(record, name))}
    if isinstance(organs, dict):
        scores.update({f"dsc_{safe_name(str(organ))}": float(value) for organ, value in organs.items()
                       if _finite(value)})
    return scores


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _seconds(when: dt.datetime | None) -> float:
    if when is None:
        return 0.0
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


def safe_name(text: str) -> str:
    """A folder or key name from a registry string: letters, digits and ``.=+-`` kept, every other run of
    characters one ``_`` (no ``/``, no ``..``, no control character reaches the file system)."""
    return re.sub(r"[^A-Za-z0-9.=+-]+", "_", text).strip("_.")[:80] or "_"


# ---- TensorBoard ----

def to_tensorboard(runs: Sequence[ExportRun], out_dir: Path) -> ExportOutcome:
    """One event file per run under ``out_dir`` (created if missing)."""
    from ioussl.report import eventfile

    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"cannot export to {out_dir}: it is a file; give a folder")
    points = 0
    for run in runs:
        record = run.record
        items: list[eventfile.Scalar | eventfile.Text] = [eventfile.Text("config", 0, _markdown(run), run.wall_time)]
        for metric, series in run.series.items():
            items += [eventfile.Scalar(f"{record.stage}/{metric}", epoch, value, run.wall_time)
                      for epoch, value in series]
        items += [eventfile.Scalar(f"scores/{name}", run.best_epoch or 0, value, run.wall_time)
                  for name, value in run.scores.items()]
        folder = out_dir / safe_name(record.study) / safe_name(record.group) / run_label(record)
        data = eventfile.event_file(items, run.wall_time)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(folder / eventfile.FILE_NAME, data)
        except OSError as exc:
            raise DataError(f"cannot write {folder}: {exc.strerror or exc}") from None
        points += len(items) - 1
    return ExportOutcome(len(runs), points, str(out_dir))


def run_label(record: RunRecord) -> str:
    """``finetune-data.crop=96-ps1-s2-<id>``: a run's folder, readable (and filterable) in TensorBoard's run list:
    its stage, its swept settings, its seeds and its id."""
    seeds = f"ps{record.pretrain_seed}-s{record.seed}" if record.pretrain_seed is not None else f"s{record.seed}"
    point = "".join(f"{key}={_cell(value)}-" for key, value in record.point.items())
    return safe_name(f"{record.stage}-{point}{seeds}-{record.id}")


def _markdown(run: ExportRun) -> str:
    record = run.record
    facts = {"run": record.id, "study": record.study, "stage": record.stage, "group": record.group,
             "status": record.status.value, "parent": record.parent_id or "-"}
    rows = [*facts.items(), *sorted(run.settings.items())]
    return "| setting | value |\n|---|---|\n" + "\n".join(f"| {_cell(k)} | {_cell(v)} |" for k, v in rows)


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text.replace("|", "\\|").replace("\n", " ")


# ---- MLflow ----

METRICS_PER_CALL, PARAMS_PER_CALL = 1000, 100  # MLflow's log_batch limits


def to_mlflow(runs: Sequence[ExportRun], tracking_uri: str) -> ExportOutcome:
    """Create or update one MLflow run per run in the tracking store at ``tracking_uri``."""
    client, failures = _mlflow_client(tracking_uri)
    exported: dict[str, str] = {}  # ioussl run id -> MLflow run id
    points = 0
    try:
        for run in sorted(runs, key=lambda r: r.record.stage != "pretrain"):  # parents first (stable sort)
            exported[run.record.id], added = _mlflow_run(client, run, exported)
            points += added
    except failures as exc:
        raise DataError(f"MLflow at {tracking_uri}: {_first_line(exc)}") from None
    return ExportOutcome(len(runs), points, tracking_uri)


def _mlflow_client(tracking_uri: str) -> tuple[Any, tuple[type[BaseException], ...]]:
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError("export mlflow needs the MLflow client, which is not installed: "
                          "pip install 'ioussl[mlflow]'") from None
    import logging

    from sqlalchemy.exc import SQLAlchemyError

    for name in ("mlflow", "alembic"):  # "Creating initial MLflow database tables...": not ioussl's to say
        logging.getLogger(name).setLevel(logging.ERROR)
    _check_sqlite(tracking_uri)
    # A tracking server that does not answer must not hold the command through minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    failures = (MlflowException, SQLAlchemyError, OSError)
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        client.search_experiments(max_results=1)  # a store that cannot be opened fails here, before any run
    except failures as exc:
        raise ConfigError(f"--tracking-uri {tracking_uri}: {_first_line(exc)}") from None
    return client, failures


def _check_sqlite(tracking_uri: str) -> None:
    """Refuse at once a ``sqlite:///`` store that cannot be a database (MLflow retries opening it for minutes)."""
    if not tracking_uri.startswith("sqlite:///"):
        return
    path = Path(tracking_uri.removeprefix("sqlite:///").split("?", 1)[0])
    if path.is_dir():
        raise ConfigError(f"--tracking-uri {tracking_uri}: {path} is a folder; name a database file in it")
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as handle:
            if handle.read(16) != b"SQLite format 3\0":
                raise ConfigError(f"--tracking-uri {tracking_uri}: {path} is not a SQLite database")


def _mlflow_run(client: Any, run: ExportRun, exported: Mapping[str, str]) -> tuple[str, int]:
    """The MLflow run of ``run`` (created, or found by its tag) brought up to date; and the points added."""
    from mlflow.entities import Metric, Param, RunTag

    record = run.record
    experiment = client.get_experiment_by_name(record.study)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(record.study)
    found = client.search_runs([experiment_id], filter_string=f"tags.`ioussl.run_id` = '{record.id}'",
                               max_results=1)  # run ids are hex: nothing to quote
    tags = {"ioussl.run_id": record.id, "ioussl.study": record.study, "ioussl.stage": record.stage,
            "ioussl.group": record.group, "ioussl.status": record.status.value}
    if record.parent_id is not None and record.parent_id in exported:
        tags["mlflow.parentRunId"] = exported[record.parent_id]
    millis = int(run.wall_time * 1000)
    metrics = [Metric(name, value, millis, epoch) for name, series in run.series.items() for epoch, value in series]
    metrics += [Metric(name, value, millis, run.best_epoch or 0) for name, value in run.scores.items()]
    if found:
        mlflow_id, have_params = found[0].info.run_id, set(found[0].data.params)
        metrics = _not_logged(client, mlflow_id, metrics)
    else:
        seeds = f"seed {record.seed}" + (f", pretrain seed {record.pretrain_seed}" if record.pretrain_seed is not None
                                         else "")
        mlflow_id = client.create_run(experiment_id, start_time=millis or None, tags=tags,
                                      run_name=f"{record.stage} {record.group} ({seeds})").info.run_id
        have_params = set()
    params = [Param(key, _param(value)) for key, value in sorted(run.settings.items()) if key not in have_params]
    client.log_batch(mlflow_id, tags=[RunTag(key, value) for key, value in tags.items()])
    for start in range(0, len(params), PARAMS_PER_CALL):
        client.log_batch(mlflow_id, params=params[start:start + PARAMS_PER_CALL])
    for start in range(0, len(metrics), METRICS_PER_CALL):
        client.log_batch(mlflow_id, metrics=metrics[start:start + METRICS_PER_CALL])
    status = _mlflow_status(record.status)
    if status in ("FINISHED", "FAILED", "KILLED"):
        client.set_terminated(mlflow_id, status)
    else:
        client.update_run(mlflow_id, status=status)
    return mlflow_id, len(metrics)


def _not_logged(client: Any, mlflow_id: str, metrics: list[Any]) -> list[Any]:
    """The points an earlier export has not logged yet (by metric and step)."""
    logged = {(m.key, m.step) for key in {m.key for m in metrics} for m in client.get_metric_history(mlflow_id, key)}
    return [m for m in metrics if (m.key, m.step) not in logged]


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:6000]  # MLflow's limit for a parameter value


def _mlflow_status(status: RunStatus) -> str:
    if status == RunStatus.COMPLETED:
        return "FINISHED"
    if status == RunStatus.CANCELLED:
        return "KILLED"
    if status == RunStatus.RUNNING:
        return "RUNNING"
    return "SCHEDULED" if status in ACTIVE or status == RunStatus.PLANNED else "FAILED"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
