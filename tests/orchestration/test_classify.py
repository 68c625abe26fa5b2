"""The pure classification table: (run status, scheduler record, misses, run files) -> change."""

from __future__ import annotations

import dataclasses
import functools

import pytest

from ioussl.backends.base import JobInfo
from ioussl.backends.slurmtext import STATES
from ioussl.track import classify as classify_module
from ioussl.track.classify import LOST_AFTER_MISSES, REQUEUE_WAIT_S, RunFiles, classify, classify_all

# Observations of SLURM jobs: the table of SLURM's states comes with them, as sync passes it.
Observation = functools.partial(classify_module.Observation, states=STATES)


def info(state: str, exit_code: int = 0, reason: str | None = None, raw: str | None = None) -> JobInfo:
    return JobInfo(
        job_id="7", state=state, raw_state=raw or state, exit_code=exit_code, signal=0, reason=reason
    )


RESULT = RunFiles(has_result=True, last_event="finished")
FAILED_EVENT = RunFiles(last_event="failed", error="TrainingError: loss is NaN at step 3")

# (status before, scheduler record, run files, expected status (None = unchanged), reason contains, ingest)
TABLE = [
    ("SUBMITTING", info("PENDING", reason="Priority"), RunFiles(), "PENDING", "Priority", False),
    ("PENDING", info("PENDING", reason="Dependency"), RunFiles(), None, "Dependency", False),
    ("PENDING", info("RUNNING"), RunFiles(), "RUNNING", None, False),
    ("RUNNING", info("RUNNING"), RunFiles(), None, None, False),
    ("RUNNING", info("COMPLETING"), RunFiles(), None, "COMPLETING", False),
    ("RUNNING", info("REQUEUED"), RunFiles(last_event="requeued"), "PENDING", "REQUEUED", False),
    (
        "RUNNING",
        info("PENDING", reason="BeginTime"),
        RunFiles(last_event="requeued"),
        "PENDING",
        "BeginTime",
        False,
    ),
    # Preempted and requeued (PreemptMode=REQUEUE): waiting again, not FAILED; not requeued: FAILED.
    ("RUNNING", info("PREEMPTED"), RunFiles(last_event="requeued"), "PENDING", "requeued after PREEMPTED", False),
    ("RUNNING", info("PREEMPTED"), RunFiles(last_event="started"), "FAILED", "PREEMPTED", True),
    ("RUNNING", info("PREEMPTED"), FAILED_EVENT, "FAILED", "PREEMPTED", True),
    ("RUNNING", info("COMPLETED"), RESULT, "COMPLETED", "job 7 completed", True),
    ("RUNNING", info("COMPLETED"), RunFiles(), "FAILED", "without writing result.json", True),
    ("RUNNING", info("FAILED", exit_code=1), FAILED_EVENT, "FAILED", "exit code 1: TrainingError", True),
    ("RUNNING", info("OUT_OF_MEMORY", exit_code=0), RunFiles(), "FAILED", "OUT_OF_MEMORY", True),
    ("RUNNING", info("NODE_FAIL"), RunFiles(), "FAILED", "NODE_FAIL", True),
    ("RUNNING", info("PREEMPTED"), RunFiles(), "FAILED", "PREEMPTED", True),
    ("RUNNING", info("TIMEOUT"), RunFiles(), "TIMEOUT", "TIMEOUT", True),
    ("PENDING", info("CANCELLED", raw="CANCELLED by 0"), RunFiles(), "CANCELLED", "CANCELLED by 0", True),
    ("PENDING", info("COMPLETED"), RESULT, "COMPLETED", "job 7 completed", True),  # ended between two syncs
]


@pytest.mark.parametrize("before, record, files, after, reason, ingest", TABLE)
def test_scheduler_states_map_explicitly(before, record, files, after, reason, ingest):
    change = classify(Observation(run_id=1, status=before, job_id="7", info=record, files=files))
    assert change is not None
    assert change.status == after
    assert (reason is None and change.reason is None) or reason in (change.reason or "")
    assert change.ingest is ingest and change.info == record


# What a RUNNING run becomes for each state SLURM can print (None = stays RUNNING), written out by hand
# so that a change to SLURM's state table has to be made here too, on purpose.
FROM_RUNNING = {
    **dict.fromkeys(["PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "CONFIGURING"], "PENDING"),
    **dict.fromkeys(["RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING", "SUSPENDED", "STOPPED"], None),
    "COMPLETED": "COMPLETED",  # with its result.json
    **dict.fromkeys(["FAILED", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "SPECIAL_EXIT", "PREEMPTED"], "FAILED"),
    **dict.fromkeys(["TIMEOUT", "DEADLINE"], "TIMEOUT"),
    **dict.fromkeys(["CANCELLED", "REVOKED"], "CANCELLED"),
}


def test_every_slurm_state_maps_to_its_registry_status():
    assert set(FROM_RUNNING) == set(STATES.states)
    for state, expected in FROM_RUNNING.items():
        files = RESULT if state == "COMPLETED" else RunFiles()
        change = classify(Observation(run_id=1, status="RUNNING", job_id="7", info=info(state), files=files))
        assert change is not None and change.status == expected, state


def test_unknown_state_is_reported_not_guessed():
    change = classify(Observation(run_id=1, status="RUNNING", job_id="7", info=info("WEIRD")))
    assert change is not None and change.status is None and "unknown SLURM state 'WEIRD'" in change.reason


@pytest.mark.parametrize(
    "misses, files, after, new_misses",
    [
        (0, RunFiles(), None, 1),
        (LOST_AFTER_MISSES - 2, RunFiles(), None, LOST_AFTER_MISSES - 1),
        (LOST_AFTER_MISSES - 1, RunFiles(), "LOST", LOST_AFTER_MISSES),
        (0, RESULT, "COMPLETED", 0),
        (5, FAILED_EVENT, "FAILED", 0),
        (0, RunFiles(last_event="interrupted"), "INTERRUPTED", 0),  # Ctrl-C reached the job: at once, not LOST
        (LOST_AFTER_MISSES - 1, RunFiles(last_event="interrupted"), "INTERRUPTED", 0),
    ],
)
def test_vanished_job_becomes_lost_only_after_repeated_misses(misses, files, after, new_misses):
    change = classify(Observation(run_id=1, status="RUNNING", job_id="7", misses=misses, files=files))
    assert change is not None and change.status == after and change.misses == new_misses


@pytest.mark.parametrize("status", ["PLANNED", "COMPLETED", "FAILED", "BLOCKED", "LOST", "CANCELLED", "INTERRUPTED"])
def test_inactive_runs_without_dead_parent_are_left_alone(status):
    assert classify(Observation(run_id=1, status=status, job_id="7", info=info("RUNNING"))) is None


def test_intent_without_job_id_is_left_to_adoption():
    assert classify(Observation(run_id=1, status="SUBMITTING", job_id=None)) is None


@pytest.mark.parametrize(
    "status, record, after, cancel",
    [
        ("PLANNED", None, "BLOCKED", None),
        ("PENDING", info("PENDING", reason="DependencyNeverSatisfied"), "BLOCKED", "7"),
        ("PENDING", info("CANCELLED"), "BLOCKED", None),  # kill_invalid_depend got there first
        ("SUBMITTING", None, "BLOCKED", None),
    ],
)
def test_finetune_of_a_dead_pretrain_is_blocked_and_its_waiting_job_cancelled(status, record, after, cancel):
    job = None if status == "PLANNED" else "7"
    obs = Observation(
        run_id=2,
        status=status,
        is_finetune=True,
        parent_id=1,
        parent_status="FAILED",
        job_id=job,
        info=record,
    )
    change = classify(obs)
    assert change is not None and change.status == after and change.cancel_job == cancel
    assert "pretrain ended FAILED" in change.reason


def test_finetune_of_a_completed_pretrain_follows_its_own_job():
    obs = Observation(
        run_id=2,
        status="PENDING",
        is_finetune=True,
        parent_id=1,
        parent_status="COMPLETED",
        job_id="7",
        info=info("RUNNING"),
    )
    assert classify(obs).status == "RUNNING"


def test_the_fine_tunes_of_an_interrupted_pretrain_wait_and_are_not_blocked():
    parent = Observation(run_id=1, status="RUNNING", job_id="5", files=RunFiles(last_event="interrupted"))
    child = Observation(run_id=2, status="PLANNED", is_finetune=True, parent_id=1, parent_status="RUNNING")
    changes = {c.run_id: c for c in classify_all([child, parent])}
    assert changes[1].status == "INTERRUPTED" and "`ioussl submit` resumes it" in changes[1].reason
    assert 2 not in changes


def test_classify_all_blocks_children_on_the_sync_their_parent_fails():
    parent = Observation(run_id=1, status="RUNNING", job_id="5", info=info("FAILED", exit_code=1))
    child = Observation(
        run_id=2,
        status="PENDING",
        is_finetune=True,
        parent_id=1,
        parent_status="RUNNING",
        job_id="6_0",
        info=info("PENDING", reason="Dependency"),
    )
    changes = {c.run_id: c for c in classify_all([child, parent])}
    assert changes[1].status == "FAILED"
    assert changes[2].status == "BLOCKED" and changes[2].cancel_job == "6_0"


def test_untrustworthy_files_of_a_vanished_job_make_the_run_invalid():
    files = RunFiles(has_result=True, invalid="events.jsonl line 2: t 1e+300 is not a time")
    change = classify(Observation(run_id="r1", status="RUNNING", job_id="7", info=None, files=files))
    assert change.status == "INVALID" and change.reason.startswith("events.jsonl line 2")


def test_without_its_backends_table_a_state_is_unknown_not_read_as_slurm():
    bare = classify_module.Observation(run_id=1, status="RUNNING", job_id="7", info=info("COMPLETED"), files=RESULT)
    change = classify(bare)
    assert change is not None and change.status is None and "unknown scheduler state 'COMPLETED'" in change.reason
def test_a_job_slurm_preempted_a_moment_ago_waits_for_its_requeue_and_one_long_gone_failed():
    import datetime as dt

    now = dt.datetime(2026, 12, 6, 6, 0, 0)
    preempted = dataclasses.replace(info("PREEMPTED"), end="2026-12-06T05:59:15")
    waiting = classify(Observation("r", "RUNNING", job_id="7", info=preempted, files=RunFiles("started"), now=now))
    assert waiting.status == "PENDING" and "requeued after PREEMPTED" in waiting.reason
    later = now + dt.timedelta(seconds=REQUEUE_WAIT_S)
    gone = classify(Observation("r", "RUNNING", job_id="7", info=preempted, files=RunFiles("started"), now=later))
    assert gone.status == "FAILED"
