"""One contract for every scheduler: plan, submit, chain, sync, cancel, logs, retry (and dry run, adoption).

Parametrized over the SLURM backend (real SlurmBackend and submitit, a fake controller behind its argv
commands), the local backend (real processes) and a test-only scheduler written against the protocol
alone (tests/fakesched.py, registered with one line). The flows go through the same services ``ioussl
submit``, ``status``, ``cancel``, ``retry`` and ``logs`` use; jobs are the synthetic workload.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pickle
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import submitit
from sqlalchemy import select
from studyfiles import tiny_study

from ioussl.backends import base
from ioussl.backends.base import Backend
from ioussl.backends.local import LocalBackend
from ioussl.backends.slurm import SlurmBackend
from ioussl.errors import SubmissionError
from ioussl.plan.service import plan_grid
from ioussl.registry import open_registry, opened, repo
from ioussl.registry.models import Run
from ioussl.submit import service, submission, workload
from ioussl.track import joblogs

S_DONE, S_FAILED = "COMPLETED", "FAILED"


class FakeSlurm:
    """A SLURM controller as ioussl's argv commands see it (sacct, squeue, scontrol, scancel) and as
    submitit's sbatch call sees it; jobs run, in this process, only when a test calls :meth:`run_ready`.
    A job whose afterok dependency failed is cancelled, as with ``--kill-on-invalid-dep=yes``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.jobs: dict[str, dict] = {}  # job id ("12" or "12_0") -> name, state, held, after
        self.next_id = 4000

    def sbatch(self, argv: Sequence[str]) -> str:
        script = Path(argv[-1]).read_text()
        options = dict(re.findall(r"^#SBATCH --([a-z-]+)(?:=(\S*))?$", script, re.M))
        base_id = str(self.next_id)
        self.next_id += 1
        size = int(options["array"].split("-")[1].split("%")[0]) + 1 if "array" in options else None
        after = options.get("dependency", "").removeprefix("afterok:") or None
        for job_id in [base_id] if size is None else [f"{base_id}_{i}" for i in range(size)]:
            self.jobs[job_id] = {
                "name": options["job-name"],
                "state": "PENDING",
                "held": "hold" in options,
                "after": after,
            }
        return f"Submitted batch job {base_id}\n"

    def __call__(self, argv: Sequence[str]) -> str:
        command = argv[0]
        if command == "sacct":
            wanted = set(argv[argv.index("-j") + 1].split(","))
            return "".join(self._sacct_line(j, job) for j, job in self.jobs.items() if j.split("_")[0] in wanted)
        if command == "squeue":
            return "".join(
                f"{j}|{job['name']}|{job['state']}|{self._reason(job)}|n1|N/A|N/A\n" for j, job in self.jobs.items()
            )
        if list(argv[:2]) == ["scontrol", "release"]:
            for job_id, job in self.jobs.items():
                job["held"] = job["held"] and job_id.split("_")[0] not in argv[2].split(",")
            return ""
        if command == "scancel":
            for job_id in argv[1:]:
                self._end(job_id, "CANCELLED", from_states=("PENDING", "RUNNING"))
            return ""
        raise SubmissionError(f"{command}: not answered by the fake controller")

    def run_ready(self) -> None:
        while True:
            for job in self.jobs.values():
                parent = self.jobs.get(job["after"] or "", {"state": "COMPLETED"})
                if job["state"] == "PENDING" and parent["state"] in ("FAILED", "CANCELLED"):
                    job["state"] = "CANCELLED"  # --kill-on-invalid-dep=yes
            ready = [
                j
                for j, job in self.jobs.items()
                if job["state"] == "PENDING"
                and not job["held"]
                and self.jobs.get(job["after"] or "", {"state": "COMPLETED"})["state"] == "COMPLETED"
            ]
            if not ready:
                return
            self._run(ready[0])

    def _run(self, job_id: str) -> None:
        paths = submitit.core.utils.JobPaths(self.folder / "%j", job_id=job_id)
        delayed = pickle.loads(paths.submitted_pickle.read_bytes())
        self.jobs[job_id]["state"] = "RUNNING"
        state = "COMPLETED"
        with open(paths.stdout, "a") as out, contextlib.redirect_stdout(out):
            try:
                delayed.function(*delayed.args, **delayed.kwargs)
            except Exception as exc:  # the job's failure, as SLURM would record it
                print(f"job failed: {exc}")
                state = "FAILED"
        self.jobs[job_id]["state"] = state

    def _end(self, job_id: str, state: str, from_states: Sequence[str]) -> None:
        for known, job in self.jobs.items():
            if (known == job_id or known.split("_")[0] == job_id) and job["state"] in from_states:
                job["state"] = state

    @staticmethod
    def _reason(job: dict) -> str:
        return "JobHeldUser" if job["held"] else ("Dependency" if job["state"] == "PENDING" else "None")

    def _sacct_line(self, job_id: str, job: dict) -> str:
        code = "1:0" if job["state"] == "FAILED" else "0:0"
        return f"{job_id}|{job_id}|{job['name']}|{job['state']}|{code}|n1|{self._reason(job)}|Unknown|Unknown\n"


@dataclasses.dataclass
class Scheduler:
    """A backend under contract and how to let its scheduler run what it may (local jobs run at once)."""

    backend: Backend
    run_ready: Callable[[], object]
    folder: Path  # the study's _submitit directory


@pytest.fixture(params=["slurm", pytest.param("local", marks=pytest.mark.slow), "fake"])
def sched(request, tmp_path, monkeypatch) -> Scheduler:
    folder = tmp_path / "runs" / "_submitit"
    if request.param == "slurm":
        cluster = FakeSlurm(folder)

        class Sbatch:  # what submitit runs sbatch through
            def __init__(self, command: list[str], verbose: bool = False) -> None:
                self.command = command

            def __call__(self) -> str:
                return cluster.sbatch(self.command)

        monkeypatch.setattr(submitit.core.utils, "CommandFunction", Sbatch)
        return Scheduler(SlurmBackend(folder, runner=cluster), cluster.run_ready, folder)
    if request.param == "local":
        return Scheduler(LocalBackend(folder), lambda: None, folder)
    monkeypatch.setitem(base.BACKENDS, "fake", "fakesched:FakeScheduler")  # the one registration line
    fake = base.backend_for_attempts("fake", folder)
    return Scheduler(fake, fake.run_ready, folder)  # type: ignore[attr-defined]


@pytest.fixture
def db(tmp_path) -> str:
    (tmp_path / "study.toml").write_text(tiny_study("c"))
    path = str(tmp_path / "registry.db")
    plan_grid(tmp_path / "study.toml", path, check_data=False)
    for run in _runs(path).values():
        workload.write_spec(run.run_dir, steps=2, step_s=0.01)
    return path


def _runs(db: str) -> dict[str, Run]:
    """Runs by "pretrain1", "finetune1", "finetune2", with their attempts."""
    registry = open_registry(db, create=False)
    try:
        with registry.session(write=False) as session:
            runs = list(session.scalars(select(Run)))
            for run in runs:
                _ = run.attempts
            return {f"{run.stage}{run.seed}": run for run in runs}
    finally:
        registry.dispose()


def _submit(db: str, sched: Scheduler, **kwargs) -> submission.SubmitOutcome:
    return service.submit(db, "c", backend=sched.backend, factory=workload.make_job, max_parallel=2, **kwargs)


def _settle(db: str, sched: Scheduler) -> None:
    """Let the scheduler run what it may, then sync as ``ioussl status`` does (adopt, query once, ingest)."""
    sched.run_ready()
    with opened(db) as registry:
        outcome = service.prepare(registry, "c", service.Backends(sched.folder, sched.backend))
    assert outcome.errors == []


def _events(run: Run) -> list[dict]:
    path = Path(run.run_dir) / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_submit_chain_sync_and_logs(db, sched):
    outcome = _submit(db, sched)
    assert outcome.executor == sched.backend.name and len(outcome.job_ids) == 3
    _settle(db, sched)
    runs = _runs(db)
    assert {key: run.status for key, run in runs.items()} == dict.fromkeys(runs, S_DONE)
    pretrain = runs["pretrain1"]
    finished = next(e["t"] for e in _events(pretrain) if e["event"] == "finished")
    for key in ("finetune1", "finetune2"):  # chained: no fine-tune started before its encoder existed
        attempt = runs[key].attempts[-1]
        assert attempt.executor == sched.backend.name and attempt.status == S_DONE
        assert next(e["t"] for e in _events(runs[key]) if e["event"] == "started") >= finished
        if sched.backend.supports_dependencies:  # held by the scheduler, on the pretrain's job
            assert attempt.depends_on == pretrain.attempts[-1].job_id
    target = joblogs.find(db, pretrain.id)  # `ioussl logs`: the files the backend names, inside runs/
    assert target.why_no_output is None and target.outputs
    assert "[ioussl synthetic] step 2/2" in target.outputs[0].read_text()


def test_a_failed_pretrain_blocks_its_finetunes_and_retry_rechains_them(db, sched):
    workload.write_spec(_runs(db)["pretrain1"].run_dir, steps=2, step_s=0.01, fail_attempts=1)
    _submit(db, sched)
    _settle(db, sched)
    runs = _runs(db)
    assert runs["pretrain1"].status == S_FAILED and runs["pretrain1"].attempts[-1].status == S_FAILED
    for key in ("finetune1", "finetune2"):
        assert runs[key].status == "BLOCKED", runs[key].status_reason
        assert not any(e["event"] == "started" for e in _events(runs[key]))  # never ran on a dead encoder
    service.retry(db, "c", backend=sched.backend, factory=workload.make_job)
    _settle(db, sched)
    runs = _runs(db)
    assert {key: run.status for key, run in runs.items()} == dict.fromkeys(runs, S_DONE)
    assert [a.status for a in runs["pretrain1"].attempts] == [S_FAILED, S_DONE]  # a retry is a new attempt


def test_cancel_stops_the_job_and_records_every_run(db, sched):
    pretrain = _runs(db)["pretrain1"]
    workload.write_spec(pretrain.run_dir, steps=400, step_s=0.05)  # long enough to be cancelled running
    outcome = submission.SubmitOutcome(study="c", executor=sched.backend.name)
    with opened(db) as registry:
        service.submit_unit(registry, sched.backend, submission.unit_for([pretrain], None), workload.make_job, outcome)
    job_id = outcome.job_ids[pretrain.id]
    cancelled = service.cancel(db, "c", backend=sched.backend)
    assert cancelled.job_ids == [job_id] and len(cancelled.cancelled) == 3
    sched.run_ready()  # a cancelled job never starts
    runs = _runs(db)
    assert {key: run.status for key, run in runs.items()} == dict.fromkeys(runs, "CANCELLED")
    assert runs["pretrain1"].attempts[-1].status == "CANCELLED"
    deadline = time.monotonic() + 60
    while True:  # the scheduler no longer runs it: gone, or in a state its table reads as cancelled
        info = sched.backend.query([job_id]).jobs.get(job_id)
        meaning = sched.backend.states.meaning(info.state) if info else None
        if info is None or (meaning is not None and meaning.status == "CANCELLED"):
            break
        assert time.monotonic() < deadline, info
        time.sleep(0.2)
    assert not (Path(pretrain.run_dir) / "result.json").exists()


def test_dry_run_shows_what_each_backend_would_be_handed(db, sched):
    outcome = _submit(db, sched, dry_run=True)
    assert len(outcome.commands) == len(outcome.units) == 2  # the pretrain, then its fine-tunes
    fine_tunes = next(unit for unit in outcome.units if unit.parent_id is not None)
    pretrain = f"ioussl-{fine_tunes.parent_id}"
    assert outcome.dependencies[fine_tunes.job_name] == sched.backend.after(f"<job of {pretrain}>")
    assert outcome.dependencies[pretrain] is None
    assert all(run.attempts == [] for run in _runs(db).values())  # nothing submitted, nothing recorded


def test_the_registration_is_the_one_way_in(tmp_path, monkeypatch):
    assert base.EXECUTORS == ("auto", "slurm", "local")
    with pytest.raises(SubmissionError, match="no backend answers for"):
        base.backend_for_attempts("fake", tmp_path)
    monkeypatch.setitem(base.BACKENDS, "fake", "fakesched:FakeScheduler")
    assert base.resolve_executor("fake") == ("fake", None)
    assert type(base.choose_backend("fake", tmp_path)).__name__ == "FakeScheduler"


def test_log_paths_are_submitits_and_a_recorded_id_that_names_no_job_file_is_refused(tmp_path):
    runs = tmp_path / "runs"
    slurm = joblogs.output_paths(runs, "slurm", "12_3", "ioussl-r1")
    assert slurm == ((runs / "_submitit" / "12_3" / "12_3_0_log.out", runs / "_submitit" / "12_3" / "12_3_0_log.err"),
                     None)
    local = joblogs.output_paths(runs, "local", "4242", "ioussl-r1")
    assert local == ((runs / "_submitit" / "local" / "ioussl-r1" / "4242" / "4242_0_log.out",), None)
    for executor, job_id, name, why in [
        ("slurm", "../../etc", "x", "is not a SLURM job id"),
        ("local", "4242", "..", "no usable name"),
        ("pbs", "12", "x", "no backend answers for"),
        ("import", "12", None, "an imported result"),
    ]:
        outputs, message = joblogs.output_paths(runs, executor, job_id, name)
        assert outputs == () and why in message, (executor, message)


def test_a_killed_submits_job_is_adopted_not_submitted_twice(db, sched):
    pretrain = _runs(db)["pretrain1"]
    unit = submission.unit_for([pretrain], None)
    with opened(db) as registry, registry.session() as session:  # the submit's first unit of work ...
        runs = [repo.get_run(session, pretrain.id)]
        submission.write_run_files(runs)
        calls = submission.job_calls(session, unit, workload.make_job)
        submission.record_intent(session, unit, sched.backend.name, None, arrays=sched.backend.supports_arrays)
    (job_id,) = sched.backend.submit(unit, calls, None)  # ... and the scheduler took it: then the submit died
    with opened(db) as registry, registry.session() as session:
        adopted, reverted, young = submission.adopt_orphans(
            session, service.Backends(sched.folder, sched.backend), grace_s=0
        )
    assert (adopted, reverted, young) == ([pretrain.id], [], 0)
    attempt = _runs(db)["pretrain1"].attempts[-1]
    assert (attempt.job_id, attempt.status) == (job_id, "PENDING")
    assert sched.backend.find_by_name([unit.job_name]) == {unit.job_name: [job_id]}  # one job, not two
    deadline = time.monotonic() + 60
    while isinstance(sched.backend, LocalBackend) and sched.backend.query([job_id]).jobs:
        assert time.monotonic() < deadline
        time.sleep(0.2)  # a local job runs as soon as it is submitted: let it end
    _settle(db, sched)
    assert _runs(db)["pretrain1"].status == S_DONE
