"""SLURM without side effects: job resources -> submitit/sbatch parameters, scheduler output -> JobInfo.

Everything here is pure (no subprocess, no registry) so it is tested with tables and a golden sbatch file;
``slurmcmd.py`` runs the commands and ``slurm.py`` hands the parameters to submitit's SlurmExecutor.
The only state query per sync is one ``sacct`` over all active jobs, as submitit's own watcher does
(``sacct -o JobID,State,NodeList --parsable2 -j ...``); without accounting, one ``scontrol show job``.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Iterable, Mapping
from typing import Any

from ioussl import jobtext as jobscript
from ioussl.backends.base import JobInfo, JobState, StateTable
from ioussl.errors import ConfigError
from ioussl.resources import SIGNAL_DELAY_ENV, Resources, placeholder_message, placeholders, resources_for_run  # noqa: F401 (re-exported)
from ioussl.status import RunStatus

# sacct columns we read, in this order; --parsable2 separates them with "|" and no trailing "|".
SACCT_FIELDS = ("JobID", "JobIDRaw", "JobName", "State", "ExitCode", "NodeList", "Reason", "Start", "End")
SQUEUE_FORMAT = "%i|%j|%T|%r|%N|%S|%e"  # with -r: one line per array task
_NO_VALUE = {"", "None", "None assigned", "Unknown", "N/A", "(null)"}
JOB_ID = re.compile(r"[0-9]{1,20}(_[0-9]{1,10})?")  # a job, or one task of an array: "12", "12_3"
DEPENDENCY = re.compile(r"afterok:\d+(?:_\d+)?")

S = RunStatus
# Every state sacct/squeue/scontrol can print (slurm 22.05 "JOB STATE CODES"), mapped explicitly; a state
# missing here is reported as unknown, never guessed. COMPLETED counts only with a result.json.
STATES = StateTable(
    "SLURM",
    {
        "PENDING": JobState(S.PENDING, waiting=True, queued=True, plain=True),
        "REQUEUED": JobState(S.PENDING, waiting=True),  # a timeout/preemption requeue: it will run again and resume
        "REQUEUE_HOLD": JobState(S.PENDING, waiting=True),
        "REQUEUE_FED": JobState(S.PENDING),
        "RESV_DEL_HOLD": JobState(S.PENDING),
        "CONFIGURING": JobState(S.PENDING),  # nodes allocated, still booting
        "RUNNING": JobState(S.RUNNING, plain=True),
        "COMPLETING": JobState(S.RUNNING),
        "SIGNALING": JobState(S.RUNNING),
        "STAGE_OUT": JobState(S.RUNNING),
        "RESIZING": JobState(S.RUNNING),
        "SUSPENDED": JobState(S.RUNNING),
        "STOPPED": JobState(S.RUNNING),
        "COMPLETED": JobState(S.COMPLETED, plain=True),
        "FAILED": JobState(S.FAILED),
        "OUT_OF_MEMORY": JobState(S.FAILED),
        "NODE_FAIL": JobState(S.FAILED),
        "BOOT_FAIL": JobState(S.FAILED),
        "SPECIAL_EXIT": JobState(S.FAILED),
        "PREEMPTED": JobState(S.FAILED, requeueable=True),  # final only when the job did not note "requeued"
        "TIMEOUT": JobState(S.TIMEOUT),
        "DEADLINE": JobState(S.TIMEOUT),
        "CANCELLED": JobState(S.CANCELLED, waiting=True),  # kill_invalid_depend may have got there first
        "REVOKED": JobState(S.CANCELLED),
    },
)


def check_dependency(dependency: str) -> str:
    """The one dependency ioussl gives sbatch: ``afterok:<job id>`` (the id comes from the registry)."""
    if not DEPENDENCY.fullmatch(dependency):
        raise ConfigError(f"job dependency {dependency!r} is not afterok:<job id>")
    return dependency


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
    if res.tasks() * res.nodes > 1:
        # One process per GPU (DDP): srun starts them; when one fails, SLURM ends the others at once rather
        # than leaving them waiting in a collective until torch.distributed's timeout.
        params["ntasks_per_node"] = res.tasks()
        params["srun_args"] = ["--kill-on-bad-exit=1"]
    if res.max_running is not None:  # submitit writes --array=0-K%min(K+1, N) for an array
        params["array_parallelism"] = res.max_running
    # The job learns how early its warning comes (to stop at a step boundary in time), then the site's lines.
    params["setup"] = [f"export {SIGNAL_DELAY_ENV}={int(res.signal_delay_s)}", *res.setup]
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
        if key in ("additional_parameters", "signal_delay_s", "stderr_to_stdout", "setup", "array_parallelism",
                   "srun_args"):
            continue
        flags.append(f"--{renamed.get(key, key.replace('_', '-'))}={value}")
    if "signal_delay_s" in params:
        flags.append(f"--signal=USR2@{params['signal_delay_s']}")
    if array_size:
        throttle = params.get("array_parallelism")
        flags.append(f"--array=0-{array_size - 1}" + (f"%{min(array_size, throttle)}" if throttle else ""))
    extra = (params.get("additional_parameters") or {}).items()
    flags += [f"--{k}" if v is True else f"--{k}={v}" for k, v in extra]
    return flags


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
    options: dict[str, Any] = {**params, **({"map_count": array_size} if array_size else {})}
    return str(_make_sbatch_string(command=command, folder=folder, **options))
