"""Day two with a study: re-plan a fixed study and prune what it no longer plans, archive and restore, reset
runs to PLANNED, confirmations and --dry-run on cancel/retry/reset/archive, `plan grid -s` overrides, and
alerts configured in the study file or the user's config file."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
from registryfix import dump
from sqlalchemy import select
from studyfiles import tiny_study
from typer.testing import CliRunner

from ioussl.cli import app, cleanup
from ioussl.registry import open_registry
from ioussl.registry.models import Attempt, Run, Study
from ioussl.status import RunStatus as S
from ioussl.track import alerts


def invoke(*args: str, input: str | None = None):  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(app, list(args), input=input)
    assert "Traceback" not in result.output
    return result


def one_line_error(result, fragment: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


def rows(db: str, *extra: str) -> dict[str, dict]:
    result = invoke("status", "--db", db, "--json", "--no-sync", *extra)
    assert result.exit_code == 0, result.output
    return {f"{r['stage']}{r['seed']}": r for r in json.loads(result.stdout)}


def count(db: str) -> int:
    return len(json.loads(invoke("status", "--db", db, "--json", "--no-sync").stdout))


def set_status(db: str, statuses: dict[str, S], attempts: int = 1) -> None:
    """Runs (by "pretrain1", "finetune2") to a status, each with ``attempts`` ended local attempts."""
    registry = open_registry(db, create=False)
    with registry.session() as session:
        for run in session.scalars(select(Run)):
            status = statuses.get(f"{run.stage}{run.seed}")
            if status is not None:
                run.status, run.status_reason = status, f"set to {status} by the test"
                for _ in range(attempts):
                    session.add(Attempt(run_id=run.id, executor="local", job_id="1", status=status))
    registry.dispose()


@pytest.fixture
def study(tmp_path) -> tuple[str, Path]:
    path = tmp_path / "study.toml"
    path.write_text(tiny_study("daytwo"))
    db = str(tmp_path / "registry.db")
    assert invoke("plan", "grid", str(path), "--db", db, "--no-check-data").exit_code == 0
    return db, path


def test_a_fixed_study_replanned_with_prune_archives_the_old_runs_and_restore_brings_them_back(study):
    db, path = study
    old = rows(db)
    set_status(db, {"pretrain1": S.FAILED, "finetune1": S.BLOCKED, "finetune2": S.BLOCKED})
    path.write_text(path.read_text().replace("feature_size = 12", "feature_size = 24"))  # the fix

    replanned = invoke("plan", "grid", str(path), "--db", db, "--no-check-data")
    assert replanned.exit_code == 0, replanned.output
    assert "3 recorded run(s) are no longer in the study file" in replanned.stdout and "--prune" in replanned.stdout
    assert count(db) == 6  # without --prune both generations show

    dry = invoke("plan", "grid", str(path), "--db", db, "--no-check-data", "--prune", "--dry-run")
    assert "3 run(s) no longer in the study file: would be archived" in dry.stdout and count(db) == 6
    pruned = invoke("plan", "grid", str(path), "--db", db, "--no-check-data", "--prune")
    assert "3 run(s) no longer in the study file: archived" in pruned.stdout
    now = rows(db)
    assert len(now) == 3 and {r["id"] for r in now.values()}.isdisjoint(r["id"] for r in old.values())
    assert {r["status"] for r in now.values()} == {"PLANNED"}
    report = invoke("report", "--db", db, "--format", "csv")
    assert all(r["id"] not in report.stdout for r in old.values())
    registry = open_registry(db, create=False)
    with registry.session(write=False) as session:
        kept = {run.id: run for run in session.scalars(select(Run)) if run.archived_at is not None}
        assert set(kept) == {r["id"] for r in old.values()}  # hidden, not deleted: attempts and all
        assert all(len(run.attempts) == 1 for run in kept.values())
    registry.dispose()

    fine_tune = old["finetune1"]["id"]
    restored = invoke("archive", "--db", db, "--run", fine_tune, "--restore")
    assert restored.exit_code == 0, restored.output
    assert "restored 2 run(s)" in restored.stdout  # the fine-tune brings its pretrain back
    assert {old["pretrain1"]["id"], fine_tune} <= {r["id"] for r in json.loads(
        invoke("status", "--db", db, "--json", "--no-sync").stdout)}

    path.write_text(path.read_text().replace("feature_size = 24", "feature_size = 12"))
    again = invoke("plan", "grid", str(path), "--db", db, "--no-check-data")
    assert "1 archived run(s) planned again: restored" in again.stdout  # finetune2 comes back too


def test_archive_refuses_active_runs_and_takes_fine_tunes_with_their_pretrain(study):
    db, _ = study
    set_status(db, {"finetune2": S.RUNNING})
    pretrain = rows(db)["pretrain1"]["id"]
    refused = invoke("archive", "--db", db, "--run", pretrain, "--yes")
    one_line_error(refused, "nothing to archive: 1 running fine-tune of an archived pretrain: cancel it first")
    set_status(db, {"finetune2": S.CANCELLED})
    done = invoke("archive", "--db", db, "--run", pretrain, "--yes")
    assert done.exit_code == 0 and "archived 3 run(s)" in done.stdout
    assert invoke("status", "--db", db, "--no-sync").stdout.strip() == "no runs match"
    submitted = invoke("submit", "--db", db, "--executor", "local")
    assert submitted.exit_code == 0 and "submitted 0 run(s)" in submitted.stdout  # archived: never submitted


def test_reset_puts_ended_runs_back_to_planned_keeping_their_attempts(study):
    db, _ = study
    set_status(db, {"pretrain1": S.FAILED, "finetune1": S.BLOCKED, "finetune2": S.COMPLETED}, attempts=2)
    before = dump(db)
    dry = invoke("reset", "--db", db, "--study", "daytwo", "--dry-run")
    assert dry.exit_code == 0 and "would reset 2 run(s)" in dry.stdout
    assert "completed: a result is never rewritten" in dry.stdout and dump(db) == before

    done = invoke("reset", "--db", db, "--study", "daytwo")  # not a terminal: no question asked
    assert done.exit_code == 0, done.output
    after = rows(db)
    assert after["pretrain1"]["status"] == after["finetune1"]["status"] == "PLANNED"
    assert after["pretrain1"]["attempts"] == 2 and "2 earlier attempt(s) kept" in after["pretrain1"]["reason"]
    assert after["finetune2"]["status"] == "COMPLETED"
    one_line_error(invoke("reset", "--db", db, "--run", after["finetune2"]["id"]),
                   "nothing to reset: 1 completed: a result is never rewritten")
    one_line_error(invoke("reset", "--db", db), "say what to reset: --study, --run or --interval")


@pytest.mark.parametrize("command", ["cancel", "reset", "archive", "retry"])
def test_each_destructive_command_asks_in_a_terminal_and_a_no_changes_nothing(study, monkeypatch, command):
    db, _ = study
    if command in ("reset", "retry"):
        set_status(db, {"pretrain1": S.FAILED})
    monkeypatch.setattr(cleanup, "interactive", lambda: True)
    args = [command, "--db", db, "--study", "daytwo", *(["--executor", "local"] if command == "retry" else [])]
    before = dump(db)
    refused = invoke(*args, input="n\n")
    assert refused.exit_code == 1 and "nothing changed" in refused.stderr, refused.output
    assert "run(s) (" in refused.output and "[y/N]" in refused.output
    assert dump(db) == before
    if command == "retry":
        return  # a yes would start a real job
    accepted = invoke(*args, input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert dump(db) != before


def test_cancel_dry_run_names_the_runs_and_changes_nothing(study):
    db, _ = study
    before = dump(db)
    dry = invoke("cancel", "--db", db, "--study", "daytwo", "--dry-run")
    assert dry.exit_code == 0 and dry.stdout.startswith("would cancel 3 run(s) (") and dump(db) == before


def test_overrides_on_the_command_line_are_validated_like_the_file_and_recorded(study):
    db, path = study
    plain = {r["id"] for r in rows(db).values()}
    result = invoke("plan", "grid", str(path), "--db", db, "--no-check-data", "-s", "pretrain.epochs=50",
                    "-s", "data.crop=96")
    assert result.exit_code == 0, result.output
    assert "overrides (recorded with the study): pretrain.epochs=50, data.crop=96" in result.stdout
    registry = open_registry(db, create=False)
    with registry.session(write=False) as session:
        new = [run for run in session.scalars(select(Run)) if run.id not in plain]
        assert len(new) == 3 and all(json.loads(run.config)["data"]["crop"] == 96 for run in new)
        assert json.loads(next(r for r in new if r.stage == "pretrain").config)["pretrain"]["epochs"] == 50
        spec = session.scalar(select(Study)).spec
        assert spec["overrides"] == ["pretrain.epochs=50", "data.crop=96"]
    registry.dispose()
    report = invoke("report", "--db", db)
    assert "study daytwo planned with -s pretrain.epochs=50, data.crop=96" in report.stdout  # its provenance
    before = dump(db)
    for args, message in [
        (["-s", "pretrain.epochs=0"], "[pretrain].epochs must be >=1, got 0"),
        (["-s", "pretrain.epoch=5"], "[pretrain]: unknown key(s) epoch"),
        (["-s", "pretrain.epochs"], "expected key=value with a dotted key"),
        (["-s", "model.num_heads=[5, 5, 5, 5]"], "num_heads"),
        (["-s", "pretrain.epochs=" + "[" * 5000], ""),
    ]:
        one_line_error(invoke("plan", "grid", str(path), "--db", db, "--no-check-data", *args), message)
    assert dump(db) == before


def test_notify_in_the_study_file_or_the_user_config_reaches_the_study(tmp_path, monkeypatch):
    user = tmp_path / "user.toml"
    user.write_text('[notify]\nwebhook = "http://127.0.0.1:9/user"\n')
    monkeypatch.setenv("IOUSSL_USER_CONFIG", str(user))
    db = str(tmp_path / "registry.db")
    plain = tmp_path / "plain.toml"
    plain.write_text(tiny_study("plain"))
    own = tmp_path / "own.toml"
    own.write_text(tiny_study("own").replace('runs_dir = "runs"', 'runs_dir = "runs-own"')
                   + '[notify]\nwebhook = "http://127.0.0.1:9/study"\n')
    for path in (plain, own):
        assert invoke("plan", "grid", str(path), "--db", db, "--no-check-data").exit_code == 0
    registry = open_registry(db, create=False)
    with registry.session(write=False) as session:
        hooks = {study.name: alerts.webhook_of(study.spec) for study in session.scalars(select(Study))}
    registry.dispose()
    assert hooks == {"plain": "http://127.0.0.1:9/user", "own": "http://127.0.0.1:9/study"}
    own.write_text(own.read_text().replace("http://127.0.0.1:9/study", "ftp://x"))
    one_line_error(invoke("plan", "grid", str(own), "--db", db, "--no-check-data"),
                   "[notify]: webhook must be an http:// or https:// URL")
    user.write_text("[notify\n")
    one_line_error(invoke("plan", "grid", str(plain), "--db", db, "--no-check-data"), f"{user}: malformed TOML")


def test_a_webhook_that_trickles_its_answer_cannot_hold_a_command():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":
            if stop.wait(0.5):
                break
            conn.send(bytes([byte]))  # each byte well inside the per-read timeout
        conn.close()

    threading.Thread(target=trickle, daemon=True).start()
    began = time.monotonic()
    answer = alerts.post_json(f"http://127.0.0.1:{server.getsockname()[1]}/", {"text": "x"}, timeout=5,
                              deadline=1.5)
    took = time.monotonic() - began
    stop.set()
    server.close()
    assert answer == "the webhook did not answer within 1.5 s" and took < 3


def test_sbatch_without_srun_is_one_line_and_leaves_the_runs_planned(study, tmp_path, monkeypatch):
    db, _ = study
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "sbatch").write_text("#!/bin/sh\necho 'Submitted batch job 5'\n")
    (folder / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", str(folder))  # sbatch, and no srun anywhere
    result = invoke("submit", "--db", db, "--executor", "slurm")
    one_line_error(result, 'Could not detect "srun"')
    assert {r["status"] for r in rows(db).values()} == {"PLANNED"}  # not left SUBMITTING


@pytest.mark.parametrize("option, target, what", [("--html", "out/r.html", "the HTML report out/r.html"),
                                                  ("--plot", "plots", "the figures into plots")])
def test_a_file_size_limit_while_writing_the_report_is_one_line(tmp_path, option, target, what):
    import os
    import resource
    import shutil
    import subprocess
    import sys

    shutil.copy(Path(__file__).resolve().parents[2] / "registry.db.example", tmp_path / "r.db")

    def limit() -> None:  # as `ulimit -f 40`: a full disk for files over 40 KiB (the HTML is ~80 KiB)
        resource.setrlimit(resource.RLIMIT_FSIZE, (40 * 1024, 40 * 1024))

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-m", "ioussl", "report", "--db", "r.db", "--no-table", option, target],
                          cwd=tmp_path, env=env, capture_output=True, text=True, preexec_fn=limit, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: cannot write {what}: File too large"], done.stderr


def test_newcomer_traps_say_what_to_do(study, tmp_path, monkeypatch):
    db, _ = study
    short = invoke("logs", "7e7", "--db", db)
    one_line_error(short, "unknown run '7e7': a run id prefix needs at least 4 characters")
    monkeypatch.chdir(tmp_path / "runs" if (tmp_path / "runs").is_dir() else tmp_path)
    monkeypatch.delenv("IOUSSL_DB", raising=False)
    elsewhere = invoke("status", "--db", str(tmp_path / "nowhere" / "registry.db"))
    one_line_error(elsewhere, "or point to yours with --db PATH or $IOUSSL_DB")


def test_a_cancelled_run_stops_its_clock(study):
    import datetime as dt

    db, _ = study
    set_status(db, {"pretrain1": S.RUNNING})
    registry = open_registry(db, create=False)
    with registry.session() as session:
        attempt = session.scalar(select(Attempt))
        attempt.started_at = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=5)
        attempt.executor, attempt.job_id = "slurm", None  # nothing to scancel: only the registry changes
    registry.dispose()
    assert invoke("cancel", "--db", db, "--run", rows(db)["pretrain1"]["id"], "--yes").exit_code == 0
    first = rows(db)["pretrain1"]["elapsed_s"]
    time.sleep(1.1)
    assert first is not None and 299 <= first < 330 and rows(db)["pretrain1"]["elapsed_s"] == first


def test_a_local_dry_run_speaks_of_this_machine_not_of_sbatch(study):
    db, _ = study
    result = invoke("submit", "--db", db, "--executor", "local", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "would submit 3 run(s) (local): on this machine, no sbatch" in result.stdout
    assert "sbatch " not in result.stdout.replace("no sbatch", "") and "GPU-hours" not in result.stdout
    assert "--gpus-per-node" not in result.stdout and "afterok" not in result.stdout
    assert "2 fine-tune(s) of" in result.stdout and "starts once its pretrain completed" in result.stdout


def test_retry_dry_run_names_what_it_would_start_again_and_changes_nothing(study):
    db, _ = study
    set_status(db, {"pretrain1": S.FAILED, "finetune1": S.BLOCKED})
    before = dump(db)
    dry = invoke("retry", "--db", db, "--study", "daytwo", "--dry-run")
    ids = rows(db)
    assert dry.exit_code == 0 and dry.stdout.startswith("study daytwo: would retry 2 run(s): ")
    assert ids["pretrain1"]["id"] in dry.stdout and ids["finetune1"]["id"] in dry.stdout and dump(db) == before


def test_the_report_title_says_which_cases_its_dsc_is_on(tmp_path):
    import shutil

    db = tmp_path / "r.db"
    shutil.copy(Path(__file__).resolve().parents[2] / "registry.db.example", db)
    result = invoke("report", "--db", str(db))
    assert result.exit_code == 0, result.output
    assert "thesis: val DSC per group (std ddof=0)" in " ".join(result.stdout.split())


def test_the_cases_label_follows_the_rows():
    from types import SimpleNamespace

    from ioussl.cli.render import _cases_label

    def report(*cases: str, metric: str = "dsc") -> SimpleNamespace:
        return SimpleNamespace(rows=[SimpleNamespace(cases=c) for c in cases], metric=metric)

    assert _cases_label(report("test", "test")) == "test DSC"
    assert _cases_label(report("val")) == "val DSC"
    assert _cases_label(report("val", "test")) == "val/test DSC"
    assert _cases_label(report("test", metric="flare_nsd")) == "test FLARE NSD"


def test_logs_print_paths_without_dot_dot(tmp_path):
    (tmp_path / "jobs").mkdir()
    study = tmp_path / "jobs" / "s.toml"
    study.write_text(tiny_study("dots").replace('runs_dir = "runs"', 'runs_dir = "../runs"'))
    db = str(tmp_path / "registry.db")
    assert invoke("plan", "grid", str(study), "--db", db, "--no-check-data").exit_code == 0
    run = rows(db)["pretrain1"]
    assert "/../" in run["run_dir"]  # as recorded
    result = invoke("logs", run["id"], "--db", db)
    assert result.exit_code == 0, result.output
    assert f"run directory {tmp_path}/runs/" in result.stdout and "/../" not in result.stdout
