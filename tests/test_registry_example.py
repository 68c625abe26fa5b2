"""registry.db.example reproduces Table 4.2, shows the 34-run grid, and is what `make example` builds today."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

from typer.testing import CliRunner

from ioussl.cli import app

THESIS = {
    "no pretraining": (0.843, 0.004), "[0, 0]": (0.838, 0.007), "[0.0001, 0.3]": (0.839, 0.012),
    "[0.3, 0.6]": (0.853, 0.002), "[0.6, 1]": (0.843, 0.013), "random crop [0, 1]": (0.824, 0.011),
}


def test_example_registry_reproduces_table_4_2(repo_root, tmp_path):
    copy = tmp_path / "example.db"  # opening SQLite in WAL mode writes beside the file: use a copy
    shutil.copy(repo_root / "registry.db.example", copy)
    result = CliRunner().invoke(app, ["report", "--table", "--db", str(copy), "--format", "csv"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()[1:]
    assert len(lines) == 6
    for line in lines:
        group, mean, std = line.split(",")[:3] if not line.startswith('"') else _quoted(line)
        assert abs(float(mean) - THESIS[group][0]) <= 0.001
        assert abs(float(std) - THESIS[group][1]) <= 0.001


def test_example_registry_status_shows_the_34_run_grid(repo_root, tmp_path):
    copy = tmp_path / "example.db"
    shutil.copy(repo_root / "registry.db.example", copy)
    rows = json.loads(CliRunner().invoke(app, ["status", "--db", str(copy), "--json"]).stdout)
    assert len(rows) == 34
    assert sum(r["stage"] == "pretrain" for r in rows) == 10
    assert all(r["status"] == "COMPLETED" and r["imported"] for r in rows)


def _make_example_args(repo_root: Path, db: Path) -> list[str]:
    """The `ioussl ...` command of the Makefile's `example` recipe, writing to ``db`` instead."""
    makefile = (repo_root / "Makefile").read_text().replace("\\\n", " ")
    recipe = makefile.split("\nexample:", 1)[1].split("\n\n", 1)[0]
    line = next(row for row in recipe.splitlines() if "/bin/ioussl " in row)
    args = shlex.split(line.strip())[1:]  # drop $(VENV)/bin/ioussl
    return [str(db) if arg == "registry.db.example" else arg for arg in args]


def _registry_view(db: Path) -> tuple[list[dict], str]:
    """What the registry says through the public commands: every run (timing left out) and the report."""
    runner = CliRunner()
    status = runner.invoke(app, ["status", "--db", str(db), "--json"])
    report = runner.invoke(app, ["report", "--table", "--db", str(db), "--format", "csv"])
    assert status.exit_code == 0 and report.exit_code == 0, status.output + report.output
    rows = [{k: v for k, v in row.items() if k != "elapsed_s"} for row in json.loads(status.stdout)]
    return sorted(rows, key=lambda row: row["id"]), report.stdout


def test_make_example_rebuilds_the_committed_registry(repo_root, tmp_path, monkeypatch):
    # If this fails, jobs/thesis.toml, the CSV or the import changed: run `make example` and commit the file.
    committed = tmp_path / "committed.db"
    shutil.copy(repo_root / "registry.db.example", committed)
    rebuilt = tmp_path / "rebuilt.db"
    monkeypatch.chdir(repo_root)  # the recipe's paths are relative to the repository, as make runs it
    result = CliRunner().invoke(app, _make_example_args(repo_root, rebuilt))
    assert result.exit_code == 0, result.output
    want_rows, want_report = _registry_view(committed)
    got_rows, got_report = _registry_view(rebuilt)
    assert [row["id"] for row in got_rows] == [row["id"] for row in want_rows]  # same runs (hashes)
    for got, want in zip(got_rows, want_rows, strict=True):
        assert got == want, got["id"]  # study, stage, group, seeds, parent, status, reason, DSCs, run dir
    assert got_report == want_report


def _quoted(line: str) -> list[str]:
    import csv

    return next(csv.reader([line]))[:3]
