"""Self-describing checkpoints, written atomically and loaded with ``weights_only``.

Every file says what it is (format, kind, stage, architecture), which config produced it (the canonical
JSON and its hash) and where training stood (epoch, step, RNG states, optimiser / scaler / schedule state),
so a run resumes from ``last.pt`` and a fine-tune refuses an encoder of another architecture with a message
that names the file. The thesis' checkpoints held bare weights only (thesis protocol notes §3, §7).

Both stages resume the same way (``resume``, ``save_last``): restore weights, optimiser, scaler and RNG
states from ``last.pt``, drop metrics lines of epochs after it, and note a ``resumed`` event. ``last.pt`` is
written after every epoch and, when the job is told to stop (stopping.py), after the step at which it stopped:
then it also holds the epoch's ``part`` (steps done, each process's running sums, item count and RNG states,
the method's epoch statistics), and the run goes on inside that epoch. Every process
of a multi-GPU job reads ``last.pt``; only the main rank (``Runtime.is_main``) writes anything. ``last.pt``
records the job's number of processes: a run resumes only with as many (its batches were cut per rank).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ioussl import runfiles
from ioussl.config import ModelConfig, RunConfig, config_hash
from ioussl.errors import TrainingError
from ioussl.runfiles import atomic_write
from ioussl.science.train.stopping import SUMS, EpochPart

if TYPE_CHECKING:
    from ioussl.science.train.engine import StepState

FORMAT = "ioussl-checkpoint/1"
LAST = "last.pt"
BEST = "best.pt"
ENCODER = "encoder.pt"


def architecture(model: ModelConfig) -> dict[str, Any]:
    """The settings that decide parameter shapes; two checkpoints are compatible when these match."""
    return {
        "name": "SwinUNETR-2d",
        "feature_size": model.feature_size,
        "depths": list(model.depths),
        "num_heads": list(model.num_heads),
        "out_channels": model.out_channels,
    }


def describe(cfg: RunConfig, kind: str) -> dict[str, Any]:
    """The header every checkpoint carries."""
    return {
        "format": FORMAT,
        "kind": kind,
        "stage": cfg.stage,
        "arch": architecture(cfg.model),
        "config": cfg.to_json(),
        "config_hash": config_hash(cfg),
        "torch": str(torch.__version__),
    }


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    """``torch.save`` into a temporary file beside ``path``, fsync, then ``os.replace``."""
    atomic_write(path, lambda handle: torch.save(payload, handle))


def load(path: Path) -> dict[str, Any]:
    """Load a checkpoint on CPU with ``weights_only=True``.

    Raises:
        TrainingError: the file is missing, truncated, corrupt or not a checkpoint dictionary.
    """
    if not path.is_file():
        raise TrainingError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            raise TrainingError(
                f"checkpoint {path} holds objects that safe (weights_only) loading refuses; "
                "it was not written by ioussl"
            ) from None
        raise TrainingError(f"checkpoint {path} is truncated or corrupt ({_first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - a damaged pickle raises anything (IndexError, KeyError, ...)
        raise TrainingError(f"checkpoint {path} is truncated or corrupt ({_first_line(exc)})") from None
    if not isinstance(payload, dict):
        raise TrainingError(
            f"checkpoint {path} holds a {type(payload).__name__}, not a checkpoint dictionary"
        )
    return payload


def load_for_resume(path: Path, cfg: RunConfig) -> dict[str, Any]:
    """Load ``last.pt`` and check it was written by this very config.

    Raises:
        TrainingError: another format, stage or config (a resumed run must continue the same run).
    """
    payload = load(path)
    if payload.get("format") != FORMAT or payload.get("kind") != "last":
        raise TrainingError(f"checkpoint {path} is not an ioussl resume checkpoint")
    if payload.get("config_hash") != config_hash(cfg):
        raise TrainingError(
            f"checkpoint {path} was written by another config (hash {str(payload.get('config_hash'))[:12]}, "
            f"this run {config_hash(cfg)[:12]}); use a fresh run directory"
        )
    return payload


@dataclass(frozen=True)
class ResumePoint:
    """Where a run continues: its first epoch to train, that epoch's first global step, the kept metrics
    lines and the restored checkpoint (empty when the run starts afresh); after a stop inside an epoch, the
    part of it done (this process's share) and this process's RNG state at the stop."""

    epoch: int = 0
    step: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    payload: dict[str, Any] = field(default_factory=dict)
    part: EpochPart | None = None
    rng: dict[str, Any] | None = None

    @property
    def resumed(self) -> bool:
        return bool(self.payload)


def resume(state: StepState, cfg: RunConfig, run_dir: Path, store: str) -> ResumePoint:
    """Restore ``last.pt`` into ``state`` if present, note a ``resumed`` event, and return where to go on.

    Metrics lines past the checkpoint (written by an attempt that died before its next checkpoint) are
    dropped, so the file always describes exactly the epochs the model has seen.

    Raises:
        TrainingError: ``last.pt`` is damaged, or belongs to another config or data store.
    """
    path = run_dir / runfiles.CHECKPOINTS / LAST
    metrics = run_dir / runfiles.METRICS
    main = state.runtime.is_main
    if not path.exists():
        if metrics.exists() and main:  # an attempt that died before its first checkpoint: start afresh
            runfiles.atomic_write_text(metrics, "")
        return ResumePoint()
    payload = restore(state, path, cfg, store)
    if "part" not in payload:
        kept = truncate_metrics(metrics, payload["epoch"], write=main)
        point = ResumePoint(payload["epoch"] + 1, payload["step"], kept, payload)
        if main:
            runfiles.record_event(run_dir, "resumed", epoch=point.epoch, step=point.step)
        return point
    part, rng = epoch_part(payload, path, state.runtime.rank, state.runtime.world_size)
    kept = truncate_metrics(metrics, payload["epoch"] - 1, write=main)
    point = ResumePoint(payload["epoch"], payload["step"] - part.done, kept, payload, part, rng)
    if main:
        runfiles.record_event(run_dir, "resumed", epoch=point.epoch, step=payload["step"], epoch_steps_done=part.done)
    return point


def go_on_inside(
    point: ResumePoint, epoch: int, batches: Iterator[Any], steps: int, method: Any = None
) -> EpochPart | None:
    """The part of ``epoch`` a stopped attempt trained, when the run resumes inside it (else None): its
    batches are drawn again and dropped, so the loader's random state is where the stop left it (the
    device augmentations are seeded per step and need no replay), this process's RNG is the stop's and the
    pretraining ``method`` (if any) counts its epoch statistics on from the stop's.

    Raises:
        TrainingError: the part is as long as the epoch (a checkpoint of another schedule), or its RNG state
            or method statistics are damaged.
    """
    from ioussl.science.runtime import set_rng_state

    part = point.part if epoch == point.epoch else None
    if part is None:
        return None
    if part.done >= steps:
        raise TrainingError(f"checkpoints/last.pt stopped after step {part.done} of an epoch of {steps} steps")
    for _ in range(part.done):
        next(batches)
    assert point.rng is not None
    try:
        set_rng_state(point.rng)
        if method is not None:
            method.load_epoch_state(part.method)
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as exc:
        raise TrainingError(f"checkpoints/last.pt has a damaged mid-epoch part ({_first_line(exc)}); delete it "
                            "to resume from scratch") from None  # fmt: skip
    return part


def epoch_part(payload: dict[str, Any], path: Path, rank: int, world_size: int) -> tuple[EpochPart, dict[str, Any]]:
    """This process's share of a mid-epoch ``last.pt``'s ``part`` and its RNG state, checked (read from disk).

    Raises:
        TrainingError: the part is not one ``save_last`` writes.
    """
    raw = payload["part"]
    ranks = raw.get("ranks") if isinstance(raw, dict) else None
    share = ranks[rank] if isinstance(ranks, list) and len(ranks) == world_size else None
    sums = share.get("sums") if isinstance(share, dict) else None
    valid = (
        isinstance(raw, dict) and _is_count(raw.get("done")) and raw["done"] > 0 and payload["step"] >= raw["done"]
        and isinstance(raw.get("seconds"), int | float) and isinstance(raw.get("method"), dict)
        and isinstance(share, dict) and _is_count(share.get("items")) and isinstance(share.get("rng"), dict)
        and isinstance(sums, dict)
        and all(isinstance(sums.get(name), torch.Tensor) and sums[name].dim() == 0 for name in SUMS)
    )  # fmt: skip
    if not valid:
        raise TrainingError(f"checkpoint {path} has a damaged mid-epoch part; delete it to resume from scratch")
    assert isinstance(raw, dict) and isinstance(share, dict)
    part = EpochPart(raw["done"], share["sums"], share["items"], float(raw["seconds"]), raw["method"])
    return part, share["rng"]


def restore(state: StepState, path: Path, cfg: RunConfig, store: str) -> dict[str, Any]:
    """Load ``last.pt`` into model, optimiser, scaler and RNGs after checking config and data store."""
    from ioussl.science.runtime import set_rng_state

    payload = load_for_resume(path, cfg)
    if payload.get("store") != store:
        raise TrainingError(
            f"checkpoint {path} was trained on data store fingerprint {payload.get('store')}, but "
            f"{cfg.data.store} now has {store}: the store changed; use a fresh run directory"
        )
    _check_resume_fields(payload, path)
    check_world_size(payload, path, state.runtime.world_size)
    load_state(state.model, payload["model"], path)
    try:
        state.optimizer.load_state_dict(payload["optimizer"])
        state.scaler.load_state_dict(payload["scaler"])
        set_rng_state(payload["rng"])
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise TrainingError(f"checkpoint {path} has a damaged training state ({_first_line(exc)})") from None
    return payload


def check_world_size(payload: dict[str, Any], path: Path, world_size: int) -> None:
    """Refuse to resume with another number of processes than wrote ``last.pt`` (one before DDP): each rank
    cut its crops and drew its augmentations with its own seeds, so another world size would silently
    continue a different run.

    Raises:
        TrainingError: the numbers differ; the message says what to do.
    """
    saved = payload.get("world_size", 1)
    if saved != world_size:
        raise TrainingError(
            f"checkpoint {path} was written by a job of {saved} process(es) (one per GPU) but this job has "
            f"{world_size}: resume with the resources it started with (gpus_per_node x nodes, tasks_per_node) "
            "or use a fresh run directory"
        )


def _check_resume_fields(payload: dict[str, Any], path: Path) -> None:
    missing = [key for key in ("model", "optimizer", "scaler", "rng") if not isinstance(payload.get(key), dict)]
    counters = [key for key in ("epoch", "step") if not _is_count(payload.get(key))]
    if missing or counters:
        raise TrainingError(f"checkpoint {path} lacks a valid {', '.join(missing + counters)}")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def truncate_metrics(metrics: Path, last_epoch: int, write: bool = True) -> list[dict[str, Any]]:
    """Keep the metrics lines of epochs up to ``last_epoch`` (atomically, when ``write``) and return them."""
    kept = [r for r in runfiles.read_jsonl(metrics) if _is_count(r.get("epoch")) and r["epoch"] <= last_epoch]
    if write:
        runfiles.atomic_write_text(metrics, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    return kept


def save_last(
    state: StepState, cfg: RunConfig, run_dir: Path, epoch: int, step: int, part: EpochPart | None = None,
    **extra: Any,
) -> None:
    """Everything needed to continue after ``epoch``, or after global step ``step`` inside it (``part``: the
    epoch's steps so far): weights, optimiser, scaler, schedule position, RNG.

    Written by the main rank only; the others hold the same weights (DDP keeps them in step). With a ``part``
    every process must call it: each one's sums and RNG state are gathered into the file.
    """
    from ioussl.science.distributed import barrier, gather_objects
    from ioussl.science.runtime import rng_state

    stopped = None
    if part is not None:
        own = {"sums": part.sums, "items": part.items, "rng": rng_state()}
        stopped = {"done": part.done, "seconds": part.seconds, "method": part.method, "ranks": gather_objects(own)}
    try:
        _write_last(state, cfg, run_dir, epoch, step, stopped, extra)
    finally:
        if part is not None:
            barrier()  # no process ends (the job is about to requeue) before the file is written


def _write_last(state: StepState, cfg: RunConfig, run_dir: Path, epoch: int, step: int,
                stopped: dict[str, Any] | None, extra: dict[str, Any]) -> None:
    from ioussl.science.runtime import rng_state

    if not state.runtime.is_main:
        return

    payload = {
        **describe(cfg, "last"),
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scaler": state.scaler.state_dict(),
        "scheduler": {"name": "cosine", "step": step},
        "epoch": epoch,
        "step": step,
        "rng": rng_state(),
        "world_size": state.runtime.world_size,  # a resume must have as many processes (check_world_size)
        **({"part": stopped} if stopped is not None else {}),
        **extra,
    }
    save_atomic(payload, run_dir / runfiles.CHECKPOINTS / LAST)


def check_architecture(payload: dict[str, Any], model: ModelConfig, path: Path) -> None:
    """Raise TrainingError naming ``path`` when the checkpoint's architecture differs from ``model``'s."""
    found = payload.get("arch")
    if not isinstance(found, dict):
        return  # a bare state dict: shapes are checked when loading
    wanted = architecture(model)
    diffs = [
        f"{k} {found.get(k)} != {v}" for k, v in wanted.items() if k != "out_channels" and found.get(k) != v
    ]
    if diffs:
        raise TrainingError(f"checkpoint {path} is from another architecture: {', '.join(diffs)}")


def load_state(module: nn.Module, state: dict[str, torch.Tensor], path: Path, strict: bool = True) -> Any:
    """``load_state_dict`` that turns shape mismatches into a TrainingError naming ``path``."""
    try:
        return module.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        raise TrainingError(f"checkpoint {path} does not fit this model: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    """The gist of an exception in one line (torch's messages span many)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return " ".join(lines[:2])[:300] if lines else type(exc).__name__
