"""A stop at the next step boundary, when the job is told that its end is near.

SLURM warns a job ``signal_delay_s`` before its time limit or a preemption (``--signal=USR2@...``). submitit's
handler would requeue the job at once, wherever Python stands, and the run would resume from its last epoch
checkpoint, training the steps since then again. The job bridge (``submit/entrypoint.py``) defers that
handler instead: the signal only *requests* a stop, with the handler as the action that finishes it. The
training loops look after every step (``due``): when a stop is due, the stage writes a mid-epoch ``last.pt``
(checkpoint.py: the epoch's partial sums, each process's random state, how far into the epoch it got) and
calls ``finish``, which runs the deferred handler: it requeues the job and ends this process. The resumed run
goes on from that step and ends exactly as an uninterrupted one.

SIGTERM, which SLURM sends when a preemption starts (22.05 sends no USR2 then), at a cancel and at the time
limit, and follows with SIGKILL, requests a stop too: the bridge's action then waits for SLURM's kill (SLURM
requeues a preempted job itself).

In a job of several processes each one gets the signal, maybe at different steps: ``due`` asks all of them
(one host-side all-reduce per step), so they stop after the same step. The bridge fires the handler itself
when no step boundary comes in time (validation, the final scoring): the run then resumes from its last
epoch checkpoint, as a job did before stops were deferred.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from ioussl.science.distributed import any_over_ranks


@dataclass
class StopRequest:
    """The process's stop: armed by the job bridge with the action that ends the process, requested from a
    signal handler, read by the loops."""

    requested: bool = False
    action: Callable[[], None] | None = None  # what ends the process once the checkpoint is written


_STOP = StopRequest()


def arm(action: Callable[[], None]) -> None:
    """Set what ends the process after a stop (the deferred requeue): on every process of the job, since a
    process that got no signal stops with the others."""
    _STOP.action = action


def request() -> None:
    """Ask the training loop to stop at its next step boundary (a second request changes nothing)."""
    _STOP.requested = True


def pending() -> bool:
    """Whether this process was asked to stop (no collective: for the bridge and for tests)."""
    return _STOP.requested


def clear() -> None:
    """Forget a requested stop (it was carried out, or given up); the action stays armed."""
    _STOP.requested = False


def disarm() -> None:
    """Forget the stop and its action (the stage ended)."""
    _STOP.requested, _STOP.action = False, None


def due() -> bool:
    """Whether a stop was requested of any process of the job: every process calls this after the same step."""
    return any_over_ranks(_STOP.requested)


class StopNow(BaseException):
    """Raised by ``finish`` where no action ended the process (SLURM's kill never came after SIGTERM, a test):
    the run was stopped, not failed, and resumes from the checkpoint just written."""


def finish() -> NoReturn:
    """Run the armed action (it requeues the job and exits); raise ``StopNow`` if the process goes on."""
    action = _STOP.action
    clear()
    if action is not None:
        action()
    raise StopNow("stopped at a step boundary; the run resumes from checkpoints/last.pt")


SUMS = ("loss", "fallbacks", "iou", "bad_value", "first_bad")  # the loop's running sums (engine.EpochSums)


@dataclass
class EpochPart:
    """What a stopped epoch had done: its first ``done`` steps, with the loop's running sums (this process's),
    the items it trained on and the seconds it took; the method's epoch statistics ride along."""

    done: int
    sums: dict[str, Any]
    items: int
    seconds: float
    method: dict[str, Any] = field(default_factory=dict)


class StoppedAtStep(Exception):
    """Raised by a training loop after the step at which a stop became due, with the epoch's part so far."""

    def __init__(self, part: EpochPart) -> None:
        super().__init__(f"stopped after {part.done} step(s) of the epoch")
        self.part = part
