"""SLURM without side effects: job resources -> submitit/sbatch parameters, scheduler output -> JobInfo.

Everything here is pure (no subprocess, no registry) so it is tested with tables and a golden sbatch file;
``scheduler.py`` runs the commands and ``submission.py`` hands the parameters to submitit's SlurmExecutor.
The only state query per sync is one ``sacct`` over all active jobs, as submitit's own watcher does
(``sacct -o JobID,State,NodeList --parsable2 -j ...``); without accounting, one ``scontrol show job``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ioussl import jobtext as jobscript
from ioussl.errors import ConfigError

# sacct columns we read, in this order; --parsable2 separates them with "|" and no trailing "|".
SACCT_FIELDS = ("JobID", "JobIDRaw", "JobName", "State", "ExitCode", "NodeList", "Reason", "Start", "End")
SQUEUE_FORMAT = "%i|%j|%T|%r|%N|%S|%e"  # with -r: one line per array task
_NO_VALUE = {"", "None", "None assigned", "Unknown", "N/A", "(null)"}


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
    cpus_per_task: int = 8
    mem_gb: float | None = None
    time_min: int = 24 * 60
    setup: tuple[str, ...] = ()  # shell lines from the study's cluster profile (module load ...)
    extra: Mapping[str, str] = field(default_factory=dict)  # further sbatch options, name -> value
    max_parallel: int | None = None  # local executor: jobs at once
    signal_delay_s: int = 120  # USR2 this long before the time limit: checkpoint, then requeue
    max_requeues: int = 3  # timeouts/preemptions a job may be requeued for (submitit's max_num_timeout)

    def gpus(self) -> int:
        """GPUs one job holds, for the GPU-hours estimate (gres "gpu:v100:2" -> 2)."""
        if self.gres:
            match = re.fullmatch(r"gpu(?::[^:,]+)?(?::(\d+))?", self.gres)
            if match:
                return int(match.group(1) or 1) * self.nodes
        return self.gpus_per_node * self.nodes

    def gpu_hours(self) -> float:
        return self.gpus() * self.time_min / 60


_INT_KEYS = (
    "gpus_per_node",
    "nodes",
    "cpus_per_task",
    "time_min",
    "signal_delay_s",
    "max_requeues",
    "max_parallel",
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
    return Resources(**merged, extra=extra, setup=setup)


def _table(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a table of sbatch options, got {value!r}")
    return {key: str(v) for key, v in jobscript.check_options(value, where).items()}


# key -> smallest allowed value (and every integer fits a 32-bit column)
_INT_MIN = {"gpus_per_node": 0, "nodes": 1, "cpus_per_task": 1, "time_min": 1, "signal_delay_s": 0,
            "max_requeues": 0, "max_parallel": 1}


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


def submitit_parameters(
    res: Resources, *, job_name: str, comment: str | None = None, dependency: str | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``submitit.SlurmExecutor.update_parameters``.

    A dependent job also gets ``--kill-on-invalid-dep=yes``: when its pretrain fails, SLURM cancels it
    instead of leaving it pending forever, whatever the cluster's DependencyParameters say.
    Every job is submitted held (``--hold``) and released once submitit stored it and the registry
    recorded its id: a job can neither start before its output folder and pickle exist (a slow sbatch
    answer would make it fail to launch) nor run unrecorded after a crashed submit.
    """
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": res.time_min,
        "cpus_per_task": res.cpus_per_task,
        "signal_delay_s": res.signal_delay_s,
        "stderr_to_stdout": True,
    }
    if res.nodes != 1:
        params["nodes"] = res.nodes
    if res.setup:
        params["setup"] = list(res.setup)
    optional = {
        "partition": res.partition,
        "account": res.account,
        "qos": res.qos,
        "constraint": res.constraint,
        "exclude": res.exclude,
        "comment": comment,
        "dependency": dependency,
    }
    params.update({k: v for k, v in optional.items() if v})
    if res.gres:
        params["gres"] = res.gres
    elif res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    if res.mem_gb is not None:
        params["mem"] = f"{int(res.mem_gb)}GB" if res.mem_gb == int(res.mem_gb) else f"{int(res.mem_gb * 1024)}MB"
    additional: dict[str, Any] = {**res.extra, "hold": True}
    if dependency:
        additional["kill-on-invalid-dep"] = "yes"
    if additional:
        params["additional_parameters"] = additional
    jobscript.check_parameters(params)  # the script is built from these: the last gate before submitit
    return params


def sbatch_flags(params: Mapping[str, Any], array_size: int | None = None) -> list[str]:
    """The sbatch options the parameters stand for, as ``--name=value`` (for ``submit --dry-run``)."""
    renamed = {"job_name": "job-name", "gpus_per_node": "gpus-per-node", "cpus_per_task": "cpus-per-task"}
    flags = []
    for key, value in params.items():
        if key in ("additional_parameters", "signal_delay_s", "stderr_to_stdout", "setup"):
            continue
        flags.append(f"--{renamed.get(key, key.replace('_', '-'))}={value}")
    if "signal_delay_s" in params:
        flags.append(f"--signal=USR2@{params['signal_delay_s']}")
    if array_size:
        flags.append(f"--array=0-{array_size - 1}")
    extra = (params.get("additional_parameters") or {}).items()
    flags += [f"--{k}" if v is True else f"--{k}={v}" for k, v in extra]
    return flags


@dataclass(frozen=True)
class JobInfo:
    """One job (or one array task) as the scheduler reports it; ``job_id`` is "12" or "12_3"."""

    job_id: str
    state: str  # first word, upper case: "CANCELLED by 0" -> "CANCELLED"
    raw_state: str = ""
    name: str = ""
    exit_code: int | None = None
    signal: int | None = None
    node: str | None = None
    reason: str | None = None
    start: str | None = None
    end: str | None = None


def parse_sacct(text: str) -> dict[str, JobInfo]:
    """Parse ``sacct -X --parsable2 --noheader -o <SACCT_FIELDS>``; pending arrays are expanded.

    A job name may itself contain "|", so the name is whatever lies between the two leading and the six
    trailing columns. Malformed lines are skipped: a sync must never die on one odd record.
    """
    jobs: dict[str, JobInfo] = {}
    for line in text.splitlines():
        cols = line.split("|")
        if len(cols) < len(SACCT_FIELDS) or cols[0] in ("JobID", "") or "." in cols[0]:
            continue  # header, blank, or a step (batch/extern) if -X was not given
        head, tail = cols[:2], cols[-6:]
        row = dict(zip(SACCT_FIELDS, [*head, "|".join(cols[2:-6]), *tail], strict=True))
        code, sig = parse_exit_code(row["ExitCode"])
        for job_id in expand_job_ids(row["JobID"]):
            jobs[job_id] = JobInfo(
                job_id=job_id,
                state=normalise_state(row["State"]),
                raw_state=row["State"],
                name=row["JobName"],
                exit_code=code,
                signal=sig,
                node=_value(row["NodeList"]),
                reason=_value(row["Reason"]),
                start=_value(row["Start"]),
                end=_value(row["End"]),
            )
    return jobs


def lookup(jobs: Mapping[str, JobInfo], job_id: str) -> JobInfo | None:
    """The record of one job or array task; an array cancelled before it split is reported by its bare id."""
    found = jobs.get(job_id)
    if found is None and "_" in job_id:
        whole = jobs.get(job_id.split("_")[0])
        if whole is not None and whole.state not in ("RUNNING", "COMPLETED"):
            return dataclasses.replace(whole, job_id=job_id)
    return found


def parse_squeue(text: str) -> dict[str, JobInfo]:
    """Parse ``squeue -h -r -t all -o SQUEUE_FORMAT`` (no exit codes: scontrol has them)."""
    jobs: dict[str, JobInfo] = {}
    for line in text.splitlines():
        cols = line.split("|")
        if len(cols) < 7:
            continue
        job_id, name, (state, reason, node, start, end) = cols[0], "|".join(cols[1:-5]), cols[-5:]
        for jid in expand_job_ids(job_id):
            jobs[jid] = JobInfo(
                job_id=jid,
                state=normalise_state(state),
                raw_state=state,
                name=name,
                node=_value(node),
                reason=_value(reason),
                start=_value(start),
                end=_value(end),
            )
    return jobs


def parse_scontrol(text: str) -> dict[str, JobInfo]:
    """Parse ``scontrol -o show job`` (one job per line of key=value pairs; Reason may hold spaces)."""
    jobs: dict[str, JobInfo] = {}
    for line in text.splitlines():
        fields = _scontrol_fields(line)
        if "JobId" not in fields or "JobState" not in fields:
            continue
        job_id = fields["JobId"]
        task = fields.get("ArrayTaskId")
        if fields.get("ArrayJobId") and task:
            job_id = f"{fields['ArrayJobId']}_{task if task.isdigit() else f'[{task}]'}"
        code, sig = parse_exit_code(fields.get("ExitCode", ""))
        for jid in expand_job_ids(job_id):
            jobs[jid] = JobInfo(
                job_id=jid,
                state=normalise_state(fields["JobState"]),
                raw_state=fields["JobState"],
                name=fields.get("JobName", ""),
                exit_code=code,
                signal=sig,
                node=_value(fields.get("NodeList", "")),
                reason=_value(fields.get("Reason", "")),
                start=_value(fields.get("StartTime", "")),
                end=_value(fields.get("EndTime", "")),
            )
    return jobs


_SCONTROL_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=")


def _scontrol_fields(line: str) -> dict[str, str]:
    """Split "A=1 B=two words C=3" into a dict; a value runs until the next " Key=" token."""
    matches = list(_SCONTROL_KEY.finditer(line))
    fields = {}
    for here, nxt in zip(matches, [*matches[1:], None], strict=False):
        end = nxt.start() if nxt else len(line)
        fields[here.group(1)] = line[here.end() : end].strip()
    return fields


def expand_job_ids(job_id: str) -> list[str]:
    """ "12" -> ["12"]; "12_3" -> ["12_3"]; "12_[0-2,5%4]" -> ["12_0", "12_1", "12_2", "12_5"]."""
    match = re.fullmatch(r"(\d+)_\[([^\]]*)\]", job_id)
    if not match:
        return [job_id] if re.fullmatch(r"\d+(_\d+)?", job_id) else []
    base, spec = match.group(1), match.group(2).split("%")[0]
    ids = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit() and (not hi or hi.isdigit()):
            ids += [f"{base}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return ids


def normalise_state(raw: str) -> str:
    """ "CANCELLED by 0" -> "CANCELLED"; "RUNNING+" -> "RUNNING"; "" -> "UNKNOWN"."""
    word = raw.strip().split(" ")[0].rstrip("+").upper()
    return word or "UNKNOWN"


def parse_exit_code(text: str) -> tuple[int | None, int | None]:
    """sacct/scontrol "ExitCode" is "code:signal"; anything else gives (None, None)."""
    code, _, sig = text.partition(":")
    if not (code.isdigit() and sig.isdigit()):
        return None, None
    return int(code), int(sig)


def _value(text: str) -> str | None:
    text = text.strip()
    return None if text in _NO_VALUE else text


def sacct_command(job_ids: Iterable[str]) -> list[str]:
    """One sacct call for every job; array ids are queried by their array job id (covers all tasks)."""
    ids = sorted({jid.split("_")[0] for jid in job_ids}, key=int)
    return ["sacct", "-X", "--parsable2", "--noheader", "-o", ",".join(SACCT_FIELDS), "-j", ",".join(ids)]


# Every job the controller still holds (ended ones for MinJobAge). Not filtered by -j: squeue fails on
# the whole call when one listed id has already left the controller.
SQUEUE_COMMAND = ["squeue", "-h", "-r", "-t", "all", "-o", SQUEUE_FORMAT]


SCONTROL_COMMAND = ["scontrol", "-o", "show", "job"]
HELD_REASON = "JobHeldUser"


def release_command(job_ids: Iterable[str]) -> list[str]:
    """One ``scontrol release`` for every job; an array is released through its array job id."""
    ids = sorted({jid.split("_")[0] for jid in job_ids}, key=int)
    return ["scontrol", "release", ",".join(ids)]


def render_sbatch(params: Mapping[str, Any], folder: str, python: str = "python", array_size: int | None = None) -> str:
    """The sbatch script submitit writes for these parameters (for the golden test and --dry-run -v)."""
    from submitit.slurm.slurm import _make_sbatch_string  # submitit's own renderer: what really runs

    command = f"{python} -u -m submitit.core._submit {shlex.quote(str(folder))}"  # as SlurmExecutor quotes it
    extra = {"map_count": array_size} if array_size else {}
    return _make_sbatch_string(command=command, folder=folder, **params, **extra)
