"""Rough edges a new user met (issue 13): cancel of nothing, placeholder accounts, group order, `auto`.

Fake SLURM commands on PATH stand in for a workstation with the SLURM client but no controller; the real
test cluster is never touched (no run here reaches sbatch).
"""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ioussl.backends.base import resolve_executor
from ioussl.cli import app
from ioussl.report.service import report_study
from ioussl.track.listing import status_rows

runner = CliRunner()
DEAD = "slurm_load_partitions: Unable to contact slurm controller (connect failure)"


def invoke(*args: str):
    return runner.invoke(app, list(args))


def one_line_error(result, fragment: str) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0], lines[0]
    return lines[0]


def fake_slurm(folder: Path, monkeypatch, scontrol: str) -> Path:
    """sbatch, sinfo and scontrol on PATH; sbatch and sinfo fail like a client without a controller."""
    folder.mkdir(exist_ok=True)
    scripts = {
        "sbatch": f"echo 'sbatch: error: {DEAD}' >&2; echo called >> '{folder}/sbatch.calls'; exit 1",
        "sinfo": f"echo '{DEAD}' >&2; exit 1",
        "scontrol": scontrol,
    }
    for name, body in scripts.items():
        path = folder / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(folder))  # only the fakes: this machine's real SLURM stays out of reach
    return folder


def dead_controller(folder: Path, monkeypatch) -> Path:
    return fake_slurm(folder, monkeypatch, "echo 'Slurmctld(primary) at ctl is DOWN'; "
                                           f"echo '{DEAD}' >&2; exit 1")


@pytest.fixture
def thesis(tmp_path, repo_root):
    """The thesis grid planned from a copy of jobs/ (its profile still holds FILL-IN-YOUR-GRANT)."""
    shutil.copytree(repo_root / "jobs", tmp_path / "jobs")
    db = str(tmp_path / "registry.db")
    result = invoke("plan", "grid", str(tmp_path / "jobs" / "thesis.toml"), "--db", db, "--no-check-data")
    assert result.exit_code == 0, result.output
    return db, result


def test_cancel_of_a_group_that_does_not_exist_is_an_error_naming_the_groups(thesis):
    db, _ = thesis
    line = one_line_error(invoke("cancel", "--db", db, "--study", "thesis", "--interval", "[0.3, 0.5]"),
                          "no group '[0.3, 0.5]' in study 'thesis'; groups: ")
    assert "'[0.3, 0.6]'" in line and "'no pretraining'" in line
    assert {r["status"] for r in json.loads(invoke("status", "--db", db, "--json", "--no-sync").stdout)} == {"PLANNED"}


def test_cancel_that_matches_only_ended_runs_says_so(thesis):
    db, _ = thesis
    first = invoke("cancel", "--db", db, "--study", "thesis", "--interval", "[0, 0]")
    assert first.exit_code == 0 and "cancelled 6 run(s)" in first.output  # 2 pretrains, 4 fine-tunes
    one_line_error(invoke("cancel", "--db", db, "--study", "thesis", "--interval", "[0, 0]"),
                   "nothing to cancel in study 'thesis': the matching runs are 6 cancelled")


def test_placeholder_account_warns_at_plan_and_is_refused_at_submit(thesis, tmp_path, monkeypatch):
    db, planned = thesis
    assert "warning: cluster profile clusters/plgrid-v100.toml: account = 'FILL-IN-YOUR-GRANT' is a " \
           "placeholder" in " ".join(planned.output.split())
    calls = fake_slurm(tmp_path / "bin", monkeypatch, "echo 'Slurmctld(primary) at ctl is UP'")
    line = one_line_error(invoke("submit", "--db", db, "--executor", "slurm"),
                          "study 'thesis', cluster profile clusters/plgrid-v100.toml: account = "
                          "'FILL-IN-YOUR-GRANT' is a placeholder; fill in your SLURM account")
    assert "ioussl plan grid" in line
    assert not (calls / "sbatch.calls").exists()
    assert {r.status.value for r in status_rows(db)} == {"PLANNED"}


def test_a_filled_in_account_plans_without_warning(tmp_path, repo_root):
    import sqlite3

    shutil.copytree(repo_root / "jobs", tmp_path / "jobs")
    study = str(tmp_path / "jobs" / "thesis.toml")
    placeholder = invoke("plan", "grid", study, "--db", str(tmp_path / "placeholder.db"), "--no-check-data")
    assert placeholder.exit_code == 0 and "warning: " in placeholder.output  # the same study warns unfilled
    profile = tmp_path / "jobs" / "clusters" / "plgrid-v100.toml"
    assert "FILL-IN-YOUR-GRANT" in profile.read_text()
    profile.write_text(profile.read_text().replace("FILL-IN-YOUR-GRANT", "plgssl2024"))
    result = invoke("plan", "grid", study, "--db", str(tmp_path / "r.db"), "--no-check-data")
    assert result.exit_code == 0 and "warning" not in result.output
    with sqlite3.connect(tmp_path / "r.db") as conn:  # planned in full, with the account filled in
        accounts = [json.loads(row[0])["slurm"]["account"] for row in conn.execute("SELECT resources FROM runs")]
    assert accounts == ["plgssl2024"] * 34


def test_status_lists_groups_in_the_order_report_uses(tmp_path, repo_root):
    text = (repo_root / "jobs" / "thesis.toml").read_text()
    first, rest = text.split("[[intervals]]", 1)
    blocks = ["[[intervals]]" + block for block in rest.split("# One V100")[0].split("[[intervals]]")]
    reordered = first + "".join(reversed(blocks)) + "# One V100" + rest.split("# One V100")[1]
    (tmp_path / "clusters").mkdir()
    shutil.copy(repo_root / "jobs" / "clusters" / "plgrid-v100.toml", tmp_path / "clusters")
    (tmp_path / "reordered.toml").write_text(reordered)
    db = str(tmp_path / "r.db")
    assert invoke("plan", "grid", str(tmp_path / "reordered.toml"), "--db", db, "--no-check-data").exit_code == 0
    groups = list(dict.fromkeys(r.group for r in status_rows(db)))
    assert groups == ["no pretraining", "random crop [0, 1]", "[0.6, 1]", "[0.3, 0.6]", "[0.0001, 0.3]", "[0, 0]"]
    assert groups == [row.group for row in report_study(db, "thesis").report.rows]
    table = invoke("status", "--db", db, "--no-sync").output
    assert [table.index(g) for g in groups] == sorted(table.index(g) for g in groups)


def test_auto_runs_locally_and_says_why_when_no_controller_answers(thesis, tmp_path, monkeypatch):
    db, _ = thesis
    calls = dead_controller(tmp_path / "bin", monkeypatch)
    executor, why = resolve_executor("auto")
    assert executor == "local" and "SLURM controller does not answer" in why and "DOWN" in why
    result = invoke("submit", "--db", db, "--dry-run")  # --executor auto is the default
    assert result.exit_code == 0, result.output
    assert "the SLURM controller does not answer" in result.output
    assert "running on this machine with the local executor" in result.output
    assert "(local)" in result.output and not (calls / "sbatch.calls").exists()


def test_auto_picks_slurm_when_the_controller_answers(tmp_path, monkeypatch):
    fake_slurm(tmp_path / "bin", monkeypatch, "echo 'Slurmctld(primary) at ctl is UP'")
    assert resolve_executor("auto") == ("slurm", None)
    dead_controller(tmp_path / "bin", monkeypatch)
    (tmp_path / "bin" / "sbatch").unlink()
    assert resolve_executor("auto") == ("local", "no sbatch on PATH")


def test_a_cpu_study_is_not_described_in_gpu_hours(tmp_path):
    """A study whose stages ask for no GPU (gpus = 0) plans without a meaningless "GPU-hours: 0.0" line."""
    from studyfiles import tiny_study

    (tmp_path / "cpu.toml").write_text(tiny_study("cpu"))
    result = invoke("plan", "grid", str(tmp_path / "cpu.toml"), "--db", str(tmp_path / "r.db"), "--no-check-data",
                    "--dry-run")
    assert result.exit_code == 0, result.output
    assert "request no GPU" in result.stdout and "GPU-hours" not in result.stdout
