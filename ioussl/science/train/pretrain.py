"""Self-supervised pretraining of the 2D Swin UNETR encoder on IoU-constrained positives: SimSiam (thesis §4.4,
Table 4.1), DINO (the thesis' main_dino.py) or any method registered in ``methods`` (``pretrain.method``).

``run_pretrain(cfg, run_dir)`` is the whole job: it resumes from ``checkpoints/last.pt`` when present, writes
one ``metrics.jsonl`` line and one stdout line per epoch, and exports the encoder for fine-tuning. It imports
nothing from the orchestration layer, so it runs the same in a test, on a laptop and in a SLURM job. In a
multi-GPU job (an initialised ``torch.distributed``) every process runs it on its share of each global batch
of ``pretrain.batch_size``, with the method wrapped in DistributedDataParallel; rank 0 writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ioussl import runfiles
from ioussl.config import RunConfig
from ioussl.errors import ConfigError, DataError
from ioussl.science.distributed import check_global_batch, parallel
from ioussl.science.runtime import Runtime, compile_for_training, loader_workers, resolve_runtime, seed_everything
from ioussl.science.seeds import derived_seed
from ioussl.science.train import checkpoint as ckpt
from ioussl.science.train import stopping
from ioussl.science.train.engine import StepState, cycle, train_one_epoch_pretrain
from ioussl.science.train.methods import build_method
from ioussl.science.train.methods.base import MethodStep, PretrainMethod
from ioussl.science.train.progress import Progress
from ioussl.science.train.stopping import StoppedAtStep
from ioussl.science.train.trainingdata import (
    open_store,
    pretrain_feed,
    pretrain_loader,
    pretrain_slice_ids,
)


def run_pretrain(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Pretrain (or finish pretraining) the run in ``run_dir``; return its JSON-able summary.

    Raises:
        ConfigError: ``cfg`` is not a valid pretrain config, or its batch does not split over the processes.
        DataError: the store cannot feed this config.
        TrainingError: a non-finite loss, or a ``last.pt`` of another config or number of processes.
    """
    if cfg.stage != "pretrain":
        raise ConfigError(f"run_pretrain got a {cfg.stage!r} config")
    cfg.validate()
    assert cfg.pretrain is not None
    run_dir = Path(run_dir)
    seed_everything(cfg.seed)
    runtime = resolve_runtime(cfg.runtime, cfg.pretrain.amp)
    check_global_batch(cfg.pretrain.batch_size, runtime.world_size, "pretrain.batch_size")
    store = open_store(cfg)
    ids = pretrain_slice_ids(store, cfg)
    steps = steps_per_epoch(len(ids), cfg)
    state = build_state(cfg, runtime, steps)
    point = ckpt.resume(state, cfg, run_dir, store.fingerprint)
    step, last = point.step, (point.metrics[-1] if point.metrics else {})
    progress = Progress("pretrain", cfg.pretrain.epochs, steps, first_epoch=point.epoch, main=runtime.is_main)
    progress.start(step, runtime.describe(), point.resumed)
    workers, feed = loader_workers(cfg.data.num_workers), pretrain_feed(cfg, runtime)
    method = cast(PretrainMethod, state.model)
    for epoch in range(point.epoch, cfg.pretrain.epochs):
        state.epoch = epoch
        # drop path: the same draws after a resume, its own on every rank
        seed_everything(derived_seed(cfg.seed, epoch, "model", runtime.rank))
        batches = cycle(pretrain_loader(store, ids, cfg, epoch, workers, runtime.ranks))
        part = ckpt.go_on_inside(point, epoch, batches, steps, method)
        try:
            stats = train_one_epoch_pretrain(state, batches, step, steps, feed, part)
        except StoppedAtStep as stop:
            ckpt.save_last(state, cfg, run_dir, epoch, step + stop.part.done, stop.part, store=store.fingerprint)
            stopping.finish()  # requeues the job and ends the process
        step += steps
        last = progress.line(epoch, step, stats["pairs_per_s"], **stats)
        ckpt.save_last(state, cfg, run_dir, epoch, step, store=store.fingerprint)
        if runtime.is_main:
            runfiles.append_jsonl(run_dir / runfiles.METRICS, last)
        if stopping.due():  # the epoch's checkpoint is written: requeue now
            stopping.finish()
    if not last:
        raise DataError("pretraining ran no epoch (pretrain.epochs is 0)")
    if not runtime.is_main:  # the main rank exports the encoder and reports; this process only trained
        return runtime.follower_summary("pretrain")
    summary = export_encoder(method, cfg, run_dir, last, steps)
    progress.end(f"{summary['epochs']} epochs, {summary['steps']:,} steps, final loss {summary['final_loss']:.4f}")
    return {**summary, "store_fingerprint": store.fingerprint, "device": runtime.describe()}


def build_state(cfg: RunConfig, runtime: Runtime, steps: int) -> StepState:
    """The method on the device with its optimiser; it schedules its own hyperparameters per step (SimSiam:
    SGD over six groups and the per-iteration cosine of Table 4.1)."""
    method = build_method(cfg, steps)
    assert isinstance(method, nn.Module)  # every method is an nn.Module mixing in PretrainMethod (methods/base.py)
    model = method.to(runtime.device)
    if runtime.channels_last and cfg.model.spatial_dims == 2:  # channels_last is a 4D layout
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # not in torch's stub
    optimizer = method.make_optimizer(fused=runtime.device.type == "cuda")
    compiled = compile_for_training(model, cfg.runtime)
    state = StepState(model, optimizer, runtime.grad_scaler(), runtime, compiled=compiled)
    if runtime.world_size > 1:  # one DDP call per step: the whole loss, however often the method runs its network
        state.parallel = parallel(MethodStep(method, state.forward), runtime.device)
    return state


def steps_per_epoch(num_slices: int, cfg: RunConfig) -> int:
    """floor(slices / batch) as in the reference code, unless the config fixes it (the global batch: the
    same steps whatever the number of processes)."""
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


def export_encoder(method: PretrainMethod, cfg: RunConfig, run_dir: Path, last: dict[str, Any], steps: int) -> dict:
    """Write ``encoder.pt`` (the ``swinViT`` state dict as ``model``, DINO's student's beside it as ``student``,
    config + hash) and summarise the run."""
    path = run_dir / runfiles.CHECKPOINTS / ckpt.ENCODER
    ckpt.save_atomic({**ckpt.describe(cfg, "encoder"), **method.encoder_states(), "method": method.name}, path)
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
