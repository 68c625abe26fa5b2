"""Submission, adoption, sync, retry and cancel against a fake cluster (no SLURM needed).

The fake answers like SLURM (job ids, array task ids "12_0", states), so these tests pin the engine's
decisions; tests/slurm runs the same code against the real test cluster.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
from pathlib import Path

import pytest
from registryfix import write_result
from sqlalchemy import select
from studyfiles import tiny_study

from ioussl.backends.base import JobInfo, QueryResult
from ioussl.backends.slurm import SlurmBackend
from ioussl.errors import ConfigError, NotFound, SubmissionError
from ioussl.plan.service import plan_grid
from ioussl.registry import open_registry
from ioussl.registry.models import Attempt, Metric, Result, Run
from ioussl.submit import service as jobservice
from ioussl.submit import submission
from ioussl.submit.submission import RunFilter
from ioussl.track.sync import sync

REPO = Path(__file__).resolve().parents[2]


class FakeCluster(SlurmBackend):
    """Records every sbatch; jobs change state only when a test says so. SLURM's own states,
    dependency syntax and log paths come from the SLURM backend."""

    def __init__(self) -> None:
        super().__init__(Path("_submitit"))
        self.submits: list[tuple[tuple[str, ...], str | None, int]] = []
        self.jobs: dict[str, JobInfo] = {}
        self.next_id = 100
        self.reject: str | None = None
        self.queries = 0
        self.cancelled: list[str] = []
        self.released: list[str] = []
        self.stored = True

    def submit(self, unit, calls, dependency):
        if self.reject:
            raise SubmissionError(self.reject)
        base = str(self.next_id)
        self.next_id += 1
        ids = [base] if len(calls) == 1 else [f"{base}_{i}" for i in range(len(calls))]
        for job_id in ids:
            reason = "Dependency" if dependency else "JobHeldUser"
            self.jobs[job_id] = JobInfo(job_id, "PENDING", "PENDING", unit.job_name, reason=reason)
        self.submits.append((unit.run_ids, dependency, len(calls)))
        return ids

    def query(self, job_ids):
        self.queries += 1
        return QueryResult({j: self.jobs[j] for j in job_ids if j in self.jobs}, "fake", 1)

    def find_by_name(self, names):
        found: dict[str, list[str]] = {}
        for info in self.jobs.values():
            if info.name in names:
                found.setdefault(info.name, []).append(info.job_id)
        return found

    def job_stored(self, job_id, job_name):
        return self.stored

    def release(self, job_ids):
        self.released += list(job_ids)

    def cancel(self, job_ids):
        for job_id in job_ids:
            self.cancelled.append(job_id)
            self.set(job_id, "CANCELLED")

    def set(self, job_id: str, state: str, exit_code: int = 0) -> None:
        info = self.jobs[job_id]
        self.jobs[job_id] = dataclasses.replace(
            info, state=state, raw_state=state, exit_code=exit_code, signal=0, reason=None
        )


def make_job(run_dir: str, encoder: str | None):
    return ("job", run_dir, encoder)


@pytest.fixture
def thesis(tmp_path):
    """The thesis grid (10 pretrains, 20 fine-tunes, 4 baseline fine-tunes) planned into a fresh registry."""
    shutil.copytree(REPO / "jobs", tmp_path / "jobs")
    profile = tmp_path / "jobs" / "clusters" / "plgrid-v100.toml"
    profile.write_text(profile.read_text().replace("FILL-IN-YOUR-GRANT", "plgssl"))  # as a user fills it in
    db = str(tmp_path / "registry.db")
    plan_grid(tmp_path / "jobs" / "thesis.toml", db, check_data=False)
    return db


def _runs(db: str) -> dict[str, Run]:
    registry = open_registry(db, create=False)
    try:
        with registry.session() as session:
            runs = session.scalars(select(Run)).all()
            for run in runs:
                _ = run.attempts, run.result
            return {run.id: run for run in runs}
    finally:
        registry.dispose()


def _submit(db, cluster, **kwargs):
    return jobservice.submit(db, "thesis", backend=cluster, factory=make_job, **kwargs)


def test_thesis_grid_is_one_sbatch_per_pretrain_per_array_and_one_for_the_baseline(thesis):
    cluster = FakeCluster()
    outcome = _submit(thesis, cluster)
    assert outcome.sbatch_calls == len(cluster.submits) == 10 + 10 + 1
    pretrains = {ids[0]: dep for ids, dep, n in cluster.submits if n == 1}
    arrays = [(ids, dep) for ids, dep, n in cluster.submits if n > 1]
    assert len(pretrains) == 10 and all(dep is None for dep in pretrains.values())
    assert sorted(len(ids) for ids, _ in arrays) == [2] * 10 + [4]
    runs = _runs(thesis)
    for ids, dep in arrays:
        parent = runs[ids[0]].parent_id
        if parent is None:
            assert dep is None  # the no-pretraining baseline waits for nothing
        else:
            assert dep == f"afterok:{runs[parent].attempts[-1].job_id}"
            assert all(runs[i].parent_id == parent for i in ids)
    assert all(run.status == "PENDING" and run.attempts[-1].job_id for run in runs.values())
    assert sorted(cluster.released) == sorted(a.attempts[-1].job_id for a in runs.values())
    assert outcome.gpu_hours == pytest.approx(10 * 24 + 24 * 8)
    config = json.loads((Path(next(iter(runs.values())).run_dir) / "config.json").read_text())
    assert config["stage"] in ("pretrain", "finetune")


def test_second_submit_submits_nothing(thesis):
    cluster = FakeCluster()
    _submit(thesis, cluster)
    again = _submit(thesis, cluster)
    assert again.sbatch_calls == 0 and len(cluster.submits) == 21


def test_dry_run_writes_nothing_and_shows_the_tree(thesis):
    cluster = FakeCluster()
    outcome = _submit(thesis, cluster, dry_run=True)
    assert cluster.submits == [] and len(outcome.units) == 21
    assert sum(dep is not None and dep.startswith("afterok:<job of") for dep in outcome.dependencies.values()) == 10
    assert all(run.status == "PLANNED" for run in _runs(thesis).values())


def test_rejected_sbatch_leaves_runs_planned_with_the_message(thesis):
    cluster = FakeCluster()
    cluster.reject = "sbatch rejected ioussl-x: sbatch: error: invalid partition specified: nope"
    with pytest.raises(SubmissionError, match="invalid partition specified: nope"):
        _submit(thesis, cluster)
    runs = _runs(thesis)
    assert all(run.status == "PLANNED" for run in runs.values())
    tried = [run for run in runs.values() if run.attempts]
    assert len(tried) == 1 and "invalid partition" in tried[0].attempts[-1].reason


def test_filters_choose_runs_and_fine_tunes_of_unsubmitted_pretrains_wait(thesis):
    cluster = FakeCluster()
    outcome = _submit(thesis, cluster, run_filter=RunFilter(stage="finetune", group="[0.3, 0.6]"))
    assert cluster.submits == [] and len(outcome.skipped) == 4
    assert all("is PLANNED" in why for _, why in outcome.skipped)
    outcome = _submit(thesis, cluster, run_filter=RunFilter(group="no pretraining"))
    assert [n for _, _, n in cluster.submits] == [4]


def test_sync_applies_states_blocks_children_and_ingests_results(thesis):
    cluster = FakeCluster()
    _submit(thesis, cluster)
    runs = _runs(thesis)
    pretrain = next(r for r in runs.values() if r.stage == "pretrain")
    children = [r for r in runs.values() if r.parent_id == pretrain.id]
    cluster.set(pretrain.attempts[-1].job_id, "FAILED", exit_code=1)
    done = next(r for r in runs.values() if r.stage == "pretrain" and r.id != pretrain.id)
    cluster.set(done.attempts[-1].job_id, "COMPLETED")
    registry = open_registry(thesis, create=False)
    with registry.session() as session:
        write_result(session.get(Run, done.id), final_loss=0.5)
    (Path(done.run_dir) / "metrics.jsonl").write_text('{"epoch": 0, "loss": 1.5}\n{"epoch": 1, "loss": 1.2}\n')

    registry = open_registry(thesis, create=False)
    with registry.session() as session:
        outcome = sync(session, study="thesis", backends={"slurm": cluster})
    assert cluster.queries == 1 and outcome.calls == 1 and outcome.checked == 34
    runs = _runs(thesis)
    assert runs[pretrain.id].status == "FAILED" and "exit code 1" in runs[pretrain.id].status_reason
    assert all(runs[c.id].status == "BLOCKED" for c in children)
    assert sorted(cluster.cancelled) == sorted(c.attempts[-1].job_id for c in children)
    assert runs[done.id].status == "COMPLETED" and runs[done.id].result.payload["final_loss"] == 0.5
    with registry.session() as session:
        assert session.scalar(select(Metric.value).where(Metric.run_id == done.id, Metric.epoch == 1)) == 1.2
        again = sync(session, study="thesis", backends={"slurm": cluster})  # idempotent
        assert again.transitions == [] and session.query(Result).count() == 1
    registry.dispose()


def test_retry_makes_new_attempts_and_rechains_blocked_fine_tunes(thesis):
    cluster = FakeCluster()
    _submit(thesis, cluster)
    runs = _runs(thesis)
    pretrain = next(r for r in runs.values() if r.stage == "pretrain")
    old_job = pretrain.attempts[-1].job_id
    cluster.set(old_job, "FAILED", exit_code=1)
    outcome = jobservice.retry(thesis, "thesis", backend=cluster, factory=make_job)
    assert outcome.sbatch_calls == 2
    runs = _runs(thesis)
    new_job = runs[pretrain.id].attempts[-1].job_id
    assert new_job != old_job and len(runs[pretrain.id].attempts) == 2
    for child in (r for r in runs.values() if r.parent_id == pretrain.id):
        assert child.status == "PENDING" and len(child.attempts) == 2
        assert child.attempts[-1].depends_on == new_job


def test_cancel_by_interval(thesis):
    cluster = FakeCluster()
    _submit(thesis, cluster)
    outcome = jobservice.cancel(thesis, "thesis", group="[0.3, 0.6]", backend=cluster)
    assert len(outcome.cancelled) == 6 and len(cluster.cancelled) == 6
    runs = _runs(thesis)
    assert sum(r.status == "CANCELLED" for r in runs.values()) == 6


def _intent(db: str, cluster: FakeCluster, age_s: float) -> submission.Unit:
    """Record the intent of the first pretrain as a killed submit would leave it."""
    registry = open_registry(db, create=False)
    with registry.session() as session:
        runs = session.scalars(select(Run).where(Run.stage == "pretrain")).all()
        unit = submission.unit_for([runs[0]], None)
        submission.record_intent(session, unit, "slurm", None)
        for attempt in session.scalars(select(Attempt)):
            attempt.submitted_at = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(seconds=age_s)
    registry.dispose()
    return unit


@pytest.mark.parametrize(
    "job_exists, stored, age_s, status, cancelled",
    [
        (True, True, 60, "PENDING", False),  # sbatch ran, submitit stored the job: adopt and release it
        (True, False, 60, "PLANNED", True),  # sbatch ran, the job was never stored: cancel, resubmit
        (False, True, 60, "PLANNED", False),  # killed before sbatch
        (False, True, 0, "SUBMITTING", False),  # too young: another submit may be inside sbatch right now
    ],
)
def test_adoption_of_an_interrupted_submit(thesis, job_exists, stored, age_s, status, cancelled):
    cluster = FakeCluster()
    cluster.stored = stored
    unit = _intent(thesis, cluster, age_s)
    if job_exists:
        cluster.submit(unit, [None], None)
    registry = open_registry(thesis, create=False)
    with registry.session() as session:
        submission.adopt_orphans(session, lambda executor: cluster)
    registry.dispose()
    run = _runs(thesis)[unit.run_ids[0]]
    assert run.status == status
    assert (cluster.cancelled == ["100"]) is cancelled
    if job_exists:
        assert run.attempts[-1].job_id == "100"  # adopted or cancelled, its id is never lost
        assert ("100" in cluster.released) is (status == "PENDING")


def test_bad_input_is_one_clear_error(thesis, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="unknown executor 'pbs'"):
        jobservice.submit(thesis, "thesis", executor="pbs", factory=make_job)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(SubmissionError, match="sbatch is not on PATH"):
        jobservice.submit(thesis, "thesis", executor="slurm", factory=make_job)
    with pytest.raises(NotFound, match="^unknown study 'nope'; known studies: thesis$"):
        jobservice.submit(thesis, "nope", factory=make_job)


LOCAL_STUDY = tiny_study("local")


def test_local_executor_starts_fine_tunes_only_after_their_pretrain(tmp_path):
    from ioussl.backends.local import LocalBackend
    from ioussl.submit import workload

    (tmp_path / "study.toml").write_text(LOCAL_STUDY)
    db = str(tmp_path / "registry.db")
    plan_grid(tmp_path / "study.toml", db, check_data=False)
    runs = _runs(db)
    for run in runs.values():
        workload.write_spec(run.run_dir, steps=2, step_s=0.2)
    outcome = jobservice.submit(
        db, "local", backend=LocalBackend(tmp_path / "runs" / "_submitit"), factory=workload.make_job, max_parallel=2
    )
    runs = _runs(db)
    assert outcome.sbatch_calls == 3 and all(r.status == "COMPLETED" for r in runs.values())
    assert all(r.attempts[-1].executor == "local" and r.attempts[-1].job_id.isdigit() for r in runs.values())
    events = {
        r.stage + str(r.seed): [json.loads(x) for x in Path(r.run_dir, "events.jsonl").read_text().splitlines()]
        for r in runs.values()
    }
    pretrain_end = max(e["t"] for e in events["pretrain1"] if e["event"] == "finished")
    assert min(e["t"] for key in ("finetune1", "finetune2") for e in events[key]) > pretrain_end


@pytest.mark.parametrize(
    "args, message",
    [
        (["submit", "--study", "thesis", "--executor", "pbs"], "error: Invalid value for '--executor'"),
        (["submit", "--study", "nope"], "error: unknown study 'nope'"),
        (["cancel"], "error: say what to cancel"),
        (["submit", "--study", "thesis", "--run", "zzzz9"], "error: unknown run 'zzzz9'"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_1(thesis, args, message):
    from typer.testing import CliRunner

    from ioussl.cli import app

    result = CliRunner().invoke(app, [*args, "--db", thesis])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and result.stderr.startswith(message)


def test_cli_empty_study_is_an_error(tmp_path):
    from typer.testing import CliRunner

    from ioussl.cli import app
    from ioussl.registry import repo

    db = str(tmp_path / "r.db")
    registry = open_registry(db, create=True)
    with registry.session() as session:
        repo.get_or_create_study(session, "empty", None, {}, str(tmp_path / "runs"))
    registry.dispose()
    result = CliRunner().invoke(app, ["submit", "--study", "empty", "--db", db])
    assert result.exit_code == 1 and "study 'empty' has no runs: plan it first" in result.stderr
