"""The transition table: what may follow what, and that end states stay put."""

from __future__ import annotations

import pytest

from ioussl.errors import IllegalTransition
from ioussl.status import (
    ALLOWED,
    ATTEMPT_ALLOWED,
    RunStatus,
    can_transition,
    check_attempt_transition,
    check_transition,
    is_retryable,
)

S = RunStatus


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (S.PLANNED, S.SUBMITTING), (S.SUBMITTING, S.PENDING), (S.PENDING, S.RUNNING), (S.RUNNING, S.COMPLETED),
        (S.RUNNING, S.PENDING),  # requeued after a timeout or preemption
        (S.PENDING, S.BLOCKED), (S.FAILED, S.SUBMITTING), (S.BLOCKED, S.SUBMITTING), (S.LOST, S.PLANNED),
        (S.SUBMITTING, S.PLANNED),  # sbatch refused: back to planned, nothing lost
        (S.PLANNED, S.COMPLETED),  # an imported result
    ],
)
def test_allowed(old, new):
    check_transition(old, new)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (S.COMPLETED, S.RUNNING), (S.COMPLETED, S.FAILED), (S.COMPLETED, S.PLANNED), (S.FAILED, S.RUNNING),
        (S.CANCELLED, S.COMPLETED), (S.PLANNED, S.RUNNING), (S.TIMEOUT, S.PENDING), (S.LOST, S.RUNNING),
    ],
)
def test_refused(old, new):
    with pytest.raises(IllegalTransition, match=f"from {old} to {new}"):
        check_transition(old, new)


def test_completed_is_never_rewritten():
    assert ALLOWED[S.COMPLETED] == frozenset()
    assert all(not can_transition(S.COMPLETED, s) for s in RunStatus if s != S.COMPLETED)


def test_terminal_states_only_go_back_by_retry():
    for status in RunStatus:
        if status.is_terminal() and status != S.COMPLETED:
            assert is_retryable(status)
            # An interrupted run may also be cancelled for good: nothing runs it, as for a planned run.
            expected = {S.PLANNED, S.SUBMITTING} | ({S.CANCELLED} if status == S.INTERRUPTED else set())
            assert ALLOWED[status] == expected


def test_interrupted_is_reached_from_active_states_only_and_never_blocks_or_alerts():
    from ioussl.status import AWAITS_SUBMIT, DEAD_PARENT
    from ioussl.track.alerts import ALERT_STATES

    for status in (S.SUBMITTING, S.PENDING, S.RUNNING):
        check_transition(status, S.INTERRUPTED)
    for status in (S.PLANNED, S.COMPLETED, S.FAILED, S.LOST):
        with pytest.raises(IllegalTransition):
            check_transition(status, S.INTERRUPTED)
    check_transition(S.INTERRUPTED, S.PLANNED)  # submit resumes it
    with pytest.raises(IllegalTransition):
        check_transition(S.INTERRUPTED, S.RUNNING)  # only through a new submission
    assert S.INTERRUPTED not in DEAD_PARENT and S.INTERRUPTED not in ALERT_STATES
    assert S.INTERRUPTED in AWAITS_SUBMIT and S.INTERRUPTED.awaits_submit() and S.INTERRUPTED.is_terminal()


def test_every_status_has_a_row_and_active_is_not_terminal():
    assert set(ALLOWED) == set(RunStatus)
    assert not any(s.is_active() and s.is_terminal() for s in RunStatus)


def test_invalid_is_terminal_retryable_and_reached_only_from_active_states():
    assert S.INVALID.is_terminal() and is_retryable(S.INVALID)
    for status in (S.SUBMITTING, S.PENDING, S.RUNNING):
        check_transition(status, S.INVALID)
    for status in (S.PLANNED, S.COMPLETED):
        with pytest.raises(IllegalTransition):
            check_transition(status, S.INVALID)
    check_transition(S.INVALID, S.PLANNED)
    with pytest.raises(IllegalTransition):
        check_transition(S.INVALID, S.COMPLETED)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (S.SUBMITTING, S.PENDING),  # the job id arrived (or the job was adopted)
        (S.SUBMITTING, S.PLANNED),  # sbatch refused, or no job reached the scheduler
        (S.SUBMITTING, S.CANCELLED),  # an orphan job cancelled
        (S.PENDING, S.RUNNING), (S.RUNNING, S.PENDING), (S.RUNNING, S.COMPLETED), (S.PENDING, S.BLOCKED),
        (S.RUNNING, S.INVALID), (S.PENDING, S.CANCELLED),
    ],
)
def test_attempt_allowed(old, new):
    check_attempt_transition(old, new)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # an ended job stays ended: a retry is a new attempt, never the old one revived
        (S.FAILED, S.PLANNED), (S.FAILED, S.SUBMITTING), (S.COMPLETED, S.RUNNING), (S.CANCELLED, S.PENDING),
        (S.PLANNED, S.SUBMITTING), (S.LOST, S.RUNNING), (S.INVALID, S.COMPLETED),
        (S.PENDING, S.SUBMITTING),  # a job with an id never goes back to being an intent
    ],
)
def test_attempt_refused(old, new):
    with pytest.raises(IllegalTransition, match=f"an attempt cannot go from {old} to {new}"):
        check_attempt_transition(old, new)


def test_attempt_table_follows_the_run_table_while_active_and_freezes_after():
    assert set(ATTEMPT_ALLOWED) == set(RunStatus)
    for status in RunStatus:
        expected = ALLOWED[status] if status.is_active() else frozenset()
        assert ATTEMPT_ALLOWED[status] == expected, status


def test_registry_refuses_an_illegal_attempt_change_and_leaves_the_row_alone():
    from ioussl.registry import repo
    from ioussl.registry.models import Attempt

    attempt = Attempt(run_id="r1", executor="slurm", status=S.FAILED, reason="exit code 1")
    with pytest.raises(IllegalTransition):
        repo.set_attempt_status(attempt, S.PENDING, reason="revived")
    assert attempt.status == S.FAILED and attempt.reason == "exit code 1"
    attempt = Attempt(run_id="r1", executor="slurm", status=S.SUBMITTING)
    repo.set_attempt_job(attempt, "12_3", S.PENDING)
    assert (attempt.status, attempt.job_id, attempt.array_job_id) == (S.PENDING, "12_3", "12")
