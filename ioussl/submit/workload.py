"""A small deterministic stand-in for training, run through the very same submission path as RunJob.

The SLURM integration tests (and a smoke test of a new cluster) need jobs that take seconds and can be
told to fail, to run long, or to be interrupted and resume. ``SyntheticJob`` follows the job contract of
runfiles.py exactly: it reads ``config.json``, appends events and metrics, keeps its progress in
``checkpoints/last.json``, writes ``result.json`` atomically, and is submitit-Checkpointable, so a timeout
or preemption requeues it and it resumes from its last step.

Behaviour comes from an optional ``workload.json`` in the run directory (all keys optional):
``{"steps": 3, "step_s": 0.1, "fail_attempts": 0}``: ``fail_attempts`` makes the first N starts fail.
Select it for ``ioussl submit`` with ``IOUSSL_JOB_FACTORY=ioussl.submit.workload:make_job``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import submitit

from ioussl import runfiles
from ioussl.config import RunConfig, config_hash, run_hash
from ioussl.errors import TrainingError

WORKLOAD = "workload.json"
DEFAULTS = {"steps": 3, "step_s": 0.1, "fail_attempts": 0}


class SyntheticJob(submitit.helpers.Checkpointable):
    """Counts ``steps`` steps of ``step_s`` seconds, checkpointing after each; result depends on the seed."""

    def __init__(self, run_dir: str, encoder_checkpoint: str | None = None) -> None:
        self.run_dir = run_dir
        self.encoder_checkpoint = encoder_checkpoint

    def __call__(self) -> dict[str, Any]:
        from ioussl.submit.entrypoint import job_environment, job_rank

        if job_rank() != 0:  # a second task of a multi-task job: like training's followers, it writes nothing
            return {"rank": job_rank()}
        run_dir = Path(self.run_dir)
        spec = {**DEFAULTS, **(runfiles.read_json(run_dir / WORKLOAD) or {})}
        config = runfiles.read_json(run_dir / runfiles.CONFIG)
        if config is None:
            raise TrainingError(f"{run_dir / runfiles.CONFIG} is missing or not JSON")
        starts = 1 + sum(
            1 for e in runfiles.read_jsonl(run_dir / runfiles.EVENTS) if e.get("event") == "started"
        )
        start_step = _last_step(run_dir) + 1
        _drop_metrics_after(run_dir, start_step - 1)  # a step cut off before its checkpoint is done again
        job = {k: v for k, v in job_environment().items() if k in ("job_id", "world_size", "hosts") and v is not None}
        runfiles.record_event(run_dir, "started", attempt=starts, resume_step=start_step, **job)
        if starts <= spec["fail_attempts"]:
            message = f"synthetic failure on start {starts} of {spec['fail_attempts']}"
            runfiles.record_event(run_dir, "failed", error=message)
            raise TrainingError(message)
        try:
            self._steps(run_dir, spec, config, start_step)
        except KeyboardInterrupt:  # Ctrl-C or a local cancel, as RunJob notes it: the run may resume
            runfiles.record_event(run_dir, "interrupted", error="KeyboardInterrupt", step=_last_step(run_dir))
            raise
        result = {**result_for(run_dir, config, spec["steps"], self.encoder_checkpoint),
                  "resumed_from": start_step, "starts": starts}
        runfiles.atomic_write_json(run_dir / runfiles.RESULT, result)
        runfiles.record_event(run_dir, "finished")
        return result

    @staticmethod
    def _steps(run_dir: Path, spec: dict[str, Any], config: dict[str, Any], start_step: int) -> None:
        began = time.time()
        for step in range(start_step, spec["steps"]):
            time.sleep(spec["step_s"])
            line = progress_line(step, spec["steps"], began, spec["step_s"], stage=config.get("stage"))
            runfiles.append_jsonl(run_dir / runfiles.METRICS, line)
            print(f"[ioussl synthetic] step {step + 1}/{spec['steps']} loss {line['loss']:.4f}", flush=True)
            runfiles.atomic_write_json(run_dir / runfiles.CHECKPOINTS / "last.json", {"step": step})

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on USR2 (timeout or preemption): note it; progress is already on disk."""
        from ioussl.submit.requeue import record_requeue

        record_requeue(self.run_dir, step=_last_step(Path(self.run_dir)))
        return super().checkpoint(*args, **kwargs)


def progress_line(step: int, steps: int, began: float, step_s: float, stage: Any = None) -> dict[str, Any]:
    """The metrics line of one synthetic step, with the keys training writes (science/train/progress.py), one
    step per epoch: what a live ``ioussl status`` reads."""
    now = time.time()
    return {"stage": stage, "epoch": step, "epochs": steps, "step": step + 1, "steps_total": steps, "time": now,
            "elapsed_s": now - began, "items_per_s": 1 / max(step_s, 1e-3), "loss": 1 / (step + 1)}


def result_for(run_dir: Path, config: dict[str, Any], steps: int, encoder: str | None = None) -> dict[str, Any]:
    """A result.json that meets the v2 contract (resultcheck) for a synthetic run of ``steps`` steps."""
    from ioussl.submit.entrypoint import parent_run_hash

    cfg = RunConfig.from_dict(config)
    checkpoint = run_dir / runfiles.CHECKPOINTS / "synthetic.json"
    runfiles.atomic_write_json(checkpoint, {"seed": cfg.seed, "stage": cfg.stage})
    result: dict[str, Any] = {
        "stage": cfg.stage, "run_hash": run_hash(cfg, parent_run_hash(Path(encoder) if encoder else None)),
        "config_hash": config_hash(cfg), "epochs": steps, "steps": steps, "checkpoint": str(checkpoint),
        "checkpoint_sha256": runfiles.sha256_file(checkpoint), "finished_at": time.time(),
        "provenance": {"host": "synthetic", "git_commit": None, "git_dirty": None},
    }
    score = _score(cfg.seed, cfg.stage)
    if cfg.stage == "pretrain":
        return {**result, "final_loss": 1 - score, "final_collapse": 0.5, "final_fallback_rate": 0.0,
                "steps_per_epoch": 1}
    return {**result, "dsc": score, "dsc_3d": None, "per_case": {}, "per_organ": {}, "best_epoch": max(0, steps - 1)}


def make_job(run_dir: str, encoder_checkpoint: str | None) -> SyntheticJob:
    """Job factory with the signature of the default one (submission.default_job_factory)."""
    return SyntheticJob(run_dir, encoder_checkpoint)


def write_spec(run_dir: str | Path, **spec: Any) -> None:
    """Tests: set how the synthetic job of one run behaves."""
    unknown = set(spec) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown workload keys {sorted(unknown)}; valid: {sorted(DEFAULTS)}")
    runfiles.atomic_write_text(Path(run_dir) / WORKLOAD, json.dumps(spec))


def _drop_metrics_after(run_dir: Path, last_step: int) -> None:
    """Keep the metrics lines of the steps up to ``last_step``, as training's resume does (atomically)."""
    path = run_dir / runfiles.METRICS
    if path.exists():
        kept = [line for line in runfiles.read_jsonl(path) if isinstance(line.get("epoch"), int)
                and line["epoch"] <= last_step]  # fmt: skip
        runfiles.atomic_write_text(path, "".join(json.dumps(line) + "\n" for line in kept))


def _last_step(run_dir: Path) -> int:
    state = runfiles.read_json(run_dir / runfiles.CHECKPOINTS / "last.json")
    return int(state["step"]) if state and "step" in state else -1


def _score(seed: int, stage: str) -> float:
    """A fixed DSC-like number per (seed, stage): deterministic, so tests can assert it."""
    return round(0.8 + 0.01 * (seed % 5) + (0.005 if stage == "finetune" else 0.0), 4)
