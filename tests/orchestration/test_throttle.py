"""Throttled stages: ``resources.max_running`` caps a stage's runs at once, on SLURM (``--array=0-K%N``, see
test_slurm_params.py) and in the local executor's own scheduling (here)."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select
from studyfiles import tiny_study

from ioussl.plan.service import plan_grid
from ioussl.registry import open_registry
from ioussl.registry.models import Run
from ioussl.submit import service as jobservice
from ioussl.submit.throttle import startable


@dataclass(frozen=True)
class Staged:
    name: str
    stage: str


def _names(runs: list[Staged]) -> list[str]:
    return [run.name for run in runs]


def test_startable_honours_the_slots_and_each_stage_s_limit():
    ready = [Staged("p1", "pretrain"), Staged("f1", "finetune"), Staged("f2", "finetune"), Staged("f3", "finetune")]
    limits = {"pretrain": None, "finetune": 2}
    cap = lambda run: limits[run.stage]  # noqa: E731
    assert _names(startable(ready, [], slots=10, max_running=cap)) == ["p1", "f1", "f2"]
    assert _names(startable(ready, [Staged("f0", "finetune")], slots=10, max_running=cap)) == ["p1", "f1"]
    assert _names(startable(ready, [], slots=2, max_running=cap)) == ["p1", "f1"]  # the slots first
    busy = [Staged("f8", "finetune"), Staged("f9", "finetune")]
    assert _names(startable(ready, busy, slots=3, max_running=cap)) == ["p1"]
    assert _names(startable(ready, busy, slots=2, max_running=cap)) == []
    assert _names(startable(ready, [], slots=10, max_running=lambda run: None)) == _names(ready)


@pytest.mark.slow  # about 8 s of sleeping jobs and 1 s polls; 13 s at load 20
def test_local_executor_runs_at_most_max_running_fine_tunes_at_once(tmp_path):
    from ioussl.backends.local import LocalBackend
    from ioussl.submit import workload

    study = tiny_study("throttled", finetune_seeds=(1, 2, 3)).replace(
        "[resources.finetune]\n", "[resources.finetune]\nmax_running = 1\n"
    )
    (tmp_path / "study.toml").write_text(study)
    db = str(tmp_path / "registry.db")
    plan_grid(tmp_path / "study.toml", db, check_data=False)
    registry = open_registry(db, create=False)
    try:
        with registry.session() as session:
            runs = {run.id: (run.stage, run.run_dir) for run in session.scalars(select(Run))}
    finally:
        registry.dispose()
    for stage, run_dir in runs.values():
        workload.write_spec(run_dir, steps=2, step_s=0.3 if stage == "finetune" else 0.05)
    jobservice.submit(
        db, "throttled", backend=LocalBackend(tmp_path / "runs" / "_submitit"), factory=workload.make_job,
        max_parallel=3,
    )  # fmt: skip
    spans = []
    for stage, run_dir in runs.values():
        events = [json.loads(line) for line in Path(run_dir, "events.jsonl").read_text().splitlines()]
        assert [e["event"] for e in events] == ["started", "finished"], events
        if stage == "finetune":
            spans.append((events[0]["t"], events[1]["t"]))
    spans.sort()
    assert len(spans) == 3
    # One at a time: each fine-tune started after the previous one finished (3 slots were free).
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(spans)), spans
