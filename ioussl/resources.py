"""What one job asks of the cluster, validated: a stage's resources over the study's cluster profile.

Every verb reads these (plan checks them and estimates GPU-hours, submit hands them to a backend, export lists
them); each backend translates them into its own parameters (``backends/slurmtext.submitit_parameters``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ioussl import jobtext as jobscript
from ioussl.errors import ConfigError

# The job's copy of ``signal_delay_s`` (the sbatch script exports it): how long it may train on to a step
# boundary once warned (submit/entrypoint.stop_grace_s).
SIGNAL_DELAY_ENV = "IOUSSL_SIGNAL_DELAY_S"


@dataclass(frozen=True)
class Resources:
    """What one job asks of the cluster: stage resources over the cluster profile (thesis: one V100)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None  # e.g. "v100"
    exclude: str | None = None
    gres: str | None = None  # e.g. "gpu:v100:1"; when set it replaces gpus_per_node
    gpus_per_node: int = 1
    nodes: int = 1
    tasks_per_node: int | None = None  # processes per node, one per GPU for DDP; None: as many as GPUs (at least 1)
    cpus_per_task: int = 8
    mem_gb: float | None = None
    time_min: int = 24 * 60
    setup: tuple[str, ...] = ()  # shell lines from the study's cluster profile (module load ...)
    extra: Mapping[str, str] = field(default_factory=dict)  # further sbatch options, name -> value
    max_parallel: int | None = None  # local executor: jobs at once
    signal_delay_s: int = 120  # USR2 this long before the time limit: stop at a step, checkpoint, requeue
    max_requeues: int = 3  # timeouts/preemptions a job may be requeued for (submitit's max_num_timeout)
    max_running: int | None = None  # runs of this stage at once: SLURM arrays get --array=0-K%N, local too

    def gpus(self) -> int:
        """GPUs one job holds, for the GPU-hours estimate (gres "gpu:v100:2" -> 2)."""
        if self.gres:
            match = re.fullmatch(r"gpu(?::[^:,]+)?(?::(\d+))?", self.gres)
            if match:
                return int(match.group(1) or 1) * self.nodes
        return self.gpus_per_node * self.nodes

    def gpu_hours(self) -> float:
        return self.gpus() * self.time_min / 60

    def tasks(self) -> int:
        """Processes per node: ``tasks_per_node``, else one per GPU of a node (at least one). A job of more
        than one process in all trains as one DDP process group (submit/entrypoint.py)."""
        if self.tasks_per_node is not None:
            return self.tasks_per_node
        return max(1, self.gpus() // self.nodes)


_INT_KEYS = (
    "gpus_per_node",
    "nodes",
    "tasks_per_node",
    "cpus_per_task",
    "time_min",
    "signal_delay_s",
    "max_requeues",
    "max_parallel",
    "max_running",
)
_STR_KEYS = ("partition", "account", "qos", "constraint", "exclude", "gres")


def resources_for_run(stored: Mapping[str, Any], where: str = "resources") -> Resources:
    """A run's stored resources (``{"slurm": profile, "gpus", ...}``, see study.py) as Resources.

    The stage's own settings win over the cluster profile; sbatch options from both ``additional`` tables
    are merged, the stage's last. Raises ConfigError on a value of the wrong type or range, and on any
    string that could break the job script (``jobscript``): called at plan time and again at submit.
    """
    profile = dict(stored.get("slurm") or {})
    stage = {k: v for k, v in stored.items() if k != "slurm"}
    merged: dict[str, Any] = {k: v for k, v in profile.items() if k not in ("additional", "setup")}
    merged.update({k: v for k, v in stage.items() if k not in ("additional", "gpus")})
    if "gpus" in stage:
        merged["gpus_per_node"] = stage["gpus"]
    extra = {
        **_table(profile.get("additional"), f"{where}.slurm.additional"),
        **_table(stage.get("additional"), f"{where}.additional"),
    }
    setup = jobscript.check_setup(profile.get("setup") or [], f"{where}.slurm.setup")
    valid = {f.name for f in dataclasses.fields(Resources)}
    unknown = sorted(set(merged) - valid)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}")
    _check_types(merged, where)
    resources = Resources(**merged, extra=extra, setup=setup)
    _check_tasks(resources, where)
    return resources


def _table(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a table of sbatch options, got {value!r}")
    return {key: str(v) for key, v in jobscript.check_options(value, where).items()}


# key -> smallest allowed value (and every integer fits a 32-bit column)
_INT_MIN = {"gpus_per_node": 0, "nodes": 1, "tasks_per_node": 1, "cpus_per_task": 1, "time_min": 1, "signal_delay_s": 0,
            "max_requeues": 0, "max_parallel": 1, "max_running": 1}


def _check_types(merged: Mapping[str, Any], where: str) -> None:
    for key in _INT_KEYS:
        value = merged.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{where}.{key}: expected an integer, got {value!r}")
        if value is not None and not _INT_MIN[key] <= value < 2**31:
            raise ConfigError(f"{where}.{key}: expected an integer >= {_INT_MIN[key]}, got {value!r}")
    for key in _STR_KEYS:
        if merged.get(key) is not None:
            jobscript.check_text(merged[key], f"{where}.{key}")
    mem = merged.get("mem_gb")
    if mem is not None and (isinstance(mem, bool) or not isinstance(mem, int | float) or not _positive(mem)):
        raise ConfigError(f"{where}.mem_gb: expected a positive number, got {mem!r}")
    if mem is not None and int(mem * 1024) < 1:  # it would become --mem=0MB: SLURM's "all the node's memory"
        raise ConfigError(f"{where}.mem_gb: {mem!r} is less than 1 MB (SLURM reads --mem=0 as all of a node's "
                          "memory); give at least 0.001")


def _check_tasks(res: Resources, where: str) -> None:
    """At most one process per GPU: NCCL refuses two processes on one GPU (a CPU-only job may run any)."""
    gpus = res.gpus() // res.nodes
    if res.tasks_per_node is not None and gpus and res.tasks_per_node > gpus:
        raise ConfigError(f"{where}.tasks_per_node: {res.tasks_per_node} processes per node but {gpus} GPU(s) per "
                          "node; multi-GPU training runs one process per GPU (leave tasks_per_node out for that)")


def _positive(value: float) -> bool:
    try:
        return math.isfinite(float(value)) and 0 < value <= 2**40
    except OverflowError:
        return False


# Values a profile template leaves for the user to fill in: FILL-IN-YOUR-GRANT, <account>, CHANGEME, TODO.
PLACEHOLDER = re.compile(r"fill[-_ ]?in|change[-_ ]?me|replace[-_ ]?me|<[^<>]*>|\btodo\b|\bx{3,}\b", re.IGNORECASE)
_FILL_IN_HINTS = {
    "account": "your SLURM account (sacctmgr show assoc user=$USER)",
    "partition": "a partition of your site (sinfo -s)",
}


def placeholders(res: Resources) -> dict[str, str]:
    """Settings whose value is still a template placeholder (name -> value), e.g. account FILL-IN-YOUR-GRANT."""
    values = {key: getattr(res, key) for key in _STR_KEYS}
    values.update({f"additional.{key}": value for key, value in res.extra.items()})
    return {key: value for key, value in values.items() if isinstance(value, str) and PLACEHOLDER.search(value)}


def placeholder_message(found: Mapping[str, str], where: str) -> str:
    """One line: which settings of which profile are placeholders, and what to fill in."""
    settings = ", ".join(f"{key} = {value!r}" for key, value in found.items())
    hints = [_FILL_IN_HINTS.get(key, f"your site's {key}") for key in found]
    return f"{where}: {settings} is a placeholder; fill in {' and '.join(hints)}"
