"""The bridge between orchestration and science: what a SLURM job (or ``ioussl run``) executes.

``RunJob(run_dir, encoder_checkpoint)`` is a submitit ``Checkpointable``: when SLURM preempts or times out
the job, submitit calls ``checkpoint()``, which requeues the same callable, and training resumes from
``checkpoints/last.pt``. The job never opens the registry; it only writes files into its run directory
(``events.jsonl``, ``metrics.jsonl``, ``result.json``, ``checkpoints/``). Science is imported lazily, so
importing this module loads no torch.

A job of several tasks (one per GPU: ``resources.tasks_per_node`` x ``nodes``) runs this in every task;
``distributed`` joins them into one ``torch.distributed`` process group for the stage (DDP), and only
rank 0 writes events and ``result.json``. A one-task job and ``ioussl run`` start no process group.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import submitit

from ioussl import runfiles
from ioussl.config import RunConfig, config_hash, run_hash
from ioussl.errors import ConfigError, TrainingError
from ioussl.resources import SIGNAL_DELAY_ENV

FOLLOWER_GRACE_S = 3.0  # a failing follower task waits this long, so rank 0 records the failure first


def load_run_config(run_dir: Path) -> RunConfig:
    """Read and validate ``run_dir/config.json``.

    Raises:
        ConfigError: the file is missing or not a valid run config (the message names the file).
    """
    path = run_dir / runfiles.CONFIG
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: a run directory needs its config.json")
    try:
        return RunConfig.from_json(path.read_text()).validate()
    except ValueError as exc:  # JSONDecodeError
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parent_run_hash(encoder_checkpoint: Path | None) -> str | None:
    """The pretraining run's hash, read from ``<pretrain run_dir>/result.json`` beside its encoder."""
    if encoder_checkpoint is None:
        return None
    result = runfiles.read_json(Path(encoder_checkpoint).parent.parent / runfiles.RESULT)
    return result.get("run_hash") if result else None


def job_environment() -> dict[str, Any]:
    """Job id, array index and node from submitit when running under it; the host name otherwise."""
    info: dict[str, Any] = {"node": socket.gethostname()}
    try:
        env = submitit.JobEnvironment()
        info.update(job_id=env.job_id, array_index=env.array_task_id, node=env.hostname,
                    world_size=env.num_tasks, hosts=",".join(env.hostnames))
    except (RuntimeError, KeyError, ValueError):
        pass  # not inside a submitit job: ``ioussl run`` or a test
    return info


def job_rank() -> int:
    """This task's global rank in a job of several tasks (one per GPU); 0 outside submitit or with one task.

    Only rank 0 writes the run's events and ``result.json``; training's own writers ask the science
    runtime (``Runtime.is_main``), which knows the same rank from ``torch.distributed``.
    """
    try:
        return int(submitit.JobEnvironment().global_rank)
    except (RuntimeError, KeyError, ValueError):
        return 0


def job_tasks() -> int:
    """The number of tasks (processes) of this job, from submitit; 1 outside submitit."""
    try:
        return int(submitit.JobEnvironment().num_tasks)
    except (RuntimeError, KeyError, ValueError):
        return 1


@contextlib.contextmanager
def distributed(cfg: RunConfig) -> Iterator[None]:
    """The job's tasks as one ``torch.distributed`` process group while the stage runs, when there are
    several; nothing with one task.

    submitit exports what the ``env://`` method reads (``MASTER_ADDR`` = the first host, ``MASTER_PORT``
    from the job id, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), replacing any inherited values; science opens
    the group (NCCL on GPUs, gloo on CPUs) and destroys it when the stage ends, failed or not.
    ``CUDA_VISIBLE_DEVICES`` is left as SLURM set it: the runtime picks GPU ``LOCAL_RANK`` of those visible.
    """
    if job_tasks() <= 1:
        yield
        return
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    from ioussl.science.distributed import process_group

    with process_group(cfg.runtime):
        yield


WARNING_SIGNAL = signal.SIGUSR2  # submitit's preemption signal, which resources ask SLURM for (--signal=USR2@...)
# Where a job learns how early its warning comes: the sbatch script exports the first (backends/slurmtext.py),
# submitit's local executor the second.
SIGNAL_DELAY_VARS = (SIGNAL_DELAY_ENV, "SUBMITIT_LOCAL_SIGNAL_DELAY_S")
TERMINATED_WAIT_S = 300.0  # after SIGTERM and a step's checkpoint: SLURM's SIGKILL (grace time, KillWait) comes first


def stop_grace_s(environ: Mapping[str, str] | None = None) -> float:
    """How long a warned job may train on to its next step boundary: half its warning, leaving the other half
    to write the checkpoint and requeue (60 s where the job does not know its warning)."""
    environ = os.environ if environ is None else environ
    for name in SIGNAL_DELAY_VARS:
        value = environ.get(name, "").strip()
        if value.isdigit():
            return int(value) / 2
    return 60.0


@contextlib.contextmanager
def stops_at_step_boundaries() -> Iterator[None]:
    """While a stage trains under submitit, SLURM's warning or termination stops training at the next step.

    submitit's handler for the warning (USR2) checkpoints the submission, requeues the job and exits, wherever
    Python stands, and it ignores SIGTERM (which SLURM sends at a preemption's start, a cancel or the time
    limit, and follows with SIGKILL): either way the run lost the epoch under way. Here both signals only
    request a stop (``science/train/stopping.py``); the training loop writes a mid-epoch ``last.pt`` after its
    current step and then runs the action armed here: after a warning, submitit's handler (requeue, exit);
    after SIGTERM alone, wait for SLURM to end the job as it would have (it requeues a preempted one itself).
    When no step boundary comes within ``stop_grace_s`` of a warning (validation, the final scoring), an alarm
    runs submitit's handler anyway, as before. Outside submitit (``ioussl run``, a test) the signals keep
    whatever meaning they had.
    """
    requeue = signal.getsignal(WARNING_SIGNAL)
    if not callable(requeue):
        yield
        return
    from ioussl.science.train import stopping

    terminate = signal.getsignal(signal.SIGTERM)
    warned = False

    def finish() -> None:  # at a step boundary, the checkpoint written (every task waited for it)
        signal.setitimer(signal.ITIMER_REAL, 0)
        if warned:
            requeue(WARNING_SIGNAL, None)  # rank 0 requeues and exits here; submitit leaves the others be
            # A follower ends cleanly: a non-zero exit would make srun (--kill-on-bad-exit) end rank 0 before it
            # requeued; the local executor requeues once every task has exited, one of them asking for it.
            sys.exit(0)
        # SIGTERM: SLURM kills the job after the grace time (preemption) or KillWait and requeues a preempted
        # one; ending it ourselves could make it FAILED instead. Wait, then give up as an interrupted run.
        time.sleep(TERMINATED_WAIT_S)

    def on_warning(signum: int, frame: Any) -> None:
        nonlocal warned
        if not warned:
            warned = True
            stopping.request()
            signal.setitimer(signal.ITIMER_REAL, stop_grace_s())

    def on_terminate(signum: int, frame: Any) -> None:
        stopping.request()

    def on_alarm(signum: int, frame: Any) -> None:
        if stopping.pending():  # no step boundary in time: what submitit does at the signal, to resume from the
            stopping.clear()  # last epoch's checkpoint (a follower goes on until the requeue ends it)
            requeue(WARNING_SIGNAL, frame)

    stopping.arm(finish)  # on every task: one the signal missed stops with the others
    previous_alarm = signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(WARNING_SIGNAL, on_warning)
    if callable(terminate):  # submitit's, which only logs it
        signal.signal(signal.SIGTERM, on_terminate)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(WARNING_SIGNAL, requeue)
        if callable(terminate):
            signal.signal(signal.SIGTERM, terminate)
        if previous_alarm is not None:  # None: a handler set outside Python, which cannot be put back
            signal.signal(signal.SIGALRM, previous_alarm)
        stopping.disarm()


def provenance(device: dict[str, Any] | None) -> dict[str, Any]:
    """Versions, host and device that produced a result."""
    versions: dict[str, str | None] = {}
    for package in ("ioussl", "torch", "monai", "numpy", "submitit"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"python": platform.python_version(), "versions": versions, "host": socket.gethostname(),
            "device": device, **git_state(),
            **{k: v for k, v in job_environment().items() if k != "node"}}  # fmt: skip


def git_state() -> dict[str, Any]:
    """The commit of the ioussl checkout that ran the job, and whether it had uncommitted changes.

    None for both when ioussl is installed from a wheel or git is missing: provenance then rests on the
    package versions alone.
    """
    source = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return {"git_commit": None, "git_dirty": None}
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}


def run_stage(run_dir: Path, encoder_checkpoint: Path | None = None) -> dict[str, Any]:
    """Run the stage configured in ``run_dir/config.json`` and write ``result.json`` on success only.

    Idempotent: a run whose ``result.json`` exists returns it without training again.

    Raises:
        IousslError: bad config, data, checkpoint or a non-finite loss; recorded as a "failed" event.
    """
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    done = runfiles.read_json(run_dir / runfiles.RESULT)
    if done is not None:
        if done.get("config_hash") != config_hash(cfg):
            raise TrainingError(
                f"{run_dir / runfiles.RESULT} belongs to another config than {runfiles.CONFIG}"
            )
        return done
    if job_rank() != 0:  # a follower task of a multi-GPU job: it trains in step with rank 0, writes nothing
        try:
            return _train(cfg, run_dir, encoder_checkpoint)
        except Exception:
            # Most failures strike every rank alike (a bad batch size, a foreign last.pt, a non-finite loss);
            # let rank 0 note it as the run's "failed" event before srun's --kill-on-bad-exit ends the job.
            time.sleep(FOLLOWER_GRACE_S)
            raise
    runfiles.record_event(run_dir, "started", stage=cfg.stage, **job_environment())
    try:
        result = _train(cfg, run_dir, encoder_checkpoint)
    except Exception as exc:
        runfiles.record_event(run_dir, "failed", error=str(exc) or type(exc).__name__)
        raise
    except BaseException as exc:  # SIGTERM / preemption / Ctrl-C: the run may resume, it has not failed
        runfiles.record_event(run_dir, "interrupted", error=type(exc).__name__)
        raise
    parent = parent_run_hash(encoder_checkpoint)
    result = {
        **result,
        "run_hash": run_hash(cfg, parent),
        "config_hash": config_hash(cfg),
        "finished_at": time.time(),
        "provenance": provenance(result.pop("device", None)),
    }
    runfiles.atomic_write_json(run_dir / runfiles.RESULT, result)
    runfiles.record_event(run_dir, "finished", dsc=result.get("dsc"), final_loss=result.get("final_loss"))
    return result


def prepare_run_config(stage: str, config: Path | None, profile: str | None, *, store: str | None = None,
                       seed: int | None = None, split: str | None = None,
                       sampler: dict[str, Any] | None = None) -> RunConfig:
    """The run config of ``ioussl run``: from a config file or a profile, with the command line's overrides
    applied (None leaves a setting alone), validated.

    Raises:
        ConfigError: not exactly one of ``config`` and ``profile``, a missing or invalid file, or a config
            of the other stage.
    """
    from ioussl import profiles

    if (config is None) == (profile is None):
        raise ConfigError("give exactly one of --config FILE or --profile tiny|thesis")
    if config is not None:
        if not config.is_file():
            raise ConfigError(f"config file {config} does not exist")
        try:
            cfg = RunConfig.from_json(config.read_text())
        except ValueError as exc:
            raise ConfigError(f"config file {config} is not valid JSON: {exc}") from None
        if cfg.stage != stage:
            raise ConfigError(f"config file {config} is a {cfg.stage} config, not {stage}")
    else:
        cfg = profiles.build(profile or "", stage)  # type: ignore[arg-type]
    return _override(cfg, store=store, seed=seed, split=split, sampler=sampler).validate()


def _override(cfg: RunConfig, store: str | None, seed: int | None, split: str | None,
              sampler: dict[str, Any] | None) -> RunConfig:
    data: dict[str, Any] = {k: v for k, v in {"store": store, "split": split}.items() if v is not None}
    if data:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **data))
    if seed is not None:
        cfg = dataclasses.replace(cfg, seed=seed)
    changes = {k: v for k, v in (sampler or {}).items() if v is not None}
    if changes and cfg.sampler is not None:
        cfg = dataclasses.replace(cfg, sampler=dataclasses.replace(cfg.sampler, **changes))
    return cfg


def run_here(cfg: RunConfig, run_dir: Path, encoder: Path | None) -> dict[str, Any]:
    """``ioussl run``: write ``config.json`` (refusing to overwrite a different one) and run the stage in this
    process, exactly as a job would (:func:`run_stage`); run again on the same directory, it resumes.

    Raises:
        ConfigError: the directory holds another config, or the encoder checkpoint does not exist.
    """
    path = run_dir / runfiles.CONFIG
    if path.exists() and load_run_config(run_dir).to_json() != cfg.to_json():
        raise ConfigError(f"{path} already holds another config; use a new --run-dir to start a different run")
    if encoder is not None and not encoder.is_file():
        raise ConfigError(f"encoder checkpoint {encoder} does not exist")
    runfiles.atomic_write_text(path, cfg.to_json())
    return run_stage(run_dir, encoder)


def _train(cfg: RunConfig, run_dir: Path, encoder_checkpoint: Path | None) -> dict[str, Any]:
    if cfg.stage == "pretrain" and encoder_checkpoint is not None:
        raise ConfigError("a pretrain run takes no encoder checkpoint")
    with stops_at_step_boundaries(), distributed(cfg):
        if cfg.stage == "pretrain":
            from ioussl.science.train.pretrain import run_pretrain

            return run_pretrain(cfg, run_dir)
        from ioussl.science.train.finetune import run_finetune

        return run_finetune(cfg, run_dir, Path(encoder_checkpoint) if encoder_checkpoint else None)


class RunJob(submitit.helpers.Checkpointable):
    """A submitit job for one run directory; requeued on preemption, resumed from ``last.pt``."""

    def __init__(self, run_dir: str, encoder_checkpoint: str | None = None) -> None:
        self.run_dir = str(run_dir)
        self.encoder_checkpoint = str(encoder_checkpoint) if encoder_checkpoint else None

    def __call__(self) -> dict[str, Any]:
        encoder = Path(self.encoder_checkpoint) if self.encoder_checkpoint else None
        return run_stage(Path(self.run_dir), encoder)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on timeout / preemption: note it (and why), then requeue this same callable."""
        from ioussl.submit.requeue import record_requeue

        record_requeue(self.run_dir)
        return super().checkpoint(*args, **kwargs)
