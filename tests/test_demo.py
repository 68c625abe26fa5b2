"""The demo as a user runs it: a small study through `ioussl demo`, again (reuse), and interrupted (resume)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _study(root: Path, finetune_epochs: int = 2) -> Path:
    """jobs/tiny.toml (1 pretrain -> 1 fine-tune, 1 baseline fine-tune) with its data under root/work."""
    text = (REPO / "jobs" / "tiny.toml").read_text()
    text = text.replace("../demo/", "work/").replace("../runs/tiny", "work/runs")
    text = text.replace("batch_size = 4\nepochs = 2\n", f"batch_size = 4\nepochs = {finetune_epochs}\n")
    assert f"epochs = {finetune_epochs}" in text
    path = root / "tiny.toml"
    path.write_text(text)
    return path


@dataclasses.dataclass
class Demo:
    process: subprocess.Popen[str]
    out: Path
    err: Path


def _demo(root: Path, *extra: str, env: dict[str, str] | None = None, executor: str = "local",
          finetune_epochs: int = 2) -> Demo:
    """`ioussl demo` in the background, its output in files under root (see :func:`_finish`).

    Not pipes: the local executor's job controllers inherit the demo's stdout and stderr and may outlive an
    interrupted demo, so reading a pipe to its end would wait for them, not for the demo.
    """
    study = _study(root, finetune_epochs)
    args = [sys.executable, "-m", "ioussl", "demo", "--study", str(study), "--executor", executor, *extra]
    count = len(list(root.glob("demo-*.out")))
    out_path, err_path = root / f"demo-{count}.out", root / f"demo-{count}.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        process = subprocess.Popen(args, cwd=root, env=env or _env(), stdout=out, stderr=err, text=True,
                                   preexec_fn=_default_sigint)
    return Demo(process, out_path, err_path)


def _default_sigint() -> None:
    """In the demo's process: Ctrl-C as a terminal delivers it. A test run started in the background by a
    shell without job control (`make test &`) ignores SIGINT, and Python then never turns it into
    KeyboardInterrupt, so the demo would finish instead of being interrupted."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _finish(demo: Demo, timeout: float) -> tuple[str, str]:
    """Wait for the demo process itself to end; its stdout and stderr."""
    demo.process.wait(timeout=timeout)
    return demo.out.read_text(), demo.err.read_text()


def _no_controller(folder: Path) -> Path:
    """sbatch and scontrol that fail as on a machine whose SLURM controller is not running."""
    folder.mkdir()
    for name, body in {"sbatch": "exit 1", "scontrol": "echo 'Slurmctld(primary) at ctl is DOWN'; exit 1"}.items():
        (folder / name).write_text(f"#!/bin/sh\necho 'Unable to contact slurm controller (connect failure)' >&2\n"
                                   f"{body}\n")
        (folder / name).chmod(0o755)
    return folder


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "COLUMNS": "150"}


def _statuses(root: Path) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "ioussl", "status", "--json", "--no-sync", "--db",
                          str(root / "work" / "registry.db")], capture_output=True, text=True, env=_env())
    return json.loads(out.stdout) if out.returncode == 0 else []


def _part_done(rows: list[dict]) -> bool:
    """A run has completed and another has not."""
    return any(r["status"] == "COMPLETED" for r in rows) and any(r["status"] != "COMPLETED" for r in rows)


def test_demo_runs_then_reuses_everything(tmp_path):
    first = _demo(tmp_path)
    out, err = _finish(first, 900)
    assert first.process.returncode == 0, out + err
    assert "no pretraining" in out and "[0.3, 0.6]" in out  # the report's rows
    rows = _statuses(tmp_path)
    assert len(rows) == 3 and {r["status"] for r in rows} == {"COMPLETED"}
    results = {r["id"]: (Path(r["run_dir"]) / "result.json").stat().st_mtime for r in rows}

    began = time.monotonic()
    # `auto` with the SLURM client on PATH but no controller (the fake scontrol says DOWN): runs here, says so
    second = _demo(tmp_path, executor="auto", env={**_env(), "PATH": str(_no_controller(tmp_path / "bin"))})
    out, err = _finish(second, 300)
    assert second.process.returncode == 0, out + err
    assert "reusing" in out and "0 new run(s), 3 already planned" in out
    assert "the SLURM controller does not answer" in out and "running on this machine" in out
    assert {r["id"]: (Path(r["run_dir"]) / "result.json").stat().st_mtime for r in _statuses(tmp_path)} == results
    print(f"second demo run: {time.monotonic() - began:.1f} s")


def test_interrupted_demo_resumes(tmp_path):
    # Longer fine-tunes: the pretrain-then-fine-tune chain must still be running when a first run has
    # completed, however slowly this box polls (on a loaded one, the 2-epoch study once ended in between).
    first = _demo(tmp_path, finetune_epochs=8)
    deadline = time.monotonic() + 600
    while not _part_done(_statuses(tmp_path)):
        assert first.process.poll() is None and time.monotonic() < deadline, \
            "the demo ended before it could be interrupted with a run completed and one not"
        time.sleep(1)
    first.process.send_signal(signal.SIGINT)
    out, err = _finish(first, 120)
    assert first.process.returncode == 130 and "run `ioussl demo` (or `make demo`) again to resume" in err
    assert "Traceback" not in err
    done_before = {r["id"] for r in _statuses(tmp_path) if r["status"] == "COMPLETED"}

    again = _demo(tmp_path, finetune_epochs=8)
    out, err = _finish(again, 900)
    assert again.process.returncode == 0, out + err
    rows = _statuses(tmp_path)
    assert {r["status"] for r in rows} == {"COMPLETED"}
    assert done_before and all(r["attempts"] == 1 for r in rows if r["id"] in done_before)  # not redone
