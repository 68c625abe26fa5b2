"""Run statuses and the one table of allowed transitions.

Every status change in ioussl goes through :func:`check_transition`; COMPLETED is never rewritten, and the
other end states (FAILED, TIMEOUT, CANCELLED, BLOCKED, LOST, INVALID, INTERRUPTED) change only by an explicit
retry, resume or re-chain. This module is the one vocabulary of statuses: classify, sync, submission, the
services and the renderers all use :class:`RunStatus` and the sets below.
"""

from __future__ import annotations

import enum

from ioussl.errors import IllegalTransition


class RunStatus(enum.StrEnum):
    PLANNED = "PLANNED"  # in the registry, never submitted (or its submission failed cleanly)
    SUBMITTING = "SUBMITTING"  # intent recorded, sbatch/submit under way: adopt or retry, never duplicate
    PENDING = "PENDING"  # queued (waiting for resources or for its pretrain)
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"  # result.json ingested (or imported)
    FAILED = "FAILED"  # the job exited non-zero, ran out of memory or lost its node
    TIMEOUT = "TIMEOUT"  # hit its time limit without being requeued
    CANCELLED = "CANCELLED"  # cancelled by a user
    BLOCKED = "BLOCKED"  # a fine-tune whose pretrain failed: waits for a retry of the pretrain
    LOST = "LOST"  # vanished from the scheduler without an exit marker after repeated misses
    INVALID = "INVALID"  # the job's run files failed validation at ingest (status_reason: which file, why)
    # Stopped by a user's Ctrl-C or SIGTERM (its job recorded an "interrupted" event, or the local submit that
    # ran it stopped it): not a failure, no alert; `ioussl submit` resumes it from its last checkpoint.
    INTERRUPTED = "INTERRUPTED"

    def is_terminal(self) -> bool:
        """No scheduler news can change this status (only a user's retry can)."""
        return self in _TERMINAL

    def is_active(self) -> bool:
        """The scheduler may still hold a job for this run."""
        return self in _ACTIVE

    def awaits_submit(self) -> bool:
        """Nothing runs it, and the next ``ioussl submit`` starts it (planned, or interrupted and resumable)."""
        return self in AWAITS_SUBMIT


S = RunStatus
_TERMINAL = frozenset({S.COMPLETED, S.FAILED, S.TIMEOUT, S.CANCELLED, S.BLOCKED, S.LOST, S.INVALID,
                       S.INTERRUPTED})
_ACTIVE = frozenset({S.SUBMITTING, S.PENDING, S.RUNNING})
_RETRYABLE = frozenset({S.FAILED, S.TIMEOUT, S.CANCELLED, S.BLOCKED, S.LOST, S.INVALID, S.INTERRUPTED})

ACTIVE = _ACTIVE  # the scheduler may still hold a job
TERMINAL = _TERMINAL
# A pretrain in one of these will never deliver the encoder its fine-tunes wait for.
DEAD_PARENT = frozenset({S.FAILED, S.TIMEOUT, S.CANCELLED, S.BLOCKED, S.LOST, S.INVALID})
DEFAULT_RETRY = (S.FAILED, S.LOST, S.TIMEOUT)  # what `ioussl retry` picks when no --state is given
# Runs `ioussl submit` starts: an interrupted run is not dead (its fine-tunes wait, they are not BLOCKED).
AWAITS_SUBMIT = frozenset({S.PLANNED, S.INTERRUPTED})

# from -> allowed targets. Terminal states only move back to PLANNED/SUBMITTING (a user's retry or a
# re-chain onto a resubmitted pretrain); COMPLETED moves nowhere.
ALLOWED: dict[RunStatus, frozenset[RunStatus]] = {
    S.PLANNED: frozenset({S.SUBMITTING, S.CANCELLED, S.BLOCKED, S.COMPLETED}),
    S.SUBMITTING: frozenset({S.PLANNED, S.PENDING, S.RUNNING, S.COMPLETED, S.FAILED, S.TIMEOUT, S.CANCELLED,
                             S.BLOCKED, S.LOST, S.INVALID, S.INTERRUPTED}),
    S.PENDING: frozenset({S.RUNNING, S.COMPLETED, S.FAILED, S.TIMEOUT, S.CANCELLED, S.BLOCKED, S.LOST,
                          S.INVALID, S.INTERRUPTED}),
    S.RUNNING: frozenset({S.PENDING, S.COMPLETED, S.FAILED, S.TIMEOUT, S.CANCELLED, S.LOST, S.INVALID,
                          S.INTERRUPTED}),
    S.COMPLETED: frozenset(),
    **{status: frozenset({S.PLANNED, S.SUBMITTING}) for status in _RETRYABLE},
    # An interrupted run may also be cancelled for good (nothing runs it, like a planned run).
    S.INTERRUPTED: frozenset({S.PLANNED, S.SUBMITTING, S.CANCELLED}),
}


def can_transition(old: RunStatus, new: RunStatus) -> bool:
    return old == new or new in ALLOWED[old]


def check_transition(old: RunStatus, new: RunStatus) -> None:
    """Raise IllegalTransition unless ``old -> new`` is in the table (staying put is always allowed)."""
    if not can_transition(old, new):
        raise IllegalTransition(f"a run cannot go from {old} to {new}")


def is_retryable(status: RunStatus) -> bool:
    return status in _RETRYABLE


# An attempt is one job. While its job may still run, it moves as its run does; once it ended it stays ended
# (a retry is a new attempt). PLANNED on an attempt: its submission never reached the scheduler.
ATTEMPT_ALLOWED: dict[RunStatus, frozenset[RunStatus]] = {
    status: ALLOWED[status] if status in _ACTIVE else frozenset() for status in RunStatus
}


def check_attempt_transition(old: RunStatus, new: RunStatus) -> None:
    """Raise IllegalTransition unless an attempt may go from ``old`` to ``new`` (staying put is allowed)."""
    if old != new and new not in ATTEMPT_ALLOWED[old]:
        raise IllegalTransition(f"an attempt cannot go from {old} to {new}")
