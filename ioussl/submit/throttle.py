"""Which ready runs the local executor may start now: ``--max-parallel`` in all, ``max_running`` per stage.

SLURM throttles an array itself (``--array=0-K%N`` from a stage's ``resources.max_running``); the local
executor is its own scheduler, so it applies the same per-stage limit here. Pure: tested with plain objects.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar


class StagedRun(Protocol):
    @property
    def stage(self) -> str: ...


R = TypeVar("R", bound=StagedRun)


def startable(
    ready: Sequence[R], running: Sequence[StagedRun], slots: int, max_running: Callable[[R], int | None]
) -> list[R]:
    """The runs of ``ready`` (in its order) to start now.

    Args:
        ready: runs that may start, most urgent first.
        running: runs that occupy a slot now.
        slots: how many runs may run at once in all (``--max-parallel``).
        max_running: a run's stage limit (None: no limit beyond ``slots``).
    """
    busy = Counter(run.stage for run in running)
    free = slots - len(running)
    chosen: list[R] = []
    for run in ready:
        if free <= 0:
            break
        limit = max_running(run)
        if limit is not None and busy[run.stage] >= limit:
            continue
        chosen.append(run)
        busy[run.stage] += 1
        free -= 1
    return chosen
