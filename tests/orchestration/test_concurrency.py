"""Concurrency on SQLite and PostgreSQL: planners racing into a new registry, and `status` while results
arrive and while another process writes. Real processes (fork), a real registry; the scheduler behind
`status` is a stand-in `sacct` on PATH that answers from the run directories.

The figures (docs/architecture.md): 8 planners x 10 rounds -> 0 failures, 1 study, no duplicate run;
64 concurrent `status` while results arrive -> 0 failures, every result ingested exactly once.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import random
import sys
import threading
import time
import traceback
from pathlib import Path

import pytest
from registryfix import dump, location, valid_result
from sqlalchemy import func, select
from typer.testing import CliRunner

from ioussl.cli import app
from ioussl.registry import open_registry, repo
from ioussl.registry.models import Metric, Result, Run
from ioussl.status import RunStatus

REPO = Path(__file__).resolve().parents[2]
FORK = multiprocessing.get_context("fork")

STATUS_STUDY = """
[study]
name = "busy"
runs_dir = "runs"
[data]
store = "store"
crop = 64
[model]
feature_size = 12
[finetune]
baseline_seeds = [{seeds}]
[resources.finetune]
gpus = 0
time_min = 5
"""

FAKE_SACCT = """#!{python}
# A stand-in sacct for the concurrency test: a job is COMPLETED once its run directory holds result.json.
import json, os, sys
jobs = json.load(open({jobs!r}))
ids = sys.argv[sys.argv.index("-j") + 1].split(",")
for job in ids:
    run_dir = jobs.get(job)
    if run_dir is None:
        continue
    state = "COMPLETED" if os.path.exists(os.path.join(run_dir, "result.json")) else "RUNNING"
    print(f"{{job}}|{{job}}|ioussl-x|{{state}}|0:0|node1|None|2026-01-01T00:00:00|Unknown")
"""


def _plan_worker(db: str, barrier, results) -> None:  # type: ignore[no-untyped-def]
    from ioussl.plan.service import plan_grid

    try:
        barrier.wait(timeout=60)
        outcome = plan_grid(REPO / "jobs" / "thesis.toml", db, check_data=False)
        results.put(("ok", len(outcome.new), len(outcome.existing)))
    except BaseException as exc:  # every failure is a data point, never a crash of the test
        results.put(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=3)))


def _run_processes(target, args_list, timeout: float = 180) -> list:  # type: ignore[no-untyped-def]
    results = FORK.Queue()
    processes = [FORK.Process(target=target, args=(*args, results)) for args in args_list]
    for process in processes:
        process.start()
    collected = [results.get(timeout=timeout) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    return collected


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_eight_planners_racing_into_a_new_registry(backend, tmp_path, capsys, monkeypatch):
    # What is tested is that racing planners never fail or duplicate, not how long the last one waits: on a
    # loaded 2-core machine seven plans ahead of it took longer than the default 15 s busy timeout once.
    monkeypatch.setenv("IOUSSL_DB_TIMEOUT", "120")
    failures, rounds, started = [], 10, time.monotonic()
    for round_number in range(rounds):
        with contextlib.ExitStack() as stack:
            db = location(backend, tmp_path / f"round{round_number}", stack)
            (tmp_path / f"round{round_number}").mkdir(exist_ok=True)
            barrier = FORK.Barrier(8)
            outcomes = _run_processes(_plan_worker, [(db, barrier)] * 8)
            failures += [o for o in outcomes if o[0] != "ok"]
            assert sum(o[1] for o in outcomes if o[0] == "ok") == 34  # the runs were added exactly once
            rows = dump(db)
            assert len(rows["studies"]) == 1
            assert len(rows["runs"]) == 34
            registry = open_registry(db, create=False)
            with registry.session(write=False) as session:
                hashes = session.execute(select(Run.run_hash)).scalars().all()
            registry.dispose()
            assert len(set(hashes)) == len(hashes) == 34
    assert failures == []
    with capsys.disabled():
        print(f"\n{backend}: 8 planners x {rounds} rounds, 0 failures, {time.monotonic() - started:.1f} s")


def _status_worker(db: str, path: str, delay: float, results) -> None:  # type: ignore[no-untyped-def]
    from ioussl.submit.service import sync_studies
    from ioussl.track.listing import status_rows

    os.environ["PATH"] = f"{path}{os.pathsep}{os.environ['PATH']}"
    completed, skipped = [], 0
    try:
        for _ in range(2):
            time.sleep(delay)
            for outcome in sync_studies(db):
                skipped += outcome.skipped is not None
                completed += [run for run, _, new, _ in outcome.transitions if new == "COMPLETED"]
            status_rows(db)
        results.put(("ok", completed, skipped))
    except BaseException as exc:
        results.put(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=4)))


def _submitted_study(db: str, tmp_path: Path, runs: int) -> tuple[list, Path]:
    """A study of ``runs`` fine-tunes, each PENDING as SLURM job <n>; a fake sacct on PATH answers for them."""
    from ioussl.plan.service import plan_grid

    (tmp_path / "study.toml").write_text(STATUS_STUDY.format(seeds=", ".join(map(str, range(runs)))))
    plan_grid(tmp_path / "study.toml", db, check_data=False)
    registry = open_registry(db, create=False)
    jobs = {}
    with registry.session() as session:
        rows = list(session.scalars(select(Run).order_by(Run.seed)))
        for number, run in enumerate(rows, start=1):
            repo.set_status(session, run, RunStatus.SUBMITTING)
            repo.add_attempt(session, run_id=run.id, executor="slurm", job_id=str(number), status=RunStatus.PENDING,
                             job_name=f"ioussl-{run.id}")
            repo.set_status(session, run, RunStatus.PENDING)
            Path(run.run_dir).mkdir(parents=True, exist_ok=True)
            jobs[str(number)] = run.run_dir
        payloads = [(run.run_dir, valid_result(run)) for run in rows]
    registry.dispose()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    sacct = bin_dir / "sacct"
    sacct.write_text(FAKE_SACCT.format(python=sys.executable, jobs=str(tmp_path / "jobs.json")))
    sacct.chmod(0o755)
    return payloads, bin_dir


def _arrive(payloads: list, spread_s: float) -> None:
    """Results land one by one, each with its metrics first, as jobs would write them."""
    for run_dir, payload in payloads:
        time.sleep(spread_s / len(payloads))
        lines = "".join(json.dumps({"epoch": e, "step": e, "loss": 1 / (e + 1)}) + "\n" for e in range(3))
        (Path(run_dir) / "metrics.jsonl").write_text(lines)
        tmp = Path(run_dir) / ".result.tmp"
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, Path(run_dir) / "result.json")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sixty_four_status_while_results_arrive(backend, tmp_path, capsys):
    with contextlib.ExitStack() as stack:
        db = location(backend, tmp_path, stack)
        payloads, bin_dir = _submitted_study(db, tmp_path, runs=24)
        writer = threading.Thread(target=_arrive, args=(payloads, 4.0))
        started = time.monotonic()
        writer.start()
        rng = random.Random(7)
        outcomes = _run_processes(_status_worker, [(db, str(bin_dir), rng.uniform(0, 3)) for _ in range(64)])
        writer.join()
        elapsed = time.monotonic() - started
        failures = [o for o in outcomes if o[0] != "ok"]
        assert failures == []
        final = _status_worker_inline(db, bin_dir)  # one more status after the last result arrived
        completions = [run for o in outcomes for run in o[1]] + final
        assert sorted(completions) == sorted({run for run in completions})  # each run completed exactly once
        registry = open_registry(db, create=False)
        with registry.session(write=False) as session:
            statuses = set(session.scalars(select(Run.status)))
            results = session.scalar(select(func.count()).select_from(Result))
            metrics = session.scalar(select(func.count()).select_from(Metric))
        registry.dispose()
        assert statuses == {RunStatus.COMPLETED} and len(completions) == 24
        assert results == 24 and metrics == 24 * 3
        skipped = sum(o[2] for o in outcomes)
    with capsys.disabled():
        print(f"\n{backend}: 64 status x 2 while 24 results arrived: 0 failures, each result ingested once; "
              f"{skipped} of 128 syncs skipped ingest (registry busy); {elapsed:.1f} s")


def _status_worker_inline(db: str, bin_dir: Path) -> list[str]:
    from ioussl.submit.service import sync_studies

    old = os.environ["PATH"]
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{old}"
    try:
        outcomes = sync_studies(db, wait=None)
    finally:
        os.environ["PATH"] = old
    return [run for o in outcomes for run, _, new, _ in o.transitions if new == "COMPLETED"]


def test_status_shows_what_is_recorded_when_another_process_writes(registry_db, tmp_path):
    payloads, bin_dir = _submitted_study(registry_db, tmp_path, runs=2)
    _arrive(payloads, 0.0)
    holder = open_registry(registry_db)
    started, release = threading.Event(), threading.Event()

    def hold() -> None:
        with holder.session():
            started.set()
            release.wait(20)

    thread = threading.Thread(target=hold)
    thread.start()
    started.wait(5)
    old = os.environ["PATH"]
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{old}"
    try:
        result = CliRunner().invoke(app, ["status", "--db", registry_db, "--json"])
    finally:
        os.environ["PATH"] = old
        release.set()
        thread.join()
        holder.dispose()
    assert result.exit_code == 0, result.output
    assert "ingest of study busy skipped, showing what is recorded" in result.stderr
    rows = json.loads(result.stdout)
    assert [r["status"] for r in rows] == ["PENDING", "PENDING"]  # what is recorded; nothing was ingested
    assert dump(registry_db)["results"] == []
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{old}"
    try:
        again = CliRunner().invoke(app, ["status", "--db", registry_db, "--json"])
    finally:
        os.environ["PATH"] = old
    assert [r["status"] for r in json.loads(again.stdout)] == ["COMPLETED", "COMPLETED"]


def test_a_unique_clash_is_read_again_as_already_planned(db, repo_root, monkeypatch):
    """Should another writer still win a race (an older ioussl without the lock), the unique constraint
    fires, the plan is rolled back and read again: its runs are reported as already planned."""
    from sqlalchemy import insert

    from ioussl.plan import service

    service.plan_grid(repo_root / "jobs" / "tiny.toml", db, check_data=False)
    real, calls = service.register_runs, []

    def clash_once(session, spec, planned, outcome):  # type: ignore[no-untyped-def]
        calls.append(1)
        result = real(session, spec, planned, outcome)
        if len(calls) == 1:  # the row another process wrote first
            row = dict(session.execute(select(Run.__table__)).mappings().first())
            session.execute(insert(Run.__table__).values({**row, "id": "clash0000000"}))
        return result

    monkeypatch.setattr(service, "register_runs", clash_once)
    outcome = service.plan_grid(repo_root / "jobs" / "tiny.toml", db, check_data=False)
    assert len(calls) == 2 and outcome.new == [] and len(outcome.existing) == 3
    assert len(dump(db)["runs"]) == 3
