"""SimSiam pretraining of the 2D Swin UNETR encoder on IoU-constrained positives (thesis §4.4, Table 4.1).

``run_pretrain(cfg, run_dir)`` is the whole job: it resumes from ``checkpoints/last.pt`` when present, writes
one ``metrics.jsonl`` line and one stdout line per epoch, and exports the encoder for fine-tuning. It imports
nothing from the orchestration layer, so it runs the same in a test, on a laptop and in a SLURM job.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from ioussl import runfiles
from ioussl.config import RunConfig
from ioussl.errors import ConfigError, DataError
from ioussl.science.models.swin import SimSiam
from ioussl.science.runtime import Runtime, compile_for_training, loader_workers, resolve_runtime, seed_everything
from ioussl.science.train import checkpoint as ckpt
from ioussl.science.train.engine import StepState, cycle, train_one_epoch_simsiam
from ioussl.science.train.optim import pretrain_optimizer
from ioussl.science.train.progress import Progress
from ioussl.science.train.schedules import cosine_lr
from ioussl.science.train.trainingdata import (
    derived_seed,
    open_store,
    pretrain_feed,
    pretrain_loader,
    pretrain_slice_ids,
)


def run_pretrain(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Pretrain (or finish pretraining) the run in ``run_dir``; return its JSON-able summary.

    Raises:
        ConfigError: ``cfg`` is not a valid pretrain config.
        DataError: the store cannot feed this config.
        TrainingError: a non-finite loss, or a ``last.pt`` that belongs to another config.
    """
    if cfg.stage != "pretrain":
        raise ConfigError(f"run_pretrain got a {cfg.stage!r} config")
    cfg.validate()
    assert cfg.pretrain is not None
    run_dir = Path(run_dir)
    seed_everything(cfg.seed)
    runtime = resolve_runtime(cfg.runtime, cfg.pretrain.amp)
    store = open_store(cfg)
    ids = pretrain_slice_ids(store, cfg)
    steps = steps_per_epoch(len(ids), cfg)
    state = build_state(cfg, runtime, steps)
    point = ckpt.resume(state, cfg, run_dir, store.fingerprint)
    step, last = point.step, (point.metrics[-1] if point.metrics else {})
    progress = Progress("pretrain", cfg.pretrain.epochs, steps, first_epoch=point.epoch)
    progress.start(step, runtime.describe(), point.resumed)
    workers, feed = loader_workers(cfg.data.num_workers), pretrain_feed(cfg, runtime)
    for epoch in range(point.epoch, cfg.pretrain.epochs):
        state.epoch = epoch
        seed_everything(derived_seed(cfg.seed, epoch, "model"))  # drop path: same draws after a resume
        batches = cycle(pretrain_loader(store, ids, cfg, epoch, workers))
        stats = train_one_epoch_simsiam(state, batches, step, steps, feed)
        step += steps
        last = progress.line(epoch, step, stats["pairs_per_s"], **stats)
        ckpt.save_last(state, cfg, run_dir, epoch, step, store=store.fingerprint)
        runfiles.append_jsonl(run_dir / runfiles.METRICS, last)
    if not last:
        raise DataError("pretraining ran no epoch (pretrain.epochs is 0)")
    summary = export_encoder(state.model, cfg, run_dir, last, steps)
    progress.end(f"{summary['epochs']} epochs, {summary['steps']:,} steps, final loss {summary['final_loss']:.4f}")
    return {**summary, "store_fingerprint": store.fingerprint, "device": runtime.describe()}


def build_state(cfg: RunConfig, runtime: Runtime, steps: int) -> StepState:
    """SimSiam on the device, SGD over six groups, the per-iteration cosine schedule of Table 4.1."""
    pre = cfg.pretrain
    assert pre is not None
    model = SimSiam(cfg.model, pre).to(runtime.device)
    if runtime.channels_last and cfg.model.spatial_dims == 2:  # channels_last is a 4D layout
        model = model.to(memory_format=torch.channels_last)
    optimizer = pretrain_optimizer(model, pre, fused=runtime.device.type == "cuda")
    total, warmup = steps * pre.epochs, steps * pre.warmup_epochs
    schedule = functools.partial(cosine_lr, total_steps=total, base_lr=pre.base_lr, end_lr=pre.end_lr,
                                 warmup_steps=warmup)  # fmt: skip
    return StepState(model, optimizer, runtime.grad_scaler(), runtime, schedule,
                     compiled=compile_for_training(model, cfg.runtime))


def steps_per_epoch(num_slices: int, cfg: RunConfig) -> int:
    """floor(slices / batch) as in the reference code, unless the config fixes it."""
    assert cfg.pretrain is not None
    if cfg.pretrain.steps_per_epoch is not None:
        return cfg.pretrain.steps_per_epoch
    steps = num_slices // cfg.pretrain.batch_size
    if steps == 0:
        raise DataError(
            f"data store {cfg.data.store} has {num_slices} pretraining slices, fewer than one batch of "
            f"{cfg.pretrain.batch_size}"
        )
    return steps


def export_encoder(model: SimSiam, cfg: RunConfig, run_dir: Path, last: dict[str, Any], steps: int) -> dict:
    """Write ``encoder.pt`` (the ``swinViT`` state dict + config + hash) and summarise the run."""
    path = run_dir / runfiles.CHECKPOINTS / ckpt.ENCODER
    ckpt.save_atomic({**ckpt.describe(cfg, "encoder"), "model": model.encoder_state_dict()}, path)
    return {
        "stage": "pretrain",
        "final_loss": last["loss"],
        "final_collapse": last["collapse"],
        "final_fallback_rate": last["fallback_rate"],
        "epochs": last["epoch"] + 1,
        "steps": last["step"],
        "steps_per_epoch": steps,
        "checkpoint": str(path),
        "checkpoint_sha256": runfiles.sha256_file(path),
    }
