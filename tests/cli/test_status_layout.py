"""`ioussl status` at a glance: a study column when several studies are shown, one line of counts per state,
a reason column, "val DSC", and a table that stays readable at 80 columns in a real pseudo-terminal."""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from sqlalchemy import select as sql_select
from studyfiles import tiny_study

from ioussl.plan.service import plan_grid
from ioussl.registry import open_registry
from ioussl.registry.models import Run
from ioussl.status import RunStatus as S

REPO = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
REASON = "job 4242 was interrupted (events.jsonl); `ioussl submit` resumes it from its last checkpoint"


@pytest.fixture
def two_studies(tmp_path) -> str:
    db = str(tmp_path / "registry.db")
    for name in ("alpha", "beta"):
        (tmp_path / f"{name}.toml").write_text(tiny_study(name).replace('runs_dir = "runs"',
                                                                         f'runs_dir = "runs-{name}"'))
        plan_grid(tmp_path / f"{name}.toml", db, check_data=False)
    registry = open_registry(db)
    with registry.session() as session:
        for run in session.scalars(sql_select(Run)):
            if run.stage == "pretrain" and run.study.name == "beta":
                run.status, run.status_reason = S.INTERRUPTED, REASON
            elif run.stage == "pretrain":
                run.status, run.status_reason = S.FAILED, "exit code 1: CUDA out of memory " + "x" * 200
    registry.dispose()
    return db


def in_terminal(args: list[str], columns: int) -> str:
    """The command's output as a terminal of ``columns`` x 40 shows it (a pseudo-terminal, COLUMNS set)."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {**os.environ, "COLUMNS": str(columns), "LINES": "40", "TERM": "xterm",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    process = subprocess.Popen([sys.executable, "-m", "ioussl", *args], stdin=follower, stdout=follower,
                               stderr=follower, env=env, close_fds=True)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the follower side closed: the command ended
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    os.close(leader)
    assert process.wait(timeout=10) == 0
    return ANSI.sub("", b"".join(chunks).decode()).replace("\r\n", "\n")


def test_status_is_readable_at_80_columns_in_a_terminal(two_studies):
    out = in_terminal(["status", "--db", two_studies, "--no-sync"], columns=80)
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80, out
    assert "alpha: [0.3, 0.6]" in out and "beta: [0.3, 0.6]" in out  # the study says which block is which
    for state in ("FAILED", "INTERRUPTED", "PLANNED"):
        assert re.search(rf"│ {state}\s+│", out), (state, out)  # whole, never cut to "PL…"
    assert "val DSC" in out
    reasons = [line for line in lines if line.startswith("run ")]  # under the table: no room for a column
    assert len(reasons) == 2 and all(len(line) <= 80 for line in reasons)
    assert any(line.endswith("FAILED: exit code 1: CUDA out of memory " + "x" * (80 - 60) + "…")
               or "FAILED: exit code 1: CUDA out of memory" in line for line in reasons)
    assert any("INTERRUPTED: job 4242 was interrupted (events.jsonl)" in line for line in reasons)
    assert "6 run(s): 4 planned, 1 failed, 1 interrupted" in out


def test_a_wide_terminal_shows_every_column_and_one_study_has_no_study_label(two_studies):
    out = in_terminal(["status", "--db", two_studies, "--no-sync", "--study", "beta"], columns=160)
    assert max(len(line) for line in out.splitlines()) <= 160
    for column in ("pre seed", "job", "tries", "elapsed", "val DSC", "reason"):
        assert column in out, column
    assert "beta:" not in out and "job 4242 was interrupted (events.jsonl)" in out  # in its column
    assert "3 run(s): 2 planned, 1 interrupted" in out
