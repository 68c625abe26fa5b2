"""Ctrl-C and SIGTERM during a local `ioussl submit`: a real signal to a real process, then a resume; and the
exit code of a local submit whose run failed.

The jobs are the synthetic workload (ioussl.submit.workload) through the real local executor (submitit).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from studyfiles import tiny_study
from typer.testing import CliRunner

from ioussl.cli import app
from ioussl.plan.service import plan_grid
from ioussl.submit import workload

REPO = Path(__file__).resolve().parents[2]
FACTORY = "ioussl.submit.workload:make_job"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "IOUSSL_JOB_FACTORY": FACTORY, "COLUMNS": "150"}


def _rows(db: str) -> dict[str, dict]:
    """status --json --no-sync, by "pretrain1", "finetune2", ..."""
    out = CliRunner().invoke(app, ["status", "--db", db, "--json", "--no-sync"])
    assert out.exit_code == 0, out.output
    return {f"{r['stage']}{r['seed']}": r for r in json.loads(out.stdout)}


@pytest.fixture
def study(tmp_path) -> str:
    (tmp_path / "study.toml").write_text(tiny_study("stopped"))
    db = str(tmp_path / "registry.db")
    plan_grid(tmp_path / "study.toml", db, check_data=False)
    return db


def _alive(pid: str) -> bool:
    """The process exists and is not a zombie (read from /proc, as the local backend does)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return not any(line.startswith("State:") and line.split()[1] in ("Z", "X") for line in status.splitlines())


def _default_signals() -> None:
    """In the child: SIGINT as a terminal delivers it (a background test run may have it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow  # about 12 s each: a real job is interrupted, then resumed
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_a_local_submit_cleanly_and_submit_resumes(study, tmp_path, sig, monkeypatch):
    rows = _rows(study)
    for row in rows.values():
        workload.write_spec(row["run_dir"], steps=60, step_s=0.2)
    pretrain = rows["pretrain1"]
    out_path, err_path = tmp_path / "submit.out", tmp_path / "submit.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "ioussl", "submit", "--db", study, "--executor", "local"],
            cwd=tmp_path, env=_env(), stdout=out, stderr=err, preexec_fn=_default_signals)
    metrics = Path(pretrain["run_dir"]) / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):  # the pretrain is training
        assert process.poll() is None and time.monotonic() < deadline, err_path.read_text()
        time.sleep(0.2)
    process.send_signal(sig)
    process.wait(timeout=60)
    out, err = out_path.read_text(), err_path.read_text()
    assert process.returncode == 130, out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"interrupted: stopped by {sig.name} during `ioussl submit`: 1 running run(s) "
                               f"interrupted ({pretrain['id']})"), err
    assert "`ioussl submit` resumes them from their last checkpoint" in lines[0]
    assert "Traceback" not in out + err

    after = _rows(study)
    assert after["pretrain1"]["status"] == "INTERRUPTED" and after["pretrain1"]["elapsed_s"] is not None
    assert {after[k]["status"] for k in after if k != "pretrain1"} == {"PLANNED"}  # waiting, not BLOCKED
    assert not _alive(after["pretrain1"]["job_id"])  # its job was stopped, not left running
    # The job controller wrote beside its job, not into the terminal of the submit that started it.
    assert list((tmp_path / "runs" / "_submitit" / "local").rglob("controller.log"))
    events = [json.loads(line)["event"] for line in (Path(pretrain["run_dir"]) / "events.jsonl").open()]
    assert events[-1] == "interrupted"
    for _ in range(4):  # more syncs than LOST takes: still interrupted, never lost
        assert CliRunner().invoke(app, ["status", "--db", study]).exit_code == 0
    assert _rows(study)["pretrain1"]["status"] == "INTERRUPTED"

    for row in rows.values():
        workload.write_spec(row["run_dir"], steps=60, step_s=0.001)
    monkeypatch.setenv("IOUSSL_JOB_FACTORY", FACTORY)
    resumed = CliRunner().invoke(app, ["submit", "--db", study, "--executor", "local", "--max-parallel", "2"])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming 1 interrupted run(s) from their last checkpoint" in resumed.output
    done = _rows(study)
    assert {r["status"] for r in done.values()} == {"COMPLETED"}
    assert done["pretrain1"]["attempts"] == 2
    result = json.loads((Path(pretrain["run_dir"]) / "result.json").read_text())
    assert result["starts"] == 2 and result["resumed_from"] >= 2  # went on from its checkpoint, not step 0


def test_a_local_submit_whose_run_failed_exits_1(study, monkeypatch):
    rows = _rows(study)
    for key, row in rows.items():
        workload.write_spec(row["run_dir"], steps=2, step_s=0.01, fail_attempts=1 if key == "pretrain1" else 0)
    monkeypatch.setenv("IOUSSL_JOB_FACTORY", FACTORY)
    result = CliRunner().invoke(app, ["submit", "--db", study, "--executor", "local", "--max-parallel", "2"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(f"error: 1 run(s) ended without a result ({rows['pretrain1']['id']} failed)")
    assert "`ioussl retry` runs them again" in lines[-1]
    statuses = {k: r["status"] for k, r in _rows(study).items()}
    assert statuses["pretrain1"] == "FAILED"
    assert statuses["finetune1"] != "COMPLETED" and _rows(study)["finetune1"]["attempts"] == 0  # never started
