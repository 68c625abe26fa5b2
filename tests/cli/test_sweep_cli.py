"""A sweep through the command line: plan (dry run: axes, runs per stage, GPU-hours), status per swept value,
report by axes and across studies, export; every bad input one line, exit 1, the registry unchanged."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from registryfix import dump
from typer.testing import CliRunner

from ioussl.cli import app

STUDY = """
[study]
name = "{name}"
runs_dir = "runs"
[data]
store = "store"
crop = 64
[model]
feature_size = 12
[pretrain]
seeds = [1, 2]
[finetune]
seeds = [1]
baseline_seeds = [1]
[[intervals]]
i_min = 0.3
i_max = 0.6
[resources.pretrain]
time_min = 120
[resources.finetune]
time_min = 30
[sweep]
{sweep}
"""
GOOD_SWEEP = '"data.crop" = [64, 96]\n"pretrain.base_lr" = [0.0125, 0.025, 0.05]'


def invoke(args: list[str]):  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def write(root: Path, sweep: str = GOOD_SWEEP, name: str = "sw", base: str = STUDY) -> Path:
    path = root / f"{name}.toml"
    path.write_text(base.format(name=name, sweep=sweep))
    return path


def test_dry_run_shows_axes_runs_per_stage_and_gpu_hours(tmp_path):
    db = str(tmp_path / "registry.db")
    out = invoke(["plan", "grid", str(write(tmp_path)), "--db", db, "--no-check-data", "--dry-run"])
    assert out.exit_code == 0, out.output
    text = " ".join(out.stdout.split())
    assert "would add 26 run(s) (12 pretrain, 14 finetune)" in text  # 6 points x 2 seeds; 12 + 2 baselines
    assert "axis data.crop (2): 64, 96" in text and "axis pretrain.base_lr (3): 0.0125, 0.025, 0.05" in text
    assert "runs per stage: 12 pretrain, 14 finetune (26 in the study)" in text
    assert "GPU-hours requested by the 26 new: 31.0 (pretrain 24.0, finetune 7.0)" in text
    assert "data.crop=96, pretrain.base_lr=0.05" in text  # each run's point
    assert not Path(db).exists()


def test_a_large_sweep_plans_and_shows_per_axis_value_summaries(tmp_path):
    db = str(tmp_path / "registry.db")
    sweep = '"pretrain.epochs" = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n"finetune.epochs" = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]'
    out = invoke(["plan", "grid", str(write(tmp_path, sweep)), "--db", db, "--no-check-data"])
    assert out.exit_code == 0, out.output
    assert "added 230 run(s) (20 pretrain, 210 finetune)" in " ".join(out.stdout.split())
    more = '"pretrain.epochs" = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n"finetune.epochs" = [1, 2, 3, 4, 5, 6, 7, 8, 9, 11]'
    plan = invoke(["plan", "grid", str(write(tmp_path, more)), "--db", db, "--no-check-data"])
    assert "added 21 run(s) (0 pretrain, 21 finetune); 209 already planned" in " ".join(plan.stdout.split())
    sweep3 = sweep + '\n"finetune.patience" = [1, 2]'
    big = invoke(["plan", "grid", str(write(tmp_path, sweep3, name="big")), "--db", db, "--no-check-data"])
    assert "new runs per axis value" in big.stdout and "finetune.patience" in big.stdout
    status = invoke(["status", "--db", db, "--no-sync"])
    assert status.exit_code == 0, status.output
    assert "runs per swept value" in status.stdout
    rows = [line for line in status.stdout.splitlines() if "│ big " in line and "pretrain.epochs" in line]
    assert len(rows) == 10 and all(line.split("│")[-2].strip() == "42" for line in rows)  # 2 + 2 x 10 x 2 each


def test_report_by_axes_and_side_by_side_through_the_cli(tmp_path, repo_root):
    db = str(tmp_path / "registry.db")
    invoke(["import", "results", str(repo_root / "jobs" / "thesis.toml"), str(repo_root / "jobs" /
            "thesis-table-4.2.csv"), "--db", db, "--source", "thesis", "--base-dir", str(repo_root / "jobs")])
    invoke(["plan", "grid", str(write(tmp_path)), "--db", db, "--no-check-data"])
    out = invoke(["report", "--db", db, "--study", "sw", "--by", "data.crop", "--by", "interval", "--format", "csv"])
    assert out.exit_code == 0, out.output
    groups = [row[0] for row in csv.reader(io.StringIO(out.stdout))][1:]
    assert groups == ["data.crop=64, no pretraining", "data.crop=64, [0.3, 0.6]", "data.crop=96, no pretraining",
                      "data.crop=96, [0.3, 0.6]"]
    both = invoke(["report", "--db", db, "--study", "thesis", "--study", "sw", "--by", "interval", "--format",
                   "markdown"])
    assert both.exit_code == 0, both.output
    assert "| thesis: [0.3, 0.6] | 0.853 ± 0.002 |" in both.stdout and "| sw: [0.3, 0.6] | - |" in both.stdout
    thesis = invoke(["report", "--db", db, "--study", "thesis", "--format", "csv"]).stdout
    assert thesis.splitlines()[4].startswith('"[0.3, 0.6]",0.85325')  # the thesis table, unchanged


def plan_with(sweep: str, *extra: str) -> Callable[[Path, str], list[str]]:
    return lambda root, db: ["plan", "grid", str(write(root, sweep, name="other")), "--db", db, "--no-check-data",
                             *extra]


def command(*args: str) -> Callable[[Path, str], list[str]]:
    return lambda root, db: [part.format(root=root, db=db) for part in args]


REFUSED: dict[str, tuple[Callable[[Path, str], list[str]], str]] = {
    "unknown key": (plan_with('"pretrain.base_lrr" = [0.1]'), "unknown setting 'pretrain.base_lrr'; closest: "
                                                              "pretrain.base_lr"),
    "wrong type": (plan_with('"data.crop" = ["big"]'), "[sweep] \"data.crop\": expected an integer, got 'big'"),
    "out of range": (plan_with('"finetune.epochs" = [0]'), "value 0 is out of range: [finetune].epochs must be >=1"),
    "empty axis": (plan_with('"pretrain.epochs" = []'), "the axis is empty"),
    "point fails": (plan_with('"data.crop" = [64, 100]'), "sweep point data.crop=100: crop side must be a multiple"),
    "zip unequal": (plan_with('[[sweep.zip]]\n"pretrain.epochs" = [1, 2, 3]\n"pretrain.batch_size" = [8, 16]'),
                    "zip group 1: its lists must have equal lengths"),
    "over the cap": (plan_with('"pretrain.epochs" = ' + str(list(range(1, 101))) + '\n"finetune.epochs" = '
                               + str(list(range(1, 101)))), "expands to 20,300 runs, more than the cap of 5,000"),
    "over --max-runs": (plan_with(GOOD_SWEEP, "--max-runs", "25"), "expands to 26 runs, more than the cap of 25"),
    "--by no axis": (command("report", "--db", "{db}", "--study", "sw", "--by", "finetune.base_lr"),
                     "--by 'finetune.base_lr' is no axis of study sw"),
    "--by a typo": (command("report", "--db", "{db}", "--by", "intervall"), "closest: interval"),
    "report --format xml": (command("report", "--db", "{db}", "--format", "xml"), "'xml' is not one of 'terminal'"),
    "--html by axes, a file as folder": (
        command("report", "--db", "{db}", "--by", "data.crop", "--html", "{root}/sw.toml/r.html"),
        "cannot write the HTML report {root}/sw.toml/r.html: {root}/sw.toml is a file, not a folder"),
    "--study unknown": (command("report", "--db", "{db}", "--study", "sw", "--study", "nope"), "unknown study 'nope'"),
    "export unwritable": (command("export", "runs", "--db", "{db}", "-o", "{root}/sw.toml/runs.csv"),
                          "cannot write {root}/sw.toml/runs.csv: Not a directory"),
    "export to a directory": (command("export", "runs", "--db", "{db}", "--format", "csv", "-o", "{root}"),
                              "it is a directory"),
    "export missing folder": (command("export", "metrics", "--db", "{db}", "-o", "{root}/none/m.csv"),
                              "No such file or directory"),
    "export --format xml": (command("export", "runs", "--db", "{db}", "--format", "xml"),
                            "'xml' is not one of 'csv', 'jsonl', 'parquet'"),
    "export unknown suffix": (command("export", "runs", "--db", "{db}", "-o", "{root}/runs.xlsx"),
                              "cannot tell the format of"),
    "parquet on stdout": (command("export", "runs", "--db", "{db}", "--format", "parquet"), "Parquet is binary"),
    "export unknown study": (command("export", "runs", "--db", "{db}", "--study", "nope"), "unknown study 'nope'"),
    "export bad stage": (command("export", "metrics", "--db", "{db}", "--stage", "both"), "--stage must be pretrain"),
    "export unknown run": (command("export", "metrics", "--db", "{db}", "--run", "zzzzzz"), "unknown run 'zzzzzz'"),
    "export no registry": (command("export", "runs", "--db", "{root}/none.db"), "no registry at"),
}


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_bad_input_is_one_line_exit_1_and_the_registry_unchanged(tmp_path, case):
    db = str(tmp_path / "registry.db")
    assert invoke(["plan", "grid", str(write(tmp_path)), "--db", db, "--no-check-data"]).exit_code == 0
    build, message = REFUSED[case]
    before = dump(db)
    began = time.monotonic()
    refused = invoke(build(tmp_path, db))
    assert refused.exit_code == 1, refused.output
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), refused.stderr
    assert message.format(root=tmp_path) in lines[0]
    assert dump(db) == before
    assert time.monotonic() - began < 10
    assert not list(tmp_path.glob("**/.*.part"))  # no half-written export left behind


def test_status_json_and_export_agree_on_the_runs(tmp_path):
    db = str(tmp_path / "registry.db")
    invoke(["plan", "grid", str(write(tmp_path)), "--db", db, "--no-check-data"])
    rows = json.loads(invoke(["status", "--db", db, "--json", "--no-sync"]).stdout)
    status = {row["id"] for row in rows}
    lines = invoke(["export", "runs", "--db", db, "--format", "jsonl"]).stdout.splitlines()
    assert {json.loads(line)["run_id"] for line in lines} == status and len(lines) == 26
    exported = {(row := json.loads(line))["run_id"]: row for line in lines}
    for row in rows:  # each run's point in status --json, and the same values as the export's columns
        assert set(row["point"]) == ({"data.crop"} if row["group"] == "no pretraining" else
                                     {"data.crop", "pretrain.base_lr"})
        assert all(exported[row["id"]][axis] == value for axis, value in row["point"].items())
