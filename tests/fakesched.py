"""A test-only scheduler, written against the Backend protocol alone (ioussl/backends/base.py).

It proves the seam: a scheduler that shares nothing with SLURM (its own state names, dependency syntax and
log files; no arrays) is one file plus one registration line (``BACKENDS["fake"] = "fakesched:FakeScheduler"``)
and passes the contract suite (tests/orchestration/test_backend_contract.py).

Its queue lives in ``<folder>/fakesched/``: ``queue.json`` (job id -> name, state, dependency) and one pickle
per job, so every FakeScheduler of the same folder sees the same jobs, as processes talking to one
scheduler would. Jobs run only when a test calls :meth:`FakeScheduler.run_ready`: in this process, one
after the other, their output in ``<job id>.log``.
"""

from __future__ import annotations

import contextlib
import json
import pickle
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ioussl.backends.base import JobInfo, JobState, QueryResult, StateTable, Unit
from ioussl.errors import ConfigError
from ioussl.status import RunStatus as S

STATES = StateTable(
    "fakesched",
    {
        "HOLD": JobState(S.PENDING, waiting=True, queued=True, plain=True),
        "QUEUED": JobState(S.PENDING, waiting=True, queued=True, plain=True),
        "ACTIVE": JobState(S.RUNNING, plain=True),
        "SUCCEEDED": JobState(S.COMPLETED, plain=True),
        "CRASHED": JobState(S.FAILED),
        "WITHDRAWN": JobState(S.CANCELLED, waiting=True),
    },
)
AFTER = "once:{}:succeeded"


class FakeScheduler:
    """Dependencies yes, arrays no: each run of a unit is its own job (see the module docstring)."""

    name = "fake"
    supports_dependencies = True
    supports_arrays = False
    runs_here = True
    uses_cluster_profile = False
    states = STATES

    def __init__(self, folder: Path) -> None:
        self.home = folder / "fakesched"

    @classmethod
    def unavailable(cls) -> str | None:
        return None

    def check_can_submit(self) -> None:
        """Always can."""

    def after(self, job_id: str) -> str:
        return AFTER.format(job_id)

    def describe(self, unit: Unit, dependency: str | None) -> str:
        return f"fakesched {unit.job_name} x{len(unit.run_ids)}" + (f" {dependency}" if dependency else "")

    def submit(self, unit: Unit, calls: Sequence[Callable[[], Any]], dependency: str | None) -> list[str]:
        parent = None
        if dependency is not None:
            prefix, _, rest = dependency.partition(":")
            parent, _, suffix = rest.partition(":")
            if (prefix, suffix) != ("once", "succeeded") or not parent.isdigit():
                raise ConfigError(f"fakesched cannot wait for {dependency!r}")
        queue = self._queue()
        ids = []
        for call in calls:
            job_id = str(len(queue) + 1)
            (self.home / f"{job_id}.pkl").write_bytes(pickle.dumps(call))
            queue[job_id] = {"name": unit.job_name, "state": "HOLD", "after": parent}
            ids.append(job_id)
        self._save(queue)
        return ids

    def query(self, job_ids: Iterable[str]) -> QueryResult:
        queue = self._queue()
        jobs = {job_id: _info(job_id, queue[job_id]) for job_id in job_ids if job_id in queue}
        return QueryResult(jobs, "fakesched", 1)

    def held_at_submit(self, info: JobInfo) -> bool:
        return info.state == "HOLD"

    def find_by_name(self, names: Iterable[str]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for job_id, job in self._queue().items():
            if job["name"] in set(names):
                found.setdefault(job["name"], []).append(job_id)
        return found

    def job_stored(self, job_id: str, job_name: str) -> bool:
        return (self.home / f"{job_id}.pkl").is_file()

    def release(self, job_ids: Iterable[str]) -> None:
        self._move(job_ids, {"HOLD"}, "QUEUED")

    def cancel(self, job_ids: Iterable[str]) -> None:
        self._move(job_ids, {"HOLD", "QUEUED", "ACTIVE"}, "WITHDRAWN")

    def log_paths(self, job_id: str, job_name: str | None) -> tuple[Path, ...]:
        if not job_id.isdigit():
            raise ConfigError(f"job id {job_id[:40]!r} is not a fakesched job id")
        return (self.home / f"{job_id}.log",)

    def run_ready(self) -> int:
        """Run every queued job whose dependency succeeded (a failed one withdraws it); returns how many ran."""
        ran = 0
        while True:
            queue = self._queue()
            ready = [
                j
                for j, job in queue.items()
                if job["state"] == "QUEUED" and (job["after"] is None or queue[job["after"]]["state"] == "SUCCEEDED")
            ]
            dead = [
                j
                for j, job in queue.items()
                if job["state"] in ("HOLD", "QUEUED")
                and job["after"]
                and queue[job["after"]]["state"] in ("CRASHED", "WITHDRAWN")
            ]
            self._move(dead, {"HOLD", "QUEUED"}, "WITHDRAWN")
            if not ready:
                return ran
            self._run(ready[0])
            ran += 1

    def _run(self, job_id: str) -> None:
        self._move([job_id], {"QUEUED"}, "ACTIVE")
        call = pickle.loads((self.home / f"{job_id}.pkl").read_bytes())
        state = "SUCCEEDED"
        with open(self.log_paths(job_id, None)[0], "a") as log, contextlib.redirect_stdout(log):
            print(f"fakesched: job {job_id} starts")
            try:
                call()
            except Exception as exc:  # the job's failure is the job's, as on a real scheduler
                print(f"fakesched: job {job_id} crashed: {exc}")
                state = "CRASHED"
        self._move([job_id], {"ACTIVE"}, state)

    def _move(self, job_ids: Iterable[str], sources: set[str], target: str) -> None:
        queue = self._queue()
        for job_id in job_ids:
            if job_id in queue and queue[job_id]["state"] in sources:
                queue[job_id]["state"] = target
        self._save(queue)

    def _queue(self) -> dict[str, dict[str, Any]]:
        self.home.mkdir(parents=True, exist_ok=True)
        path = self.home / "queue.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _save(self, queue: dict[str, dict[str, Any]]) -> None:
        path = self.home / "queue.json"
        path.with_suffix(".tmp").write_text(json.dumps(queue))
        path.with_suffix(".tmp").replace(path)


def _info(job_id: str, job: dict[str, Any]) -> JobInfo:
    code = 1 if job["state"] == "CRASHED" else 0
    return JobInfo(job_id=job_id, state=job["state"], raw_state=job["state"], name=job["name"], exit_code=code)
