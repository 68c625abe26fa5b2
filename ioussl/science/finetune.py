"""Fine-tuning the 2D Swin UNETR for 13 abdominal organs (thesis §4.5, Table 4.1).

``run_finetune(cfg, run_dir, encoder_checkpoint)`` is the whole job: optional encoder transfer, DiceCE +
AdamW with warm-up and cosine decay, validation on the thesis' schedule with early stopping on evaluations,
``best.pt`` on every strict improvement and ``last.pt`` every epoch for resume. The run's score is the best
checkpoint's: the thesis' per-slice DSC (``dsc``, Table 4.2's number) and a 3D DSC on the preprocessed grid
(``dsc_3d``) on the validation cases, the same on the test cases when the split has them (``test``), and
FLARE 2022's DSC and NSD on the original image grid (``flare``, ``flare_eval.py``).
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ioussl import runfiles
from ioussl.config import FinetuneConfig, RunConfig
from ioussl.errors import ConfigError, TrainingError
from ioussl.science import checkpoint as ckpt
from ioussl.science.engine import Evaluation, StepState, cycle, evaluate, train_one_epoch_seg
from ioussl.science.flare_eval import finetune_flare
from ioussl.science.losses import segmentation_loss
from ioussl.science.metrics import FLARE_ORGANS, preprocessed_case_dsc, summarise_cases
from ioussl.science.models import build_swin_unetr
from ioussl.science.optim import finetune_optimizer
from ioussl.science.pretrain import restore, save_last, truncate_metrics
from ioussl.science.runtime import (
    Runtime,
    compile_for_training,
    loader_workers,
    resolve_runtime,
    seed_everything,
)
from ioussl.science.schedules import cosine_lr
from ioussl.science.trainingdata import (
    derived_seed,
    finetune_loader,
    finetune_split,
    open_store,
    subsample,
    val_loader,
)
from ioussl.science.transfer import load_encoder


def run_finetune(cfg: RunConfig, run_dir: Path, encoder_checkpoint: Path | None = None) -> dict[str, Any]:
    """Fine-tune (or finish fine-tuning) the run in ``run_dir``; return its JSON-able summary.

    Raises:
        ConfigError: ``cfg`` is not a valid fine-tune config.
        DataError: the store or split cannot feed this config.
        TrainingError: a bad encoder checkpoint, a non-finite loss, or a ``last.pt`` of another config.
    """
    if cfg.stage != "finetune":
        raise ConfigError(f"run_finetune got a {cfg.stage!r} config")
    cfg.validate()
    ft = cfg.finetune
    assert ft is not None
    run_dir = Path(run_dir)
    seed_everything(cfg.seed)
    runtime = resolve_runtime(cfg.runtime, ft.amp)
    store = open_store(cfg)
    parts = finetune_split(store, cfg)
    train_ids = np.asarray(store.slice_ids(parts["train"]))
    val_ids = subsample(np.asarray(store.slice_ids(parts["val"])), ft.max_val_slices)
    steps = ft.steps_per_epoch or max(1, math.ceil(len(train_ids) / ft.batch_size))
    state, encoder = build_state(cfg, runtime, steps, encoder_checkpoint)
    epoch0, step, progress = resume(state, cfg, run_dir, store.fingerprint)
    workers, loss_fn = loader_workers(cfg.data.num_workers), segmentation_loss()
    val = val_loader(store, val_ids, workers)
    for epoch in range(epoch0, ft.epochs):
        if progress["stopped"]:
            break
        state.epoch = epoch
        seed_everything(derived_seed(cfg.seed, epoch, "model"))
        batches = cycle(finetune_loader(store, train_ids, cfg, epoch, workers))
        stats = train_one_epoch_seg(state, batches, loss_fn, step, steps)
        step += steps
        line = {"stage": "finetune", "epoch": epoch, "step": step, "time": time.time(), **stats}
        if is_eval_epoch(epoch, ft):
            line.update(validate_and_select(state, cfg, run_dir, val, progress, epoch, step))
        progress.update(last_epoch=epoch, step=step)
        save_last(state, cfg, run_dir, epoch, step, progress=progress, store=store.fingerprint)
        runfiles.append_jsonl(run_dir / runfiles.METRICS, line)
    result = summarise_run(state, cfg, run_dir, store, parts, progress, encoder, steps)
    return {**result, "store_fingerprint": store.fingerprint, "device": runtime.describe()}


def build_state(
    cfg: RunConfig, runtime: Runtime, steps: int, encoder_checkpoint: Path | None
) -> tuple[StepState, dict[str, Any] | None]:
    """Swin UNETR (with the pretrained encoder, if any), AdamW, warm-up + cosine schedule of Table 4.1."""
    ft = cfg.finetune
    assert ft is not None
    network = build_swin_unetr(cfg.model, cfg.model.finetune_drop_path).to(runtime.device)
    encoder = load_encoder(network, Path(encoder_checkpoint), cfg.model) if encoder_checkpoint else None
    if runtime.channels_last:
        network = network.to(memory_format=torch.channels_last)
    optimizer = finetune_optimizer(network, ft, fused=runtime.device.type == "cuda")
    schedule = functools.partial(
        cosine_lr, total_steps=ft.epochs * steps, base_lr=ft.base_lr, end_lr=ft.end_lr,
        warmup_steps=ft.warmup_epochs * steps,
    )  # fmt: skip
    state = StepState(network, optimizer, runtime.grad_scaler(), runtime, schedule,
                      compiled=compile_for_training(network, cfg.runtime))
    return state, encoder


def is_eval_epoch(epoch: int, ft: FinetuneConfig) -> bool:
    """After 0-based epochs 9, 19, ..., 89, then every epoch; and always after the last one."""
    if epoch >= ft.eval_every_epoch_from or epoch == ft.epochs - 1:
        return True
    return (epoch + 1) % ft.eval_every == 0


def new_progress() -> dict[str, Any]:
    return {
        "best_dsc": 0.0, "best_epoch": None, "bad_evals": 0, "stopped": False, "best": None, "evals": 0,
        "last_epoch": -1, "step": 0,
    }  # fmt: skip


def record_evaluation(progress: dict[str, Any], scores: dict[str, Any], epoch: int, patience: int) -> bool:
    """Early stopping as the thesis' code: best starts at 0, a strict improvement resets the count of
    evaluations without improvement, training stops when that count reaches ``patience``.

    Returns:
        Whether this evaluation is the new best.
    """
    progress["evals"] += 1
    if scores["dsc"] > progress["best_dsc"]:
        progress.update(best_dsc=scores["dsc"], best_epoch=epoch, bad_evals=0, best=scores)
        return True
    progress["bad_evals"] += 1
    progress["stopped"] = progress["bad_evals"] >= patience
    return False


def validate_and_select(
    state: StepState, cfg: RunConfig, run_dir: Path, val: Any, progress: dict[str, Any], epoch: int, step: int
) -> dict[str, Any]:
    """Score the validation slices, keep ``best.pt`` on strict improvement, count evaluations for patience."""
    assert cfg.finetune is not None
    scores = score(evaluate(state.model, val, state.runtime, window(cfg), cfg.model.out_channels))
    if record_evaluation(progress, scores, epoch, cfg.finetune.patience):
        payload = {
            **ckpt.describe(cfg, "best"),
            "model": state.model.state_dict(),
            "epoch": epoch,
            "step": step,
            "scores": scores,
        }
        ckpt.save_atomic(payload, run_dir / runfiles.CHECKPOINTS / ckpt.BEST)
    return {
        "val_dsc": scores["dsc"],
        "val_dsc_3d": scores["dsc_3d"],
        "best_dsc": progress["best_dsc"],
        "bad_evals": progress["bad_evals"],
    }


def window(cfg: RunConfig) -> dict[str, Any]:
    assert cfg.finetune is not None
    return {
        "roi": cfg.data.crop,
        "sw_batch_size": cfg.finetune.sw_batch_size,
        "overlap": cfg.finetune.sw_overlap,
    }


def score(evaluation: Evaluation) -> dict[str, Any]:
    """The thesis' per-slice DSC and the 3D DSC on the preprocessed grid, from one evaluation pass."""
    per_case = {
        case: preprocessed_case_dsc(counts, FLARE_ORGANS) for case, counts in sorted(evaluation.counts.items())
    }
    per_organ, dsc_3d = summarise_cases(per_case)
    return {
        "dsc": evaluation.dsc,
        "dsc_3d": dsc_3d,
        "per_case": per_case,
        "per_organ": per_organ,
        "slices": len(evaluation.slice_scores),
    }


def resume(state: StepState, cfg: RunConfig, run_dir: Path, store: str) -> tuple[int, int, dict[str, Any]]:
    """Restore ``last.pt`` if present; return (first epoch to run, global step, selection progress)."""
    path = run_dir / runfiles.CHECKPOINTS / ckpt.LAST
    metrics = run_dir / runfiles.METRICS
    if not path.exists():
        if metrics.exists():
            runfiles.atomic_write_text(metrics, "")
        return 0, 0, new_progress()
    payload = restore(state, path, cfg, store)
    truncate_metrics(metrics, payload["epoch"])
    return payload["epoch"] + 1, payload["step"], payload["progress"]


def summarise_run(
    state: StepState,
    cfg: RunConfig,
    run_dir: Path,
    store: Any,
    parts: dict[str, list[str]],
    progress: dict[str, Any],
    encoder: dict[str, Any] | None,
    steps: int,
) -> dict[str, Any]:
    """The result of the best checkpoint (and its test score when the split has a test part)."""
    best_path = run_dir / runfiles.CHECKPOINTS / ckpt.BEST
    best = progress["best"]
    if best is None or not best_path.exists():
        raise TrainingError(
            f"fine-tuning in {run_dir} never scored above DSC 0 on validation: no best checkpoint to report"
        )
    result = {
        "stage": "finetune",
        "dsc": best["dsc"],
        "dsc_3d": best["dsc_3d"],
        "per_case": best["per_case"],
        "per_organ": best["per_organ"],
        "val_slices": best["slices"],
        "best_epoch": progress["best_epoch"],
        "epochs": progress["last_epoch"] + 1,
        "steps": progress["step"],
        "steps_per_epoch": steps,
        "early_stopped": progress["stopped"],
        "checkpoint": str(best_path),
        "checkpoint_sha256": runfiles.sha256_file(best_path),
        "encoder": encoder,
    }
    if "test" in parts:
        result["test"] = score_test(state, cfg, store, parts["test"], best_path)
    result.update(finetune_flare(state.model, state.runtime, store, parts, best_path, window(cfg)))
    return result


def score_test(state: StepState, cfg: RunConfig, store: Any, cases: list[str], best_path: Path) -> dict:
    """Score the best checkpoint once on the held-out test cases (never used for selection)."""
    assert cfg.finetune is not None
    ckpt.load_state(state.model, ckpt.load(best_path)["model"], best_path)
    ids = subsample(np.asarray(store.slice_ids(cases)), cfg.finetune.max_val_slices)
    loader = val_loader(store, ids, loader_workers(cfg.data.num_workers))
    return score(evaluate(state.model, loader, state.runtime, window(cfg), cfg.model.out_channels))
