"""Requeues (preemption, time limit): why the job says it is requeued, what sync records in the attempt, what
status shows. The real thing runs on the SLURM test cluster (tests/slurm/test_preemption.py)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from pathlib import Path

from typer.testing import CliRunner

from ioussl import runfiles
from ioussl.registry import open_registry
from ioussl.submit.requeue import requeue_reason
from ioussl.track.requeues import job_story, requeue_summary
from ioussl.track.sync import sync
from tests.orchestration.test_submission import FakeCluster, _runs, _submit, thesis  # noqa: F401

SCONTROL = (
    "JobId=7 JobName=ioussl-x JobState=RUNNING Reason=None PreemptEligibleTime=2026-12-06T05:00:00 PreemptTime={}"  # noqa: E501
)


def test_the_job_tells_preemption_from_its_time_limit_by_asking_the_controller():
    asked = []

    def runner(argv: list[str]) -> str:
        asked.append(argv)
        return SCONTROL.format(moment)

    moment = "2026-12-06T05:01:00"
    assert requeue_reason({"SLURM_JOB_ID": "7"}, runner) == "preempted"
    assert asked == [["scontrol", "-o", "show", "job", "7"]]
    moment = "None"
    assert requeue_reason({"SLURM_JOB_ID": "7"}, runner) == "time limit"
    assert requeue_reason({}, runner) == "time limit"  # the local executor signals only at its time limit
    assert requeue_reason({"SLURM_JOB_ID": "7; rm -rf /"}, runner) == "unknown"  # never reaches a command
    assert len(asked) == 2

    def broken(argv: list[str]) -> str:
        raise subprocess.CalledProcessError(1, argv)

    assert requeue_reason({"SLURM_JOB_ID": "7"}, broken) == "unknown"
    assert requeue_reason({"SLURM_JOB_ID": "7"}, lambda argv: "JobId=7 JobState=RUNNING") == "unknown"


def _event(run_dir: str | Path, event: str, t: float, **fields) -> None:
    runfiles.append_jsonl(Path(run_dir) / runfiles.EVENTS, {"t": t, "event": event, **fields})


def test_job_story_reads_this_attempt_s_requeues_and_ranks_only(tmp_path):
    now = time.time()
    _event(tmp_path, "requeued", now - 3600, reason="preempted")  # an earlier attempt's
    _event(tmp_path, "started", now, world_size=2, hosts="n1,n2")
    _event(tmp_path, "requeued", now + 1, reason="preempted", step=5)
    _event(tmp_path, "requeued", now + 2, reason="<script>", step=True)  # odd input: kept as unknown
    since = dt.datetime.fromtimestamp(now - 60, dt.UTC).replace(tzinfo=None)
    story = job_story(tmp_path, since)
    assert [(e["reason"], e.get("step")) for e in story.requeues] == [("preempted", 5), ("unknown", None)]
    assert (story.world_size, story.hosts) == (2, "n1,n2")
    _event(tmp_path, "started", now + 3)
    _event(tmp_path, "started", now + 4)  # no warning before it: requeued by hand (scontrol requeue)
    assert [e["reason"] for e in job_story(tmp_path, since).requeues] == ["preempted", "unknown", "unknown"]
    (tmp_path / runfiles.EVENTS).write_text("not json\n")
    assert job_story(tmp_path, since).requeues == []  # unreadable events: nothing recorded, nothing raised
    assert requeue_summary(("preempted", "time limit")) == "requeued 2x (preempted, time limit)"


def test_a_preempted_and_requeued_job_stays_one_attempt_with_its_requeues_and_never_fails(thesis):  # noqa: F811
    cluster = FakeCluster()
    _submit(thesis, cluster)
    pretrain = next(r for r in _runs(thesis).values() if r.stage == "pretrain")
    job = pretrain.attempts[-1].job_id
    registry = open_registry(thesis, create=False)
    try:
        cluster.set(job, "RUNNING")
        _event(pretrain.run_dir, "started", time.time(), world_size=1, hosts="gpu07")
        changes = []
        with registry.session() as session:
            changes += sync(session, study="thesis", backends={"slurm": cluster}).transitions
        assert _runs(thesis)[pretrain.id].status == "RUNNING"
        _event(pretrain.run_dir, "requeued", time.time(), reason="preempted", job_id=job, step=3)
        cluster.set(job, "PREEMPTED")  # what sacct shows for a moment before the requeued incarnation
        with registry.session() as session:
            changes += sync(session, study="thesis", backends={"slurm": cluster}).transitions
        run = _runs(thesis)[pretrain.id]
        assert run.status == "PENDING" and "requeued after PREEMPTED" in run.status_reason
        assert [(e["reason"], e["step"]) for e in run.attempts[-1].requeues] == [("preempted", 3)]

        _event(pretrain.run_dir, "started", time.time(), world_size=1, hosts="gpu07")
        _event(pretrain.run_dir, "requeued", time.time(), reason="time limit", job_id=job, step=9)
        _event(pretrain.run_dir, "started", time.time(), world_size=1, hosts="gpu08")
        cluster.set(job, "RUNNING")
        with registry.session() as session:
            changes += sync(session, study="thesis", backends={"slurm": cluster}).transitions
    finally:
        registry.dispose()
    run = _runs(thesis)[pretrain.id]
    assert run.status == "RUNNING" and len(run.attempts) == 1 and run.attempts[-1].job_id == job
    assert [e["reason"] for e in run.attempts[-1].requeues] == ["preempted", "time limit"]
    assert (run.attempts[-1].world_size, run.attempts[-1].hosts) == (1, "gpu08")
    assert not [c for c in changes if c[2] in ("FAILED", "LOST", "TIMEOUT")], changes  # nothing to alert on

    from ioussl.cli import app

    shown = CliRunner().invoke(app, ["status", "--json", "--no-sync", "--db", thesis, "--study", "thesis"])
    row = next(r for r in json.loads(shown.stdout) if r["id"] == pretrain.id)
    assert (row["requeues"], row["requeue_reasons"], row["world_size"]) == (2, ["preempted", "time limit"], 1)
    table = CliRunner().invoke(app, ["status", "--no-sync", "--all", "--db", thesis, "--study", "thesis"])
    assert f"run {pretrain.id} requeued 2x (preempted, time limit)" in table.stdout
