"""Watching a study: live columns in status, --watch, ioussl logs, and the local executor's progress bar.

Registry states are set directly where a test needs a run RUNNING with a metrics file; the logs and the
progress bar come from real local submitit jobs (the synthetic workload).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from studyfiles import tiny_study
from typer.testing import CliRunner

from ioussl.cli import app
from ioussl.plan.service import plan_grid
from ioussl.registry import open_registry
from ioussl.registry.models import Attempt, Run
from ioussl.status import RunStatus as S
from ioussl.submit import service as jobservice
from ioussl.submit import workload

runner = CliRunner()
FACTORY = "ioussl.submit.workload:make_job"

STUDY = tiny_study("watched")


def invoke(*args: str, **kwargs):
    return runner.invoke(app, list(args), **kwargs)


def one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert "Traceback" not in result.output


@pytest.fixture
def study(tmp_path) -> str:
    (tmp_path / "study.toml").write_text(STUDY)
    db = str(tmp_path / "registry.db")
    plan_grid(tmp_path / "study.toml", db, check_data=False)
    return db


def runs_of(db: str) -> dict[str, Run]:
    registry = open_registry(db, create=False)
    try:
        with registry.session(write=False) as session:
            runs = list(session.scalars(select(Run)))
            for run in runs:
                _ = run.attempts
            return {f"{run.stage}{run.seed}": run for run in runs}
    finally:
        registry.dispose()


def set_status(db: str, statuses: dict[str, S], job: bool = True) -> None:
    """Move runs (by "pretrain1", "finetune2", ...) to a status, with a SLURM attempt when active."""
    registry = open_registry(db, create=False)
    with registry.session() as session:
        for run in session.scalars(select(Run)):
            status = statuses.get(f"{run.stage}{run.seed}")
            if status is None:
                continue
            run.status = status
            if job and not run.attempts:
                session.add(Attempt(run_id=run.id, executor="slurm", job_id="4242", status=status))
    registry.dispose()


def metrics(run: Run, epochs_done: int, stage: str = "pretrain") -> None:
    now = time.time()
    Path(run.run_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(run.run_dir) / "metrics.jsonl", "w") as handle:
        for epoch in range(epochs_done):
            elapsed = 60.0 * (epoch + 1)
            line = {"stage": stage, "epoch": epoch, "epochs": 100, "step": 312 * (epoch + 1), "steps_total": 31200,
                    "time": now - 60.0 * (epochs_done - epoch - 1), "elapsed_s": elapsed, "items_per_s": 399.5,
                    "loss": 0.9 - epoch / 10}
            if stage == "finetune" and epoch >= 1:
                line.update(last_val_dsc=0.5 + epoch / 100, last_val_epoch=epoch)
            handle.write(json.dumps(line) + "\n")


def test_status_shows_live_columns_for_running_runs(study):
    runs = runs_of(study)
    set_status(study, {"pretrain1": S.COMPLETED, "finetune1": S.RUNNING, "finetune2": S.RUNNING})
    metrics(runs["finetune1"], 3, stage="finetune")
    Path(runs["finetune2"].run_dir).mkdir(parents=True)
    Path(runs["finetune2"].run_dir, "metrics.jsonl").write_text('{"epoch": -1}\n')
    result = invoke("status", "--db", study, "--no-sync")
    assert result.exit_code == 0, result.output
    row = next(x for x in result.output.splitlines() if runs["finetune1"].id in x)
    for cell in ("RUNNING", "3/100", "936/31,200", "val 0.520", "399.5 slices/s"):
        assert cell in row
    assert f"run {runs['finetune2'].id}: no live progress: metrics.jsonl last line: epoch -1 is outside" \
        in result.output
    rows = {r["id"]: r for r in json.loads(invoke("status", "--db", study, "--no-sync", "--json").stdout)}
    live = rows[runs["finetune1"].id]["progress"]
    assert (live["epoch"], live["step"], live["val_dsc"], live["unit"]) == (3, 936, 0.52, "slices/s")
    assert 97 * 60 - 70 < live["eta_s"] <= 97 * 60  # 97 epochs of a minute, less the seconds since the line
    assert rows[runs["pretrain1"].id]["progress"] is None


def test_status_reads_run_files_of_running_runs_only(study):
    runs = runs_of(study)
    for run in runs.values():  # a FIFO would hang any reader that opened it
        Path(run.run_dir).mkdir(parents=True)
        os.mkfifo(Path(run.run_dir) / "metrics.jsonl")
    set_status(study, {"pretrain1": S.COMPLETED, "finetune1": S.FAILED}, job=False)
    result = invoke("status", "--db", study, "--no-sync")
    assert result.exit_code == 0 and "no live progress" not in result.output
    assert "epoch" not in result.output.splitlines()[2]  # no live columns without a running run


def test_status_says_which_fine_tunes_wait_for_submit(study):
    runs = runs_of(study)
    set_status(study, {"pretrain1": S.COMPLETED}, job=False)
    result = invoke("status", "--db", study, "--no-sync")
    assert "2 fine-tune(s) wait for `ioussl submit`: their pretrain completed but nothing submitted them" \
        in " ".join(result.output.split())
    rows = json.loads(invoke("status", "--db", study, "--no-sync", "--json").stdout)
    assert {r["id"] for r in rows if r["waits_for_submit"]} == {runs["finetune1"].id, runs["finetune2"].id}
    quiet = invoke("status", "--db", study, "--no-sync", "--stage", "pretrain")
    assert "wait for" not in quiet.output


def test_watch_ends_when_every_run_has_ended(study):
    set_status(study, {"pretrain1": S.COMPLETED, "finetune1": S.COMPLETED, "finetune2": S.RUNNING})

    def finish() -> None:
        time.sleep(1.5)
        set_status(study, {"finetune2": S.COMPLETED})

    threading.Thread(target=finish).start()
    started = time.monotonic()
    result = invoke("status", "--db", study, "--no-sync", "--watch", "1")
    assert result.exit_code == 0, result.output
    assert 1.0 < time.monotonic() - started < 20
    assert "every run has ended (3 run(s))" in result.output and "3 completed" in result.output


def test_watch_stops_at_once_when_nothing_is_queued_or_running(study):
    started = time.monotonic()
    result = invoke("status", "--db", study, "--no-sync", "--watch", "1.5")
    assert time.monotonic() - started < 1.5  # no redraw: there is nothing to watch
    assert result.exit_code == 1
    assert "3 planned" in result.output  # the table, once
    assert result.stderr.strip().splitlines() == [
        "stopped watching: nothing is queued or running, and 3 planned run(s) wait for `ioussl submit`"]


def test_watch_stops_when_nothing_has_moved_for_a_while(study, monkeypatch):
    from ioussl.track import progress

    monkeypatch.setattr(progress, "WATCH_IDLE_S", 1.5)
    set_status(study, {"pretrain1": S.RUNNING})

    def stall() -> None:
        time.sleep(1.2)
        set_status(study, {"pretrain1": S.COMPLETED})  # its fine-tunes stay planned: nobody submits them

    threading.Thread(target=stall).start()
    started = time.monotonic()
    result = invoke("status", "--db", study, "--no-sync", "--watch", "1")
    assert time.monotonic() - started >= 1.2 + 1.5
    assert result.exit_code == 1
    assert "stopped watching: nothing is queued or running, and 2 planned run(s) wait for `ioussl submit`" \
        in result.stderr


def test_watch_bad_input(tmp_path, study):
    empty = str(tmp_path / "empty.db")
    open_registry(empty, create=True).dispose()
    one_line_error(invoke("status", "--db", empty, "--watch", "1"), "nothing to watch: no runs match")
    registry = open_registry(study, create=False)
    with registry.session() as session:
        from ioussl.registry import repo

        repo.get_or_create_study(session, "hollow", None, {}, str(tmp_path / "hollow"))
    registry.dispose()
    one_line_error(invoke("status", "--db", study, "--study", "hollow", "--watch", "1"), "nothing to watch")
    one_line_error(invoke("status", "--db", study, "--watch", "1", "--json"), "--watch redraws a table")
    one_line_error(invoke("status", "--db", str(tmp_path / "none.db"), "--watch", "1"), "no registry at")


def test_logs_of_an_unknown_run_is_one_line(study):
    one_line_error(invoke("logs", "nope", "--db", study), "unknown run 'nope'")
    one_line_error(invoke("logs", "zzzz", "--db", study, "--follow"), "unknown run 'zzzz'")


def test_logs_of_a_planned_run_says_there_is_no_job(study):
    run = runs_of(study)["pretrain1"]
    result = invoke("logs", run.id[:6], "--db", study)
    assert result.exit_code == 0
    assert f"run {run.id}: pretrain, [0.3, 0.6], study watched: PLANNED" in result.output
    assert "no job output: no job yet: the run was never submitted" in result.output
    assert "(none yet)" in result.output


def _submit_local(db: str, tmp_path: Path, **spec) -> jobservice.SubmitOutcome:
    from ioussl.backends.local import LocalBackend

    for run in runs_of(db).values():
        workload.write_spec(run.run_dir, **spec)
    return jobservice.submit(db, "watched", backend=LocalBackend(tmp_path / "runs" / "_submitit"),
                             factory=workload.make_job, max_parallel=2)


def test_logs_prints_the_job_output_and_events_of_a_local_run(study, tmp_path):
    _submit_local(study, tmp_path, steps=2, step_s=0.1)
    run = runs_of(study)["pretrain1"]
    job = run.attempts[-1].job_id
    (tmp_path / "runs" / "_submitit" / "local" / f"ioussl-{run.id}" / job / f"{job}_0_log.out").open("a").write(
        "progress 10%\r\x1b[31mprogress 100%\x1b[0m\n")  # what a progress bar would leave in the log
    result = invoke("logs", run.id, "--db", study)
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"attempt 1: local job {job}" in out  # "on localhost" once a sync saw it run
    assert "started  attempt=1" in out and "finished" in out
    assert f"--- job stdout: {tmp_path / 'runs' / '_submitit' / 'local' / f'ioussl-{run.id}' / job}" in out
    assert "submitit INFO" in out and "Job completed successfully" in out
    assert "progress 100%\n" in out and "\x1b" not in out and "progress 10%" not in out


@pytest.mark.slow
def test_logs_follow_prints_until_the_run_has_ended(study, tmp_path, monkeypatch):
    from ioussl.cli import logs

    monkeypatch.setattr(logs, "POLL_S", 0.2)
    monkeypatch.setattr(logs, "SYNC_EVERY_S", 0.5)
    worker = threading.Thread(target=_submit_local, args=(study, tmp_path), kwargs={"steps": 12, "step_s": 0.5})
    worker.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not runs_of(study)["pretrain1"].attempts:
        time.sleep(0.2)
    run = runs_of(study)["pretrain1"]
    live = None
    while time.monotonic() < deadline and live is None:  # status reads the running job's metrics.jsonl
        rows = json.loads(invoke("status", "--db", study, "--json").stdout)
        live = next(r["progress"] for r in rows if r["id"] == run.id)
        time.sleep(0.2)
    assert live["epochs"] == 12 and 1 <= live["epoch"] <= 12 and live["items_per_s"] == 2.0
    result = invoke("logs", run.id, "--db", study, "--follow")
    worker.join(timeout=120)
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.rstrip().splitlines()[-1].startswith(f"run {run.id} ended: COMPLETED")
    assert out.index("started  attempt=1") < out.index("  finished  ") < out.index("Job completed successfully")
    assert out.count("started  attempt=1") == 1 and out.count("Job completed successfully") == 1  # each once
    assert out.count("[ioussl synthetic] step 12/12 loss 0.0833") == 1


def test_submit_local_shows_a_progress_bar(study, tmp_path, monkeypatch):
    monkeypatch.setenv("IOUSSL_JOB_FACTORY", FACTORY)
    for run in runs_of(study).values():
        workload.write_spec(run.run_dir, steps=2, step_s=0.1)
    result = invoke("submit", "--db", study, "--executor", "local", "--max-parallel", "2")
    assert result.exit_code == 0, result.output
    assert "runs (3 completed)" in result.output and "3/3" in result.output
    assert result.output.index("3/3") < result.output.index("study watched: submitted 3 run(s)")
