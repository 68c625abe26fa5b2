"""`ioussl export tensorboard` and `ioussl export mlflow`, read back by TensorBoard's event reader and the
MLflow client; a second export neither doubles a curve nor duplicates a run."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from registryfix import valid_result
from typer.testing import CliRunner

from ioussl.cli import app
from ioussl.plan.service import plan_grid
from ioussl.registry import open_registry, repo
from ioussl.report import eventfile
from ioussl.report.external import safe_name
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
[[intervals]]
i_min = 0.3
i_max = 0.6
"""
STARTED = dt.datetime(2026, 1, 5, 9, 0, 0)
LOSS = [1.0, 0.5, 1 / 3]
VAL_DSC = {1: 0.6, 2: 0.7}  # 0-based epoch -> value (epoch 0 was not evaluated)
ORGANS = {"liver": 0.9, "spleen": 0.7, "pancreas": None}


@pytest.fixture
def finished(db, tmp_path) -> tuple[str, dict[str, str]]:
    """The study planned (6 runs); a crop-96 fine-tune and its pretrain ingested with their series; the rest
    planned."""
    (tmp_path / "ex.toml").write_text(STUDY)
    plan_grid(tmp_path / "ex.toml", db, check_data=False)
    registry = open_registry(db)
    with registry.session() as session:
        runs = repo.study_runs(session, "ex")
        tuned = next(r for r in runs if r.parent_id and r.point["data.crop"] == 96)
        pretrain = next(r for r in runs if r.id == tuned.parent_id)
        for number, run in enumerate((pretrain, tuned)):
            repo.set_status(session, run, RunStatus.SUBMITTING)
            repo.add_attempt(session, run_id=run.id, executor="local", job_id=str(999990 + number),
                             status=RunStatus.PENDING, started_at=STARTED)
            repo.set_status(session, run, RunStatus.PENDING)
            Path(run.run_dir).mkdir(parents=True, exist_ok=True)
            if run is tuned:
                payload = valid_result(run, dsc=0.8, best_epoch=2, per_organ=ORGANS)
                lines = [{"epoch": e, "step": 3 * e, "loss": LOSS[e], **({"val_dsc": VAL_DSC[e]} if e else {})}
                         for e in range(3)]
            else:
                payload = valid_result(run)
                lines = [{"epoch": e, "step": 3 * e, "loss": -0.1 * e, "collapse": 0.9 - 0.1 * e} for e in range(2)]
            (Path(run.run_dir) / "result.json").write_text(json.dumps(payload))
            (Path(run.run_dir) / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        ids = {"tuned": tuned.id, "pretrain": pretrain.id}
    with registry.session() as session:
        sync(session)
    registry.dispose()
    return db, ids


def _export(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["export", *args])


def _accumulator(folder: Path):  # type: ignore[no-untyped-def]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def test_tensorboard_reads_every_series_score_and_config_back(finished, tmp_path):
    db, ids = finished
    out = tmp_path / "tb"
    result = _export("tensorboard", str(out), "--db", db)
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == f"wrote 12 value(s) of 6 run(s) under {out}", result.stderr
    folders = sorted(p.parent.relative_to(out).as_posix() for p in out.rglob(eventfile.FILE_NAME))
    assert len(folders) == 6 and f"ex/0.3_0.6/finetune-data.crop=96-ps1-s1-{ids['tuned']}" in folders
    assert sorted(f.rsplit("-", 1)[0] for f in folders if "/no_pretraining/" in f) == [
        "ex/no_pretraining/finetune-data.crop=64-s1", "ex/no_pretraining/finetune-data.crop=96-s1"]
    tuned = _accumulator(out / "ex" / "0.3_0.6" / f"finetune-data.crop=96-ps1-s1-{ids['tuned']}")
    assert sorted(tuned.Tags()["scalars"]) == ["finetune/loss", "finetune/val_dsc", "scores/dsc", "scores/dsc_liver",
                                               "scores/dsc_spleen"]
    loss = tuned.Scalars("finetune/loss")
    assert [e.step for e in loss] == [1, 2, 3]  # epochs from 1, as logs and plots count them
    assert [e.value for e in loss] == pytest.approx(LOSS, rel=1e-6)
    assert [(e.step, round(e.value, 6)) for e in tuned.Scalars("finetune/val_dsc")] == [(2, 0.6), (3, 0.7)]
    assert [(e.step, e.value) for e in tuned.Scalars("scores/dsc")] == [(3, pytest.approx(0.8))]  # at the best epoch
    assert loss[0].wall_time == STARTED.replace(tzinfo=dt.UTC).timestamp()
    (config,) = tuned.Tensors("config")
    text = config.tensor_proto.string_val[0].decode()
    assert f"| run | {ids['tuned']} |" in text and "| data.crop | 96 |" in text and "| status | COMPLETED |" in text
    pretrain = _accumulator(out / "ex" / "0.3_0.6" / f"pretrain-data.crop=96-s1-{ids['pretrain']}")
    assert [(e.step, round(e.value, 6)) for e in pretrain.Scalars("pretrain/collapse")] == [(1, 0.9), (2, 0.8)]


def test_a_second_tensorboard_export_replaces_each_file_instead_of_doubling_it(finished, tmp_path):
    db, ids = finished
    out = tmp_path / "tb"
    assert _export("tensorboard", str(out), "--db", db).exit_code == 0
    first = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert _export("tensorboard", str(out), "--db", db).exit_code == 0
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == first  # same files, same bytes
    tuned = _accumulator(out / "ex" / "0.3_0.6" / f"finetune-data.crop=96-ps1-s1-{ids['tuned']}")
    assert len(tuned.Scalars("finetune/loss")) == 3


def test_tensorboard_export_into_a_file_is_one_line(finished, tmp_path):
    db, _ = finished
    target = tmp_path / "file"
    target.write_text("x")
    result = _export("tensorboard", str(target), "--db", db)
    assert result.exit_code == 1 and result.stderr == f"error: cannot export to {target}: it is a file; give a folder\n"


def test_registry_strings_become_safe_folder_names():
    assert [safe_name(s) for s in ("[0.3, 0.6]", "../../etc", "a/../b", "random crop [0, 1]", "\x1b[31m", "..")] \
        == ["0.3_0.6", "etc", "a_.._b", "random_crop_0_1", "31m", "_"]
    assert all("/" not in safe_name(s) and safe_name(s) not in (".", "..") for s in ("/", "./.", "x/y"))


def test_the_event_file_framing_is_tensorflows():
    assert eventfile.crc32c(b"123456789") == 0xE3069283  # CRC-32C's check value
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    for data in (b"", b"abc", bytes(range(256)) * 3):
        assert eventfile.masked_crc(data) == masked_crc32c(data)


@pytest.mark.slow
def test_mlflow_gets_runs_parameters_series_and_states_and_a_second_export_adds_nothing(finished, tmp_path):
    from mlflow.tracking import MlflowClient

    db, ids = finished
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = _export("mlflow", "--tracking-uri", uri, "--db", db)
    assert result.exit_code == 0, result.output
    assert result.stderr == f"exported 6 run(s), 12 new value(s), to {uri}\n"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("ex")
    runs = {r.data.tags["ioussl.run_id"]: r for r in client.search_runs([experiment.experiment_id])}
    assert len(runs) == 6
    tuned, pretrain = runs[ids["tuned"]], runs[ids["pretrain"]]
    assert (tuned.info.status, pretrain.info.status) == ("FINISHED", "FINISHED")
    assert sorted(r.info.status for r in runs.values()) == ["FINISHED"] * 2 + ["SCHEDULED"] * 4
    assert tuned.data.params["data.crop"] == "96" and tuned.data.tags["ioussl.group"] == "[0.3, 0.6]"
    assert tuned.data.tags["mlflow.parentRunId"] == pretrain.info.run_id  # nested under its pretraining
    history = client.get_metric_history(tuned.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == list(zip([1, 2, 3], LOSS, strict=True))
    assert [(m.step, m.value) for m in client.get_metric_history(tuned.info.run_id, "dsc")] == [(3, 0.8)]
    assert tuned.data.metrics["dsc_liver"] == 0.9 and "dsc_pancreas" not in tuned.data.metrics

    again = _export("mlflow", "--tracking-uri", uri, "--db", db)
    assert again.exit_code == 0 and again.stderr == f"exported 6 run(s), 0 new value(s), to {uri}\n"
    assert len(client.search_runs([experiment.experiment_id])) == 6
    assert len(client.get_metric_history(tuned.info.run_id, "loss")) == 3


def test_mlflow_missing_or_a_bad_tracking_uri_is_one_line(finished, tmp_path, monkeypatch):
    db, _ = finished
    import sys

    for name in [name for name in sys.modules if name == "mlflow" or name.startswith("mlflow.")] + ["mlflow"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if the extra were not installed
    result = _export("mlflow", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--db", db)
    assert result.exit_code == 1 and result.stderr == (
        "error: export mlflow needs the MLflow client, which is not installed: pip install 'ioussl[mlflow]'\n")
    monkeypatch.undo()
    result = _export("mlflow", "--tracking-uri", "nonsense://where", "--db", db)
    assert result.exit_code == 1 and result.stderr.startswith("error: --tracking-uri nonsense://where: ")
    assert len(result.stderr.strip().splitlines()) == 1
    result = _export("mlflow", "--tracking-uri", f"sqlite:///{tmp_path}", "--db", db)  # a folder, not a database
    assert result.exit_code == 1 and result.stderr == (
        f"error: --tracking-uri sqlite:///{tmp_path}: {tmp_path} is a folder; name a database file in it\n")
    (tmp_path / "notes.txt").write_text("not a database")
    result = _export("mlflow", "--tracking-uri", f"sqlite:///{tmp_path / 'notes.txt'}", "--db", db)
    assert result.exit_code == 1 and result.stderr.endswith("notes.txt is not a SQLite database\n")
    assert (tmp_path / "notes.txt").read_text() == "not a database"
