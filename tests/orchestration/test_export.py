"""Exports and the Python API: one row per run with every column, the per-epoch series in long form, a
report as a table, and each format read back by pandas as it was written (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from registryfix import valid_result
from typer.testing import CliRunner

import ioussl.api as api
from ioussl.cli import app
from ioussl.errors import ConfigError, NotFound
from ioussl.plan.service import plan_grid
from ioussl.registry import open_registry, repo
from ioussl.status import RunStatus
from ioussl.track.sync import sync

STUDY = """
[study]
name = "ex"
runs_dir = "runs"
[data]
crop = 64
[model]
feature_size = 12
[pretrain]
seeds = [1]
[finetune]
seeds = [1]
baseline_seeds = [1]
[sweep]
"data.crop" = [64, 96]
"pretrain.base_lr" = [0.0125, 0.025]
"model.depths" = [[2, 2, 2, 2]]
[[intervals]]
i_min = 0.3
i_max = 0.6
[resources.pretrain]
gpus = 2
time_min = 60
"""
FLARE = {"part": "test", "dsc": 0.81, "nsd": 0.77,
         "per_organ": {"liver": {"dsc": 0.95, "nsd": 0.9}}, "per_case": {"c1": {"liver": {"dsc": 0.95, "nsd": 0.9}}}}
TEST = {"dsc": 0.79, "dsc_3d": 0.75, "per_case": {"c9": {"liver": 0.9}}, "per_organ": {"liver": 0.9}, "slices": 40}
PER_ORGAN = {"liver": 0.9, "pancreas": None, "spleen": 0.7}
HEAD = ["study", "stage", "run_id", "parent", "interval", "i_min", "i_max", "random_crop", "pretrain_seed", "seed",
        "data.crop", "pretrain.base_lr", "model.depths", "status", "status_reason", "imported", "attempts", "job_id",
        "gpu_hours", "dsc", "dsc_3d", "test_dsc", "test_dsc_3d", "flare_dsc", "flare_nsd", "flare_part"]
TAIL = ["best_epoch", "checkpoint_path", "checkpoint_sha256", "run_dir"]


@pytest.fixture
def finished(registry_db, tmp_path):
    """The study planned; one fine-tune ingested from a full result v2 with a metric series; one pretrain whose
    job ran 90 minutes on 2 GPUs (recorded after the sync, and ended: its SLURM job id must never be looked up
    on a real cluster, where job 42 may exist)."""
    (tmp_path / "ex.toml").write_text(STUDY)
    plan_grid(tmp_path / "ex.toml", registry_db, check_data=False)
    registry = open_registry(registry_db)
    with registry.session() as session:
        runs = repo.study_runs(session, "ex")
        tuned = next(r for r in runs if r.parent_id and r.point["data.crop"] == 96)
        pretrain = next(r for r in runs if r.id == tuned.parent_id)
        repo.set_status(session, tuned, RunStatus.SUBMITTING)
        repo.add_attempt(session, run_id=tuned.id, executor="local", job_id="999999999", status=RunStatus.PENDING)
        repo.set_status(session, tuned, RunStatus.PENDING)
        payload = valid_result(tuned, dsc=0.8, dsc_3d=0.7, test=TEST, flare=FLARE, per_organ=PER_ORGAN)
        Path(tuned.run_dir).mkdir(parents=True, exist_ok=True)
        (Path(tuned.run_dir) / "result.json").write_text(json.dumps(payload))
        (Path(tuned.run_dir) / "metrics.jsonl").write_text("".join(
            json.dumps({"epoch": e, "step": 3 * e, "loss": 1 / (e + 1), **({"val_dsc": 0.5 + e / 10} if e else {})})
            + "\n" for e in range(3)))
        ids = {"tuned": tuned.id, "pretrain": pretrain.id, "sha": payload["checkpoint_sha256"]}
    with registry.session() as session:
        sync(session)
    with registry.session() as session:
        pretrain = repo.get_run(session, ids["pretrain"])
        start = dt.datetime(2026, 1, 1, 8, 0)
        repo.set_status(session, pretrain, RunStatus.SUBMITTING)
        repo.add_attempt(session, run_id=pretrain.id, executor="slurm", job_id="42", status=RunStatus.RUNNING,
                         started_at=start, ended_at=start + dt.timedelta(minutes=90))
        repo.set_status(session, pretrain, RunStatus.RUNNING)
        repo.set_status(session, pretrain, RunStatus.FAILED, "ran out of time")
    registry.dispose()
    return registry_db, ids


def test_one_row_per_run_with_every_column(finished):
    db, ids = finished
    frame = api.runs(db)
    columns = list(frame.columns)
    settings = columns[len(HEAD) + 3 + len(TAIL):]
    assert columns[:len(HEAD) + 3 + len(TAIL)] == [*HEAD, "dsc_liver", "dsc_pancreas", "dsc_spleen", *TAIL]
    # then every other setting each run ran with (issue 22: not only what the study sweeps), in name order
    assert settings == sorted(settings) and {"data.split", "finetune.epochs", "model.feature_size",
                                             "pretrain.epochs", "runtime.precision", "sampler.mode"} <= set(settings)
    assert not {"stage", "seed", "data.crop", "pretrain.base_lr", "model.depths"} & set(settings)  # shown once
    assert len(frame) == 4 + 4 + 2  # pretrains, their fine-tunes, a baseline per crop
    assert frame.run_id.is_unique and set(frame.study) == {"ex"}
    row = frame.set_index("run_id").loc[ids["tuned"]]
    assert (row.stage, row.parent, row.interval, row.status, row.attempts) == (
        "finetune", ids["pretrain"], "[0.3, 0.6]", "COMPLETED", 1)
    assert (row["data.crop"], row["model.depths"]) == (96, "[2, 2, 2, 2]")
    assert row["model.feature_size"] == 12 and row["finetune.epochs"] > 0 and pd.isna(row["sampler.mode"])
    assert frame.set_index("run_id").loc[ids["pretrain"], "sampler.mode"] is not None  # a pretrain setting
    assert (row.dsc, row.dsc_3d, row.test_dsc, row.test_dsc_3d) == (0.8, 0.7, 0.79, 0.75)
    assert (row.flare_dsc, row.flare_nsd, row.flare_part) == (0.81, 0.77, "test")
    assert (row.dsc_liver, row.dsc_spleen) == (0.9, 0.7) and pd.isna(row.dsc_pancreas)
    assert row.best_epoch == 2 and row.checkpoint_sha256 == ids["sha"] and row.checkpoint_path.endswith(".json")
    pretrain = frame.set_index("run_id").loc[ids["pretrain"]]
    assert pretrain.gpu_hours == pytest.approx(1.5 * 2) and pretrain.job_id == "42"  # 90 min on 2 GPUs
    baseline = frame[frame.parent.isna() & (frame.stage == "finetune")]
    assert baseline["pretrain.base_lr"].isna().all() and sorted(baseline["data.crop"]) == [64, 96]
    assert str(frame["data.crop"].dtype) == "Int64" and str(frame.seed.dtype) == "Int64"
    untouched = frame[frame.status == "PLANNED"]
    assert (untouched.gpu_hours == 0).all() and untouched.dsc.isna().all()
    assert list(frame.interval[:2]) == ["no pretraining", "no pretraining"]  # the report's group order


def test_metrics_in_long_form(finished):
    db, ids = finished
    frame = api.metrics(db, study="ex")
    assert list(frame.columns) == ["study", "run_id", "stage", "interval", "pretrain_seed", "seed", "data.crop",
                                   "pretrain.base_lr", "model.depths", "metric", "epoch", "step", "value"]
    assert set(frame.run_id) == {ids["tuned"]} and len(frame) == 3 + 2
    loss = frame[frame.metric == "loss"]
    assert list(loss.epoch) == [1, 2, 3] and list(loss.step) == [0, 3, 6]  # epochs from 1, as logs and plots
    assert list(loss.value) == pytest.approx([1, 1 / 2, 1 / 3])
    assert set(loss["data.crop"]) == {96}
    only = api.metrics(db, names="val_dsc", run=ids["tuned"][:6])
    assert list(only.value) == pytest.approx([0.6, 0.7]) and set(only.metric) == {"val_dsc"}
    assert api.metrics(db, stage="pretrain").empty


def test_report_as_a_table(finished):
    db, _ = finished
    frame = api.report(db, by="data.crop,interval")
    assert list(frame.group) == ["data.crop=64, no pretraining", "data.crop=64, [0.3, 0.6]",
                                 "data.crop=96, no pretraining", "data.crop=96, [0.3, 0.6]"]
    assert list(frame["data.crop"]) == [64, 64, 96, 96] and "interval" in frame.columns
    done = frame[frame.group == "data.crop=96, [0.3, 0.6]"].iloc[0]
    # Its run recorded held-out test cases: the group's number is theirs, the selection cases' beside it.
    assert (done.n, done.planned, done["mean"], done["values"]) == (1, 2, 0.79, [0.79])
    assert (done.cases, done.selection_mean, done.flare_dsc, done.flare_part) == ("test", 0.8, 0.81, "test")
    assert {"std", "delta_ci95_low", "delta_ci95_high", "ci_note", "delta", "test", "p", "p_holm", "pairing",
            "mean_ci95_low", "mean_ci95_high", "run_ids", "metric", "baseline"} <= set(frame.columns)
    assert not {"paired_delta", "p_paired", "p_welch"} & set(frame.columns)
    assert list(frame.baseline) == [True, False, True, False]


def _cells(frame: pd.DataFrame) -> list[list[object]]:
    """Values comparable across formats: missing as None, numbers as floats."""
    def cell(value: object) -> object:
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            return None
        if isinstance(value, bool):
            return value
        return float(value) if isinstance(value, int | float) else value

    return [[cell(v) for v in row] for row in frame.astype(object).itertuples(index=False)]


IDS = {name: str for name in ("run_id", "parent", "job_id", "checkpoint_sha256", "status_reason")}
READERS = {
    "csv": lambda path: pd.read_csv(path, dtype=IDS),
    "jsonl": lambda path: pd.read_json(path, lines=True, dtype=IDS, precise_float=True),
    "parquet": pd.read_parquet,
}


@pytest.mark.parametrize("fmt", list(READERS))
def test_each_format_reads_back_as_written(finished, tmp_path, fmt):
    db, _ = finished
    expected = api.runs(db)
    path = tmp_path / f"runs.{fmt}"
    result = CliRunner().invoke(app, ["export", "runs", "--db", db, "--output", str(path)])
    assert result.exit_code == 0, result.output
    back = READERS[fmt](path)
    assert list(back.columns) == list(expected.columns)
    assert _cells(back) == _cells(expected)
    if fmt == "parquet":
        pd.testing.assert_frame_equal(back, expected)  # dtypes too


def test_csv_and_jsonl_on_stdout_and_metrics_through_the_cli(finished):
    db, ids = finished
    out = CliRunner().invoke(app, ["export", "runs", "--db", db, "--study", "ex"])
    assert out.exit_code == 0 and out.stdout.splitlines()[0].startswith("study,stage,run_id,parent,interval")
    lines = CliRunner().invoke(app, ["export", "metrics", "--db", db, "--format", "jsonl", "--metric", "loss"]).stdout
    rows = [json.loads(line) for line in lines.splitlines()]
    assert [(r["run_id"], r["metric"], r["epoch"]) for r in rows] == [(ids["tuned"], "loss", e) for e in range(1, 4)]
    assert all(r["data.crop"] == 96 and math.isclose(r["pretrain.base_lr"], rows[0]["pretrain.base_lr"]) for r in rows)


def test_the_api_refuses_what_the_cli_refuses(finished):
    db, _ = finished
    with pytest.raises(NotFound, match="unknown study 'nope'"):
        api.runs(db, study="nope")
    with pytest.raises(ConfigError, match="stage must be pretrain or finetune"):
        api.metrics(db, stage="both")
    with pytest.raises(ConfigError, match="--by 'data.crp' is no axis"):
        api.report(db, by="data.crp")


def test_parquet_without_pyarrow_says_what_to_install(finished, tmp_path, monkeypatch):
    import importlib.util

    db, _ = finished
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a))
    result = CliRunner().invoke(app, ["export", "runs", "--db", db, "-o", str(tmp_path / "r.parquet")])
    assert result.exit_code == 1 and "Parquet needs pyarrow" in result.stderr
    assert not (tmp_path / "r.parquet").exists()
