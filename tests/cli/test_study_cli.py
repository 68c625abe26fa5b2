"""Every study command through Typer's CliRunner, and bad input as one line + exit 1, registry untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ioussl.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0]
    assert "Traceback" not in result.output


@pytest.fixture
def planned(repo_root, db):
    result = invoke("plan", "grid", str(repo_root / "jobs" / "thesis.toml"), "--db", db, "--no-check-data")
    assert result.exit_code == 0, result.output
    return db


def test_plan_grid_reports_new_then_nothing_new(repo_root, planned):
    again = invoke("plan", "grid", str(repo_root / "jobs" / "thesis.toml"), "--db", planned, "--no-check-data")
    assert again.exit_code == 0
    assert "added 0 run(s)" in again.output and "34 already planned" in again.output


def test_plan_dry_run_lists_runs_and_writes_nothing(repo_root, db):
    result = invoke("plan", "grid", str(repo_root / "jobs" / "thesis.toml"), "--db", db, "--dry-run",
                    "--no-check-data")
    assert result.exit_code == 0
    assert "would add 34 run(s) (10 pretrain, 24 finetune)" in result.output
    assert not Path(db).exists()


def test_status_json_lists_the_grid(planned):
    result = invoke("status", "--db", planned, "--json")
    rows = json.loads(result.stdout)
    assert len(rows) == 34 and {r["status"] for r in rows} == {"PLANNED"}
    assert {r["stage"] for r in rows} == {"pretrain", "finetune"}


def test_status_filters(planned):
    pretrains = json.loads(invoke("status", "--db", planned, "--json", "--stage", "pretrain").stdout)
    assert len(pretrains) == 10
    group = json.loads(invoke("status", "--db", planned, "--json", "--interval", "[0.3, 0.6]").stdout)
    assert len(group) == 6 and {r["group"] for r in group} == {"[0.3, 0.6]"}
    none = json.loads(invoke("status", "--db", planned, "--json", "--state", "failed").stdout)
    assert none == []


def test_status_table_is_grouped_by_interval(planned):
    result = invoke("status", "--db", planned)
    assert result.exit_code == 0
    for group in ("no pretraining", "[0, 0]", "[0.3, 0.6]", "random crop [0, 1]"):
        assert group in result.output
    assert "34 planned" in result.output


def test_import_then_report_in_every_format(repo_root, db):
    imported = invoke("import", "results", str(repo_root / "jobs" / "thesis.toml"),
                      str(repo_root / "jobs" / "thesis-table-4.2.csv"), "--db", db, "--source", "Table 4.2")
    assert imported.exit_code == 0 and "imported 24 result(s)" in imported.output
    terminal = invoke("report", "--db", db, "--table")
    assert terminal.exit_code == 0 and "0.853 ± 0.002" in terminal.output
    assert "0.853 ± 0.002" in invoke("report", "--db", db, "--format", "markdown").output
    assert invoke("report", "--db", db, "--format", "csv").output.startswith("group,mean,std")
    assert r"\begin{tabular}" in invoke("report", "--db", db, "--format", "latex").output
    sample = invoke("report", "--db", db, "--format", "csv", "--ddof", "1").output
    assert ",1,4,4," in sample.splitlines()[1]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["status", "--study", "nope"], "unknown study 'nope'; known studies: thesis"),
        (["status", "--stage", "training"], "--stage must be pretrain or finetune"),
        (["status", "--state", "DONE"], "unknown state(s) DONE"),
        (["report", "--study", "nope"], "unknown study 'nope'"),
        (["plan", "grid", "missing.toml"], "study file not found"),
    ],
)
def test_bad_input_is_one_line_and_leaves_registry_untouched(planned, args, fragment):
    before = digest(planned)
    assert_one_line_error(invoke(*args, "--db", planned), fragment)
    assert digest(planned) == before


def test_bad_study_file_leaves_registry_untouched(planned, tmp_path):
    before = digest(planned)
    bad = tmp_path / "bad.toml"
    bad.write_text('[study]\nname = "x"\n[[intervals]]\ni_min = 0.7\ni_max = 0.2\n[pretrain]\nseeds=[1]\n'
                   "[finetune]\nseeds=[1]\n")
    assert_one_line_error(invoke("plan", "grid", str(bad), "--db", planned), "reversed")
    bad.write_text("[study\n")
    assert_one_line_error(invoke("plan", "grid", str(bad), "--db", planned), "malformed TOML")
    assert digest(planned) == before


def test_missing_data_is_one_line(repo_root, db, tmp_path):
    study = tmp_path / "s.toml"
    study.write_text((repo_root / "jobs" / "tiny.toml").read_text().replace("../demo/store", "nowhere"))
    assert_one_line_error(invoke("plan", "grid", str(study), "--db", db), "data store not found")


def test_registry_problems_are_one_line(tmp_path):
    assert_one_line_error(invoke("status", "--db", str(tmp_path / "none.db")), "no registry at")
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"garbage" * 1000)
    assert_one_line_error(invoke("status", "--db", str(corrupt)), "corrupt or not a database")
    assert corrupt.read_bytes() == b"garbage" * 1000


def test_db_from_environment(repo_root, planned, monkeypatch):
    monkeypatch.setenv("IOUSSL_DB", planned)
    rows = json.loads(invoke("status", "--json").stdout)
    assert len(rows) == 34


def test_every_command_has_help():
    import typer

    def walk(command, path=()):  # type: ignore[no-untyped-def]
        yield path, command
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            yield from walk(sub, (*path, name))

    commands = list(walk(typer.main.get_command(app)))  # found in the app: a new command is covered too
    assert {("plan", "grid"), ("status",), ("report",), ("import", "results")} <= {path for path, _ in commands}
    for path, command in commands:
        summary = " ".join((command.help or "").split()).split(". ")[0]
        assert len(summary) >= 10, f"ioussl {' '.join(path)} has no help text"
        undocumented = [param.name for param in command.params if len((getattr(param, "help", None) or "").strip()) < 3]
        assert not undocumented, f"ioussl {' '.join(path)}: no help for {undocumented}"
        result = invoke(*path, "--help")
        assert result.exit_code == 0 and summary[:50] in " ".join(result.output.split()), path
        listed = [name for name in getattr(command, "commands", {}) if not command.commands[name].hidden]
        assert all(name in result.output for name in listed), path  # a group lists its commands
