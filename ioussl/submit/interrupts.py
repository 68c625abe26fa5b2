"""Ctrl-C and SIGTERM during a command that runs jobs: a request to stop, honoured at a safe point.

A local ``ioussl submit`` (or ``retry``, or the demo) is a loop that starts jobs, syncs and sleeps. A
KeyboardInterrupt raised anywhere in it could cut a registry write or a job start in half, and the jobs it
started would be left to be found LOST. Instead, :func:`stop_on_signals` turns the first SIGINT or SIGTERM
into a :class:`StopRequest` that the loop checks between steps: it then interrupts its own jobs, records them
as INTERRUPTED (``ioussl submit`` resumes them from their last checkpoint) and ends with
:class:`~ioussl.errors.Interrupted`, which the CLI prints as one line (exit 130). A second signal while it
does so raises KeyboardInterrupt at once, for a user who will not wait.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from typing import TYPE_CHECKING

from ioussl.errors import Interrupted
from ioussl.registry import repo
from ioussl.registry.models import utcnow
from ioussl.status import ACTIVE, RunStatus

if TYPE_CHECKING:
    from ioussl.backends.base import Backend
    from ioussl.registry.db import Registry
    from ioussl.submit.submission import RunFilter

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Set once a stop signal arrived; shared with worker threads (the demo submits in one)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None

    def request(self, signal_name: str = "a stop request") -> None:
        self.signal_name = self.signal_name or signal_name
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking at once when a stop is requested; whether one was."""
        return self._event.wait(seconds)


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[StopRequest]:
    """While inside: the first SIGINT/SIGTERM sets ``stop``; a second one raises KeyboardInterrupt.

    Handlers can only be installed in the main thread; elsewhere this does nothing (the caller's own
    handling applies). The previous handlers come back on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.request(signal.Signals(signum).name)

    # A signal ignored by whoever started us (nohup; a background job without job control) stays ignored.
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    previous = {sig: old for sig, old in previous.items() if old is not signal.SIG_IGN}
    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


STOP_WAIT_S = 15.0  # how long an interrupted local submit waits for its jobs to note the interruption and end
SHOWN_IDS = 6


def resume_interrupted(registry: Registry, study: str, run_filter: RunFilter) -> list[str]:
    """Interrupted runs of the study (that the filter keeps) back to PLANNED, so this submit starts them
    again; each new attempt resumes from the run's last checkpoint (``checkpoints/last.pt``)."""
    with registry.session() as session:
        wanted = {repo.get_run(session, run_id).id for run_id in run_filter.run_ids}
        runs = [run for run in repo.select_runs(session, study, statuses=(RunStatus.INTERRUPTED,))
                if run_filter.matches(run, wanted)]
        for run in runs:
            repo.set_status(session, run, RunStatus.PLANNED, reason="resumed after an interruption")
        return sorted(run.id for run in runs)


def interrupt_local(registry: Registry, study: str, backend: Backend, stop: StopRequest,
                    command: str = "submit", started: Collection[str] | None = None) -> Interrupted:
    """Stop the study's running jobs of this (local) backend that this process ``started`` (None: all of
    them), record them INTERRUPTED, and return the one-line error that says so and how to resume (the caller
    raises it). Jobs another ``ioussl`` started run on.

    The jobs get what a local cancel sends (SIGINT): a job notes "interrupted" in its events and ends; a sync
    then records what finished meanwhile, and every run still active becomes INTERRUPTED: never LOST, no alert.
    """
    from ioussl.track import alerts
    from ioussl.track.sync import sync

    with registry.session(write=False) as session:
        running = {run.id: run.attempts[-1].job_id for run in repo.study_runs(session, study)
                   if run.status in ACTIVE and run.attempts and run.attempts[-1].executor == backend.name
                   and run.attempts[-1].job_id and (started is None or run.id in started)}
    why = f"stopped by {stop.signal_name or 'a stop request'} during `ioussl {command}`"
    if not running:
        return Interrupted(interrupted_line(why, []))
    _stop_jobs(backend, list(running.values()))
    with registry.session() as session:
        synced = sync(session, study=study, backends={backend.name: backend})  # what finished, what noted it
        alerts.queue(session, study, synced.transitions)  # a run that failed meanwhile still alerts (next sync)
        for run in repo.select_runs(session, study, tuple(running), statuses=(*ACTIVE, RunStatus.INTERRUPTED)):
            if run.status != RunStatus.INTERRUPTED:
                repo.set_status(session, run, RunStatus.INTERRUPTED, reason=f"{why}; resumable")
            attempt = run.attempts[-1] if run.attempts else None
            if attempt is not None:
                if attempt.status in ACTIVE:
                    repo.set_attempt_status(attempt, RunStatus.INTERRUPTED)
                repo.fill_attempt_times(attempt, None, utcnow())
        interrupted = sorted(run.id for run in repo.select_runs(session, study, tuple(running),
                                                                 statuses=(RunStatus.INTERRUPTED,)))
    return Interrupted(interrupted_line(why, interrupted))


def interrupted_line(why: str, run_ids: Sequence[str]) -> str:
    if not run_ids:
        return f"{why}: no run was running; `ioussl submit` starts the planned runs"
    shown = ", ".join(run_ids[:SHOWN_IDS]) + (" ..." if len(run_ids) > SHOWN_IDS else "")
    return (f"{why}: {len(run_ids)} running run(s) interrupted ({shown}) and nothing new started; "
            "`ioussl submit` resumes them from their last checkpoint")


def _stop_jobs(backend: Backend, job_ids: list[str]) -> None:
    """Send the jobs the backend's cancel and wait (a bounded time) until none is alive."""
    if not job_ids:
        return
    backend.cancel(job_ids)
    deadline = time.monotonic() + STOP_WAIT_S
    while time.monotonic() < deadline and backend.query(job_ids).jobs:
        time.sleep(0.2)
