"""The scheduler seam: what ioussl asks of a backend, and the one mapping of executor names to backends.

A backend submits the same callables (RunJob, or the synthetic test workload) and answers for its jobs:
query them, find a crashed submit's job by name, release, cancel. It also owns everything that is
scheduler-specific, so that submission and tracking never ask which scheduler they talk to:

- its state table (:class:`StateTable`: raw scheduler state -> what it means for the run),
- its dependency syntax (:meth:`Backend.after`, ``afterok:12`` on SLURM),
- its log files (:meth:`Backend.log_paths`, from submitit's ``JobPaths``),
- the translation of :class:`~ioussl.resources.Resources` into its parameters (:meth:`Backend.describe`
  shows them for ``submit --dry-run``).

Callers branch on capabilities (``supports_dependencies``, ``supports_arrays``, ``runs_here``,
``uses_cluster_profile``), never on ``name``, which is only recorded in attempts. A new scheduler is one
module with one class, plus one line in :data:`BACKENDS` (docs/architecture.md, "Adding a scheduler").
Backends are imported when first used, so planning and status load none they do not need.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ioussl.errors import ConfigError, SubmissionError
from ioussl.resources import Resources
from ioussl.status import RunStatus

# The one registration of schedulers: executor name -> "module:class". ``auto`` tries them in this order
# and takes the first whose ``unavailable()`` says nothing (SLURM where a controller answers, else local).
BACKENDS: dict[str, str] = {
    "slurm": "ioussl.backends.slurm:SlurmBackend",
    "local": "ioussl.backends.local:LocalBackend",
}
EXECUTORS = ("auto", *BACKENDS)


@dataclass(frozen=True)
class Unit:
    """One submission: a pretrain, or the fine-tunes of one pretrain (or the baseline) as one job array."""

    run_ids: tuple[str, ...]
    stage: str
    parent_id: str | None  # the pretrain run these fine-tunes wait for
    resources: Resources
    job_name: str  # "ioussl-<first run id>": how a crashed submit's job is found again

    @property
    def comment(self) -> str:
        return "ioussl runs=" + ",".join(self.run_ids)


@dataclass(frozen=True)
class JobInfo:
    """One job (or one array task) as the scheduler reports it; ``job_id`` is "12" or "12_3"."""

    job_id: str
    state: str  # the backend's state word, e.g. "CANCELLED" for SLURM's "CANCELLED by 0"
    raw_state: str = ""
    name: str = ""
    exit_code: int | None = None
    signal: int | None = None
    node: str | None = None
    reason: str | None = None
    start: str | None = None
    end: str | None = None


@dataclass(frozen=True)
class QueryResult:
    """What one query learnt: jobs by id ("12" or "12_3"), which command answered, how many ran."""

    jobs: dict[str, JobInfo]
    source: str
    calls: int


@dataclass(frozen=True)
class JobState:
    """What one scheduler state means for the run whose job is in it."""

    status: RunStatus  # the run's status; COMPLETED counts only with a result.json (see track/classify.py)
    waiting: bool = False  # not started, or never will: a blocked fine-tune's job is not followed
    queued: bool = False  # waiting in the queue: a blocked fine-tune's job is cancelled; the queue's reason shown
    plain: bool = False  # the run status says it all: the raw state is not repeated in the reason
    requeueable: bool = False  # a job that noted "requeued" (preempted, time limit) comes back: it waits


@dataclass(frozen=True)
class StateTable:
    """A backend's states, each mapped explicitly; a state missing here is reported, never guessed."""

    scheduler: str  # "SLURM": named in the reason when a job is in a state the table lacks
    states: Mapping[str, JobState]

    def meaning(self, state: str) -> JobState | None:
        return self.states.get(state)


class Backend(Protocol):
    """What submission and tracking ask of a scheduler (see the module docstring).

    Capabilities: ``supports_dependencies`` (the scheduler holds fine-tunes until their pretrain succeeded;
    otherwise ioussl sequences them itself), ``supports_arrays`` (a unit of several runs is one submission,
    array task ids "12_3"), ``runs_here`` (jobs run on this machine), ``uses_cluster_profile`` (the study's
    account, partition and options reach the scheduler, so a template placeholder there is refused).
    Constructed as ``Backend(folder)``: ``folder`` is the study's ``_submitit`` directory.
    """

    name: str
    supports_dependencies: bool
    supports_arrays: bool
    runs_here: bool
    uses_cluster_profile: bool
    states: StateTable

    @classmethod
    def unavailable(cls) -> str | None:
        """Why jobs cannot go to this scheduler from here (one line), or None: what ``auto`` asks."""
        ...

    def check_can_submit(self) -> None:
        """Raise SubmissionError (one line, with what to do) when this machine cannot submit to it."""
        ...

    def after(self, job_id: str) -> str:
        """The dependency, in this scheduler's words, that holds a job until ``job_id`` has succeeded."""
        ...

    def describe(self, unit: Unit, dependency: str | None) -> str:
        """The submission of ``unit`` as this scheduler would get it, on one line (``submit --dry-run``)."""
        ...

    def submit(self, unit: Unit, calls: Sequence[Callable[[], Any]], dependency: str | None) -> list[str]:
        """Submit one call per run of ``unit`` (held, where the scheduler can hold); returns their job ids."""
        ...

    def query(self, job_ids: Iterable[str]) -> QueryResult:
        """Every asked job the scheduler still knows, under the asked id (array tasks included)."""
        ...

    def held_at_submit(self, info: JobInfo) -> bool:
        """Whether the job still waits for the release that follows its recorded submission."""
        ...

    def find_by_name(self, names: Iterable[str]) -> dict[str, list[str]]:
        """Job name -> ids of the jobs the scheduler holds under it (a killed submit's job is found again)."""
        ...

    def job_stored(self, job_id: str, job_name: str) -> bool:
        """Whether submitit finished its side of the job's submission (its pickle exists)."""
        ...

    def release(self, job_ids: Iterable[str]) -> None:
        """Let held jobs start (the registry has recorded them)."""
        ...

    def cancel(self, job_ids: Iterable[str]) -> None:
        """Stop the jobs; an unknown or ended one is not an error."""
        ...

    def log_paths(self, job_id: str, job_name: str | None) -> tuple[Path, ...]:
        """The job's output files (stdout first; they may not exist yet).

        Raises:
            ConfigError: the recorded job id or name cannot name this scheduler's files.
        """
        ...


def backend_class(executor: str) -> type[Backend]:
    """The class registered for ``executor`` in :data:`BACKENDS`.

    Raises:
        ConfigError: no backend of that name.
    """
    target = BACKENDS.get(executor)
    if target is None:
        raise ConfigError(f"unknown executor {executor!r}; choose one of {', '.join(('auto', *BACKENDS))}")
    module, _, attr = target.partition(":")
    cls: type[Backend] = getattr(importlib.import_module(module), attr)
    return cls


def resolve_executor(executor: str) -> tuple[str, str | None]:
    """The concrete executor for a requested one, and why ``auto`` did not take the first (None otherwise).

    Raises:
        ConfigError: an unknown executor name.
    """
    if executor != "auto":
        backend_class(executor)
        return executor, None
    first_refusal = None
    for name in BACKENDS:
        why_not = backend_class(name).unavailable()
        if why_not is None:
            return name, first_refusal
        first_refusal = first_refusal or why_not
    raise SubmissionError(f"no executor can run jobs here: {first_refusal}")


def choose_backend(executor: str, folder: Path) -> Backend:
    """The backend for a concrete or ``auto`` executor, ready to submit (see :func:`resolve_executor`).

    Raises:
        ConfigError: an unknown executor name.
        SubmissionError: this machine cannot submit to it (``slurm`` without ``sbatch``).
    """
    executor, _ = resolve_executor(executor)
    backend = backend_class(executor)(folder)  # type: ignore[call-arg]
    backend.check_can_submit()
    return backend


def backend_for_attempts(executor: str, folder: Path) -> Backend:
    """The backend that answers for existing attempts of this executor (no submit check).

    Raises:
        SubmissionError: the registry names an executor no backend is registered for (say, one a newer
            ioussl wrote): its jobs cannot be asked about, which a sync reports and carries on.
    """
    try:
        cls = backend_class(executor)
    except ConfigError:
        raise SubmissionError(f"attempts name the executor {executor!r}, which no backend answers for") from None
    return cls(folder)  # type: ignore[call-arg]
