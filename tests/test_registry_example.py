"""registry.db.example reproduces Table 4.2 and shows the 34-run grid (built by `make example`)."""

from __future__ import annotations

import json
import shutil

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


def _quoted(line: str) -> list[str]:
    import csv

    return next(csv.reader([line]))[:3]
