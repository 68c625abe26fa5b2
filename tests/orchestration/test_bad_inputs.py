"""Bad input, table-driven, through the real command line: 0 tracebacks, 0 hangs, 0 wrong values stored.

Two kinds of case:
- run files (on SQLite and PostgreSQL): one run's directory is damaged in one way; `ioussl status`
  succeeds, marks that run INVALID with a one-line reason naming the file, stores nothing of it, and
  ingests the other run exactly;
- refused commands: a bad study, profile, database location or environment; the command exits 1 with
  one `error:` line and the registry dump is unchanged.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from registryfix import dump, valid_result
from sqlalchemy import select
from typer.testing import CliRunner

from ioussl.cli import app
from ioussl.registry import open_registry, repo
from ioussl.registry.models import Run
from ioussl.status import RunStatus

HANG_LIMIT_S = 30

STUDY = """
[study]
name = "bad"
runs_dir = "{runs_dir}"
cluster = "cluster.toml"
[data]
store = "store"
crop = 64
{data_extra}
[model]
feature_size = 12
{model_extra}
[pretrain]
seeds = [{pretrain_seed}]
epochs = {epochs}
batch_size = {batch_size}
base_lr = {base_lr}
[finetune]
seeds = [1]
baseline_seeds = [1, 2]
[[intervals]]
i_min = 0.3
i_max = 0.6
[resources.pretrain]
time_min = {time_min}
mem_gb = {mem_gb}
[resources.finetune]
time_min = 5
"""
CLUSTER = """
[slurm]
partition = {partition}
account = {account}
qos = "normal"
constraint = {constraint}
exclude = {exclude}
setup = [{setup}]
[slurm.additional]
{additional}
"""
GOOD = {
    "runs_dir": "runs", "pretrain_seed": 1, "epochs": 2, "batch_size": 8, "base_lr": 0.025, "time_min": 5,
    "mem_gb": 2, "partition": '"gpu"', "account": '"grant"', "constraint": '"v100"', "exclude": '"node9"',
    "setup": '"module load CUDA"', "additional": 'mail-type = "END"', "model_extra": "", "data_extra": "",
}


@contextlib.contextmanager
def no_hang(seconds: int = HANG_LIMIT_S):
    def give_up(*_):  # type: ignore[no-untyped-def]
        raise TimeoutError(f"hung for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def invoke(args: list[str], env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    with no_hang():
        result = CliRunner().invoke(app, args, env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def write_study(root: Path, **changes: Any) -> Path:
    values = {**GOOD, **changes}
    (root / "cluster.toml").write_text(CLUSTER.format(**values))
    (root / "study.toml").write_text(STUDY.format(**values))
    return root / "study.toml"


# ---------------------------------------------------------------------------------------------- run files


def result(**changes: Any) -> Callable[[Path, Any, Any], None]:
    """The victim's valid result with some keys changed (None removes a key)."""

    def apply(run_dir: Path, run: Any, other: Any) -> None:
        payload = valid_result(run)
        for key, value in changes.items():
            if value is None:
                payload.pop(key, None)
            else:
                payload[key] = value
        (run_dir / "result.json").write_text(json.dumps(payload))

    return apply


def raw_result(text: str | bytes) -> Callable[[Path, Any, Any], None]:
    """The victim's result.json replaced by these bytes (``{valid}`` stands for its valid fields)."""

    def apply(run_dir: Path, run: Any, other: Any) -> None:
        body = json.dumps(valid_result(run))[1:-1]
        data = text.replace("{valid}", body) if isinstance(text, str) else text
        (run_dir / "result.json").write_bytes(data.encode() if isinstance(data, str) else data)

    return apply


def file_is(name: str, kind: str) -> Callable[[Path, Any, Any], None]:
    def apply(run_dir: Path, run: Any, other: Any) -> None:
        path = run_dir / name
        path.unlink(missing_ok=True)
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "dir":
            path.mkdir()
        elif kind == "symlink":
            path.symlink_to(Path(other.run_dir) / name)
        elif kind == "huge":
            path.write_text('{"pad": "' + "x" * (17 << 20) + '"}')

    return apply


def line_in(name: str, line: str | bytes) -> Callable[[Path, Any, Any], None]:
    def apply(run_dir: Path, run: Any, other: Any) -> None:
        with (run_dir / name).open("ab") as handle:
            handle.write((line.encode() if isinstance(line, str) else line) + b"\n")

    return apply


def run_dir_links_to(where: str) -> Callable[[Path, Any, Any], None]:
    def apply(run_dir: Path, run: Any, other: Any) -> None:
        if where == "other":
            target = Path(other.run_dir)
        else:
            target = run_dir.parent.parent / "elsewhere"
            shutil.copytree(run_dir, target)
        shutil.rmtree(run_dir)
        run_dir.symlink_to(target, target_is_directory=True)

    return apply


def _result_of_same_config_other_parent(run_dir: Path, run: Any) -> None:
    """What a fine-tune of the same config but another encoder (here: a pretrain's) would have written: the
    config hash matches, the identity does not (a fine-tune's config does not name its pretrain)."""
    from ioussl.config import RunConfig, run_hash

    payload = valid_result(run)
    payload["run_hash"] = run_hash(RunConfig.from_json(run.config), "ab" * 32)
    (run_dir / "result.json").write_text(json.dumps(payload))


def foreign_config_hash(run_dir: Path, run: Any, other: Any) -> None:
    payload = valid_result(run)
    payload["config_hash"] = valid_result(other)["config_hash"]
    (run_dir / "result.json").write_text(json.dumps(payload))


RUN_FILE_CASES: dict[str, tuple[Callable[[Path, Any, Any], None], str]] = {
    "dsc 1.7": (result(dsc=1.7), "result.json: dsc 1.7 is outside [0, 1]"),
    "dsc -0.5": (result(dsc=-0.5), "result.json: dsc -0.5 is outside"),
    "dsc 1e400": (raw_result('{{valid}, "dsc": 1e400}'), "result.json: dsc is inf, not a finite number"),
    "dsc NaN": (raw_result('{{valid}, "dsc": NaN}'), "result.json: is not valid JSON (NaN is not a number"),
    "no dsc": (result(dsc=None), "result.json: dsc is missing"),
    "empty object": (raw_result("{}"), "result.json: stage is None"),
    "best_epoch x": (result(best_epoch="x"), "result.json: best_epoch must be an integer"),
    "foreign config hash": (foreign_config_hash, "belongs to another config than this run's"),
    "run dir links to another run": (run_dir_links_to("other"), "is a symbolic link"),
    "run dir links outside the runs dir": (run_dir_links_to("outside"), "is a symbolic link"),
    "events t NaN": (line_in("events.jsonl", '{"t": NaN, "event": "started"}'), "events.jsonl line 2: is not valid"),
    "events t 1e300": (line_in("events.jsonl", '{"t": 1e300, "event": "started"}'), "is not a time"),
    "result not UTF-8": (raw_result(b'{"dsc": "\xff\xfe"}'), "result.json: is not UTF-8 text"),
    "metrics not UTF-8": (line_in("metrics.jsonl", b'{"epoch": 1, "loss\xff": 1}'), "metrics.jsonl: is not UTF-8"),
    "events not UTF-8": (line_in("events.jsonl", b'{"event": "\xc3("}'), "events.jsonl: is not UTF-8"),
    "metrics is a directory": (file_is("metrics.jsonl", "dir"), "metrics.jsonl: is a directory"),
    "dsc abc": (result(dsc="abc"), "result.json: dsc must be a number, got 'abc'"),
    "epoch 10**29": (line_in("metrics.jsonl", '{"epoch": 100000000000000000000000000000, "loss": 1}'),
                     "metrics.jsonl line 4: epoch 100000000000000000000000000000 is outside"),
    "result is a FIFO": (file_is("result.json", "fifo"), "result.json: is a FIFO, not a regular file"),
    "result is a directory": (file_is("result.json", "dir"), "result.json: is a directory"),
    "result is a symlink": (file_is("result.json", "symlink"), "result.json: is a symbolic link"),
    "result is an array": (raw_result("[1, 2]"), "result.json: holds a JSON list, not an object"),
    "result truncated": (raw_result('{"stage": "fine'), "result.json: is not valid JSON"),
    "dsc_3d 2": (result(dsc_3d=2.0), "result.json: dsc_3d 2.0 is outside"),
    "per_organ 5": (result(per_organ={"liver": 5}), "result.json: per_organ.liver 5.0 is outside"),
    "stage mismatch": (result(stage="pretrain"), "stage is 'pretrain' but this run is a finetune"),
    "sha256 not hex": (result(checkpoint_sha256="xyz"), "checkpoint_sha256 must be 64 hex digits"),
    "steps 5000 digits": (raw_result('{{valid}, "steps": ' + "9" * 5000 + "}"), "result.json: is not valid JSON"),
    "nested 100000 deep": (raw_result("[" * 100000), "result.json: is not valid JSON"),
    "metric name 100 chars": (line_in("metrics.jsonl", json.dumps({"epoch": 5, "x" * 100: 1.0})),
                              "is not a printable name of at most 64"),
    "test dsc 1.5": (result(test={"dsc": 1.5, "dsc_3d": None}), "result.json: test.dsc 1.5 is outside"),
    "flare part train": (result(flare={"part": "train", "dsc": 0.5, "nsd": 0.5}), "flare.part must be 'val' or"),
    "flare nsd -1": (result(flare={"part": "val", "dsc": 0.5, "nsd": -1}), "flare.nsd -1.0 is outside"),
    "result over 16 MiB": (file_is("result.json", "huge"), "result.json: is larger than 16 MiB"),
    "no config hash": (result(config_hash=None), "config_hash must be 64 hex digits, got None"),
    "host 1000 chars": (result(provenance={"host": "h" * 1000}), "host must be at most 255 printable"),
    "events is a FIFO": (file_is("events.jsonl", "fifo"), "events.jsonl: is a FIFO"),
    "metrics is a FIFO": (file_is("metrics.jsonl", "fifo"), "metrics.jsonl: is a FIFO"),
    "finished_at text": (result(finished_at="yesterday"), "finished_at must be a number"),
    "infinity in an extra": (raw_result('{{valid}, "extra": {"x": [1, 1e999]}}'), "extra.x[1] is inf"),
    "events line is a list": (line_in("events.jsonl", "[1]"), "events.jsonl line 2: holds a JSON list"),
    "best_epoch past epochs": (result(best_epoch=7, epochs=3), "best_epoch 7 is not below epochs 3"),
    "metric step -1": (line_in("metrics.jsonl", '{"epoch": 5, "step": -1, "loss": 1}'), "step -1 is outside"),
    "per_case not an object": (result(per_case=[1]), "per_case must be an object"),
    "run_hash not hex": (result(run_hash="g" * 64), "run_hash must be 64 hex digits"),
    "run_hash zeros, own config": (result(run_hash="0" * 64), "run_hash 000000000000... is not this run's identity"),
    "another run's result, same config": (lambda run_dir, run, other: _result_of_same_config_other_parent(
        run_dir, run), "is not this run's identity"),
    "epochs 0, best_epoch 10**9": (result(epochs=0, best_epoch=10**9), "result.json: epochs 0 is outside [1,"),
    "best_epoch 10**9": (result(best_epoch=10**9), "best_epoch 1000000000 is not below epochs 3"),
}


def _valid_files(run: Any) -> None:
    run_dir = Path(run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "events.jsonl").write_text(json.dumps({"t": time.time(), "event": "started"}) + "\n")
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps({"epoch": e, "step": e, "loss": 1 / (e + 1)}) + "\n" for e in range(3))
    )
    (run_dir / "result.json").write_text(json.dumps(valid_result(run)))


@pytest.fixture
def two_finished_runs(registry_db, tmp_path):
    """Two baseline fine-tunes, each submitted to a job that has ended, each with valid run files."""
    from ioussl.plan.service import plan_grid

    write_study(tmp_path)
    plan_grid(tmp_path / "study.toml", registry_db, check_data=False)
    registry = open_registry(registry_db)
    with registry.session() as session:
        runs = [r for r in session.scalars(select(Run).order_by(Run.seed)) if r.parent_id is None
                and r.stage == "finetune"]
        for run in runs:
            repo.set_status(session, run, RunStatus.SUBMITTING)
            repo.add_attempt(session, run_id=run.id, executor="local", job_id="999999999", status=RunStatus.PENDING)
            repo.set_status(session, run, RunStatus.PENDING)
            _valid_files(run)
    registry.dispose()
    return registry_db, [r.id for r in runs]


@pytest.mark.parametrize("case", list(RUN_FILE_CASES), ids=list(RUN_FILE_CASES))
def test_a_bad_run_file_marks_only_that_run_invalid(two_finished_runs, case):
    db, (victim_id, other_id) = two_finished_runs
    damage, reason = RUN_FILE_CASES[case]
    registry = open_registry(db)
    with registry.session(write=False) as session:
        victim, other = repo.get_run(session, victim_id), repo.get_run(session, other_id)
        _ = victim.study, other.study
    registry.dispose()
    damage(Path(victim.run_dir), victim, other)
    expected_dsc = valid_result(other)["dsc"]

    status = invoke(["status", "--db", db, "--json"])
    assert status.exit_code == 0, status.output
    rows = {row["id"]: row for row in json.loads(status.stdout)}
    assert rows[victim_id]["status"] == "INVALID"
    assert reason in rows[victim_id]["reason"] and "\n" not in rows[victim_id]["reason"]
    assert rows[other_id]["status"] == "COMPLETED" and rows[other_id]["dsc"] == expected_dsc
    stored = dump(db)
    assert [row[0] for row in stored["results"]] == [other_id]  # nothing of the bad run
    assert {row[1] for row in stored["metrics"]} == {other_id} and len(stored["metrics"]) == 3
    assert [row[0] for row in stored["provenance"]] == [other_id]
    table = invoke(["status", "--db", db, "--no-sync"])
    assert f"run {victim_id} INVALID: " in table.stdout  # shown by status


def _run_dir_state(run_dir: Path) -> tuple:
    """What a run directory holds, comparable: each entry's kind and content (a link's target). ``finished_at``
    is left out where it is a number: each valid result.json is written anew, at its own time."""
    if run_dir.is_symlink():
        return ("link", os.readlink(run_dir))
    entries = []
    for path in sorted(run_dir.rglob("*")):
        if path.is_symlink():
            entries.append((str(path.relative_to(run_dir)), "link", os.readlink(path)))
        elif path.is_fifo() or path.is_dir():
            entries.append((str(path.relative_to(run_dir)), "fifo" if path.is_fifo() else "dir"))
        else:
            data = path.read_bytes()
            try:
                payload = json.loads(data)
            except (ValueError, RecursionError):
                payload = None
            if isinstance(payload, dict) and isinstance(payload.get("finished_at"), float):
                data = json.dumps({**payload, "finished_at": 0}, sort_keys=True).encode()
            entries.append((str(path.relative_to(run_dir)), "file", data))
    return tuple(entries)


def test_there_are_at_least_forty_cases(two_finished_runs, tmp_path):
    """Forty cases by their effect, not by the table's length: no two run-file cases damage a run the same way
    and none leaves it as it was (a case copied under a new name, or a no-op, would pass a count), and no two
    refused commands are the same command on the same files."""
    import sqlite3

    assert len(RUN_FILE_CASES) + len(REFUSED_CASES) >= 40 and len(RUN_FILE_CASES) >= 40
    db, (victim_id, other_id) = two_finished_runs
    registry = open_registry(db)
    with registry.session(write=False) as session:
        victim, other = repo.get_run(session, victim_id), repo.get_run(session, other_id)
        _ = victim.study, other.study
    registry.dispose()
    run_dir = Path(victim.run_dir)
    pristine = tmp_path / "pristine"
    shutil.copytree(run_dir, pristine, symlinks=True)
    seen = {_run_dir_state(run_dir): "the valid files"}
    for name, (damage, _) in RUN_FILE_CASES.items():
        damage(run_dir, victim, other)
        state = _run_dir_state(run_dir)
        assert state not in seen, f"run-file case {name!r} leaves the run as {seen[state]!r} does"
        seen[state] = name
        run_dir.unlink() if run_dir.is_symlink() else shutil.rmtree(run_dir)
        shutil.rmtree(run_dir.parent.parent / "elsewhere", ignore_errors=True)
        shutil.copytree(pristine, run_dir, symlinks=True)
    commands: dict[tuple, str] = {}
    for number, (name, (build, _, env)) in enumerate(REFUSED_CASES.items()):
        root = tmp_path / f"refused{number}"
        root.mkdir()
        with contextlib.closing(sqlite3.connect(root / "registry.db")) as conn:
            conn.execute("CREATE TABLE metrics (x)")  # for the case that drops it
            conn.execute("CREATE TABLE runs (stage, status)")  # for the case that edits a status
        args = tuple(arg.replace(str(root), "<root>") for arg in build(root, str(root / "registry.db")))
        files = tuple(sorted((p.name, p.read_bytes()) for p in root.iterdir() if p.suffix in (".toml", ".csv")))
        key = (args, files, tuple(sorted(env.items())))
        assert key not in commands, f"refused case {name!r} is the command of {commands[key]!r}"
        commands[key] = name


def test_an_invalid_run_can_be_retried_and_its_bad_result_is_set_aside(two_finished_runs):
    from ioussl.submit import service as jobservice

    db, (victim_id, _) = two_finished_runs
    registry = open_registry(db)
    with registry.session(write=False) as session:
        victim = repo.get_run(session, victim_id)
        _ = victim.study
    registry.dispose()
    result(dsc=1.7)(Path(victim.run_dir), victim, None)
    invoke(["status", "--db", db])

    from ioussl.backends.slurm import SlurmBackend

    class Recorder(SlurmBackend):
        submitted: list = []

        def submit(self, unit, calls, dependency):  # type: ignore[no-untyped-def]
            self.submitted.append(unit.run_ids)
            return ["77"]

        def query(self, job_ids):  # type: ignore[no-untyped-def]
            from ioussl.backends.base import QueryResult

            return QueryResult({}, "fake", 1)

        def find_by_name(self, names):  # type: ignore[no-untyped-def]
            return {}

        def job_stored(self, job_id, job_name):  # type: ignore[no-untyped-def]
            return True

        def release(self, job_ids): ...  # type: ignore[no-untyped-def]

        def cancel(self, job_ids): ...  # type: ignore[no-untyped-def]

    recorder = Recorder(Path("_submitit"))
    outcome = jobservice.retry(db, "bad", run_ids=[victim_id], backend=recorder, factory=lambda *a: None)
    assert outcome.job_ids == {victim_id: "77"}
    assert not (Path(victim.run_dir) / "result.json").exists()
    assert len(list(Path(victim.run_dir).glob("result.json.rejected-*"))) == 1


# -------------------------------------------------------------------------------------- refused commands


def plan_with(**changes: Any) -> Callable[[Path, str], list[str]]:
    def build(root: Path, db: str) -> list[str]:
        return ["plan", "grid", str(write_study(root, **changes)), "--db", db, "--no-check-data"]

    return build


def command(*args: str) -> Callable[[Path, str], list[str]]:
    return lambda root, db: [part.format(root=root, db=db) for part in args]


def huge_grid(root: Path, db: str) -> list[str]:
    study = write_study(root)
    text = study.read_text().replace("seeds = [1]\nbaseline_seeds", f"seeds = {list(range(1000))}\nbaseline_seeds")
    text = text.replace("seeds = [1]\nepochs", f"seeds = {list(range(1000))}\nepochs")
    study.write_text(text)
    return ["plan", "grid", str(study), "--db", db, "--no-check-data"]


def binary_csv(root: Path, db: str) -> list[str]:
    (root / "results.csv").write_bytes(b"\x00\xff\xfe binary \x89PNG\r\n\x1a\n")
    return ["import", "results", str(write_study(root)), str(root / "results.csv"), "--db", db, "--source", "x"]


def dropped_table(root: Path, db: str) -> list[str]:
    import sqlite3

    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE metrics")
    return plan_with(runs_dir="runs2")(root, db)


def _with_file(root: Path, name: str, text: str, args: list[str]) -> list[str]:
    (root / name).write_text(text)
    return args


def _raw_study(root: Path, text: str) -> list[str]:
    (root / "raw.toml").write_text(text)
    return ["plan", "grid", str(root / "raw.toml"), "--db", str(root / "registry.db"), "--no-check-data"]


def _bad_state(db: str) -> list[str]:
    import sqlite3

    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE runs SET status = 'BOGUS' WHERE stage = 'pretrain'")
    return ["status", "--db", db, "--no-sync"]


REFUSED_CASES: dict[str, tuple[Callable[[Path, str], list[str]], str, dict[str, str]]] = {
    "epochs 0": (plan_with(epochs=0), "[pretrain].epochs must be >=1, got 0", {}),
    "epochs -5": (plan_with(epochs=-5), "[pretrain].epochs must be >=1, got -5", {}),
    "epochs 10**100": (plan_with(epochs=10**100), "[pretrain].epochs is too large (a 101-digit integer)", {}),
    "batch_size 0": (plan_with(batch_size=0), "[pretrain].batch_size must be >=1", {}),
    "base_lr -1": (plan_with(base_lr=-1), "[pretrain].base_lr must be >0, got -1.0", {}),
    "base_lr nan": (plan_with(base_lr="nan"), "base_lr: expected a finite number", {}),
    "seed -1": (plan_with(pretrain_seed=-1), "seeds must lie in [0, 2**32), got -1", {}),
    "seed 2**63-1": (plan_with(pretrain_seed=2**63 - 1), "seeds must lie in [0, 2**32)", {}),
    "time_min text": (plan_with(time_min='"10"'), "time_min: expected an integer, got '10'", {}),
    "mem_gb -1": (plan_with(mem_gb=-1), "mem_gb: expected a positive number, got -1", {}),
    "mem_gb 0.0001": (plan_with(mem_gb=0.0001), "mem_gb: 0.0001 is less than 1 MB (SLURM reads --mem=0", {}),
    "num_heads indivisible": (plan_with(model_extra="num_heads = [5, 5, 5, 5]"),
                              "num_heads[0] = 5 does not divide stage 1's width 12", {}),
    "split not JSON": (lambda root, db: _with_file(root, "split.txt", "train: a, b\n", plan_with(
        data_extra='split = "split.txt"')(root, db)), "split.txt: not a readable JSON split", {}),
    "TOML nested deeply": (lambda root, db: _raw_study(root, "x = " + "{a = " * 3000 + "1" + "}" * 3000),
                           "malformed TOML: nested too deeply", {}),
    "TOML array nested deeply": (lambda root, db: _raw_study(root, "x = " + "[" * 3000 + "]" * 3000),
                                 "malformed TOML: nested too deeply", {}),
    "TOML huge integer": (lambda root, db: _raw_study(root, "[pretrain]\nepochs = " + "9" * 5000),
                          "malformed TOML: Exceeds the limit", {}),
    "-s nested deeply": (lambda root, db: ["plan", "grid", str(write_study(root)), "--db", db, "--no-check-data",
                                           "-s", "pretrain.epochs=" + "[" * 3000], "-s pretrain.epochs", {}),
    "status with a run state out of the enum": (lambda root, db: _bad_state(db), "status 'BOGUS'", {}),
    "--plot naming a file": (command("report", "--db", "{db}", "--plot", "{root}/study.toml"),
                             "study.toml is a file: give a folder for the figures", {}),
    "--html under a file": (command("report", "--db", "{db}", "--html", "{root}/study.toml/r.html"),
                            "study.toml/r.html: ", {}),
    "newline in runs_dir": (plan_with(runs_dir="runs\\nsqueue"), "runs_dir: contains the control character U+000A", {}),
    "newline in partition": (plan_with(partition='"gpu\\ntouch /tmp/x"'), "partition: contains the control", {}),
    "newline in account": (plan_with(account='"a\\n#SBATCH --x"'), "account: contains the control character", {}),
    "CR in qos via additional": (plan_with(additional='qos = "a\\rb"'), "contains the control character U+000D", {}),
    "newline in additional key": (plan_with(additional='"mail\\ntype" = "END"'), "is not an sbatch option name", {}),
    "newline in additional value": (plan_with(additional='mail-type = "END\\nrm -rf ~"'), "control character", {}),
    "newline in a setup line": (plan_with(setup='"module load x\\nrm -rf ~"'), "setup[0]: contains the control", {}),
    "ESC in constraint": (plan_with(constraint='"v100\\u001b[2J"'), "constraint: contains the control char", {}),
    "U+2028 in exclude": (plan_with(exclude='"node1\\u2028touch x"'), "exclude: contains the control character U+2028",
                          {}),
    "study name with newline": (command("plan", "grid", "{root}/named.toml", "--db", "{db}", "--no-check-data"),
                                "[study] name must be 1-128 letters", {}),
    "a million-run grid": (huge_grid, "expands to 1,001,002 runs, more than the cap of 5,000", {}),
    "unknown dialect": (command("status", "--db", "foo://bar"), "unsupported database 'foo'", {}),
    "mysql without driver": (command("status", "--db", "mysql://u:p@h/x"), "unsupported database 'mysql'", {}),
    "pg8000 without driver": (command("status", "--db", "postgresql+pg8000://u@h/x"), "pg8000 driver", {}),
    "bad IOUSSL_DB_TIMEOUT": (command("status", "--db", "{db}"), "$IOUSSL_DB_TIMEOUT must be a number of seconds",
                              {"IOUSSL_DB_TIMEOUT": "abc"}),
    "uncreatable --db path": (command("plan", "grid", "{root}/study.toml", "--db", "{root}/study.toml/x/r.db",
                                      "--no-check-data"), "cannot create the registry at", {}),
    "missing --db for status": (command("status", "--db", "{root}/none.db"), "no registry at", {}),
    "binary results CSV": (binary_csv, "not a UTF-8 text CSV file", {}),
    "a dropped table": (dropped_table, "is damaged (missing: metrics): nothing was written", {}),
    "unreachable server": (command("status", "--db", "postgresql://u:pw@127.0.0.1:1/x"), "cannot reach the registry",
                           {}),
    "max-runs below the grid": (command("plan", "grid", "{root}/study.toml", "--db", "{db}", "--no-check-data",
                                        "--max-runs", "3"), "expands to 4 runs, more than the cap of 3", {}),
}


@pytest.mark.parametrize("case", list(REFUSED_CASES), ids=list(REFUSED_CASES))
def test_a_refused_command_is_one_line_and_writes_nothing(tmp_path, case):
    from ioussl.plan.service import plan_grid

    db = str(tmp_path / "registry.db")
    plan_grid(write_study(tmp_path), db, check_data=False)  # a registry with something in it
    (tmp_path / "named.toml").write_text((tmp_path / "study.toml").read_text().replace('"bad"', '"bad\\nx"'))
    build, message, env = REFUSED_CASES[case]
    args = build(tmp_path, db)
    before = dump(db)
    began = time.monotonic()
    refused = invoke(args, env=env)
    assert refused.exit_code == 1, refused.output
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], refused.stderr
    assert dump(db) == before
    assert time.monotonic() - began < 10  # refused before any expansion or waiting
