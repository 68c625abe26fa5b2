"""Fine-tuning the 2D Swin UNETR for 13 abdominal organs (thesis §4.5, Table 4.1).

``run_finetune(cfg, run_dir, encoder_checkpoint)`` is the whole job: optional encoder transfer, DiceCE +
AdamW with warm-up and cosine decay, validation on the thesis' schedule with early stopping on evaluations,
``best.pt`` on every strict improvement and ``last.pt`` every epoch for resume. The run's score is the best
checkpoint's: the thesis' per-slice DSC (``dsc``, Table 4.2's number) and a 3D DSC on the preprocessed grid
(``dsc_3d``) on the validation cases, the same on the test cases when the split has them (``test``), and
FLARE 2022's DSC and NSD on the original image grid (``flare``, ``flare_eval.py``). In a multi-GPU job
every process trains on its share of each global batch of ``finetune.batch_size`` (the network wrapped in
DistributedDataParallel) and scores the validation slices; rank 0's scores decide for all, rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ioussl import runfiles
from ioussl.config import FinetuneConfig, RunConfig
from ioussl.errors import ConfigError, DataError, TrainingError
from ioussl.science.distributed import check_global_batch, from_main, parallel
from ioussl.science.evaluate.flare_eval import evaluate_flare, model_predictor
from ioussl.science.evaluate.metrics import FLARE_ORGANS, preprocessed_case_dsc, summarise_cases
from ioussl.science.models.swin import build_swin_unetr
from ioussl.science.runtime import (
    Runtime,
    compile_for_training,
    loader_workers,
    resolve_runtime,
    seed_everything,
)
from ioussl.science.seeds import derived_seed
from ioussl.science.train import checkpoint as ckpt
from ioussl.science.train import stopping, volumes
from ioussl.science.train.engine import Evaluation, StepState, cycle, evaluate, train_one_epoch_seg
from ioussl.science.train.losses import segmentation_loss
from ioussl.science.train.optim import finetune_optimizer
from ioussl.science.train.progress import Progress
from ioussl.science.train.schedules import cosine_lr
from ioussl.science.train.stopping import StoppedAtStep
from ioussl.science.train.trainingdata import (
    finetune_feed,
    finetune_loader,
    finetune_split,
    open_store,
    subsample,
    val_loader,
)
from ioussl.science.train.transfer import load_encoder


def run_finetune(cfg: RunConfig, run_dir: Path, encoder_checkpoint: Path | None = None) -> dict[str, Any]:
    """Fine-tune (or finish fine-tuning) the run in ``run_dir``; return its JSON-able summary.

    Raises:
        ConfigError: ``cfg`` is not a valid fine-tune config, or its batch does not split over the processes.
        DataError: the store or split cannot feed this config.
        TrainingError: a bad encoder checkpoint, a non-finite loss, or a ``last.pt`` of another config or
            number of processes.
    """
    if cfg.stage != "finetune":
        raise ConfigError(f"run_finetune got a {cfg.stage!r} config")
    cfg.validate()
    ft = cfg.finetune
    assert ft is not None
    run_dir = Path(run_dir)
    seed_everything(cfg.seed)
    runtime = resolve_runtime(cfg.runtime, ft.amp)
    check_global_batch(ft.batch_size, runtime.world_size, "finetune.batch_size")
    store = open_store(cfg)
    parts, train_ids, val_ids, steps = training_slices(store, cfg)
    state, encoder = build_state(cfg, runtime, steps, encoder_checkpoint)
    point = ckpt.resume(state, cfg, run_dir, store.fingerprint)
    selection = Selection.from_checkpoint(point.payload, run_dir, point.step)
    progress = Progress("finetune", ft.epochs, steps, first_epoch=point.epoch, main=runtime.is_main)
    progress.start(point.step, runtime.describe(), point.resumed)
    workers, loss_fn, feed = loader_workers(cfg.data.num_workers), segmentation_loss(), finetune_feed(cfg, runtime)
    val = val_loader(store, val_ids, workers, cfg.model.spatial_dims)
    for epoch in range(point.epoch, ft.epochs):
        if selection.stopped:
            break
        state.epoch = epoch
        seed_everything(derived_seed(cfg.seed, epoch, "model", runtime.rank))
        batches = cycle(finetune_loader(store, train_ids, cfg, epoch, workers, runtime.ranks))
        part = ckpt.go_on_inside(point, epoch, batches, steps)
        try:
            stats = train_one_epoch_seg(state, batches, loss_fn, selection.step, steps, feed, part)
        except StoppedAtStep as stop:
            ckpt.save_last(state, cfg, run_dir, epoch, selection.step + stop.part.done, stop.part,
                           progress=selection.to_dict(), store=store.fingerprint)  # fmt: skip
            stopping.finish()  # requeues the job and ends the process
        step = selection.step + steps
        scores = {}
        if is_eval_epoch(epoch, ft):
            scores = validate_and_select(state, cfg, run_dir, val, selection, epoch, step)
        selection.last_epoch, selection.step = epoch, step
        slices_per_s = stats["crops_per_s"] / ft.crops_per_slice
        line = progress.line(epoch, step, slices_per_s, **stats, **scores, **selection.last_scores())
        ckpt.save_last(state, cfg, run_dir, epoch, step, progress=selection.to_dict(), store=store.fingerprint)
        if runtime.is_main:
            runfiles.append_jsonl(run_dir / runfiles.METRICS, line)
        if stopping.due():  # the epoch's checkpoint is written: requeue now
            stopping.finish()
    if not runtime.is_main:  # the main rank scores the best checkpoint and reports
        return runtime.follower_summary("finetune")
    result = summarise_run(state, cfg, run_dir, store, parts, selection, encoder, steps)
    stopped = " (early stopped)" if result["early_stopped"] else ""
    best = f"best DSC {result['dsc']:.4f} at epoch {result['best_epoch'] + 1}"
    progress.end(f"{best}, {result['epochs']} epochs{stopped}")
    return {**result, "store_fingerprint": store.fingerprint, "device": runtime.describe()}


def training_slices(store: Any, cfg: RunConfig) -> tuple[dict[str, list[str]], np.ndarray, np.ndarray, int]:
    """The split's parts, the train and (subsampled) validation slice ids, and the steps per epoch."""
    ft = cfg.finetune
    assert ft is not None
    parts = finetune_split(store, cfg)
    train_ids = training_items(store, parts["train"], cfg)
    val_ids = subsample(training_items(store, parts["val"], cfg), ft.max_val_slices)
    steps = ft.steps_per_epoch or max(1, math.ceil(len(train_ids) / ft.batch_size))
    return parts, train_ids, val_ids, steps


def build_state(
    cfg: RunConfig, runtime: Runtime, steps: int, encoder_checkpoint: Path | None
) -> tuple[StepState, dict[str, Any] | None]:
    """Swin UNETR (with the pretrained encoder, if any), AdamW, warm-up + cosine schedule of Table 4.1."""
    ft = cfg.finetune
    assert ft is not None
    network = build_swin_unetr(cfg.model, cfg.model.finetune_drop_path).to(runtime.device)
    encoder = load_encoder(network, Path(encoder_checkpoint), cfg.model, ft.init_from) if encoder_checkpoint else None
    if runtime.channels_last and cfg.model.spatial_dims == 2:  # channels_last is a 4D layout
        network = network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # not in torch's stub
    optimizer = finetune_optimizer(network, ft, fused=runtime.device.type == "cuda")
    schedule = functools.partial(
        cosine_lr, total_steps=ft.epochs * steps, base_lr=ft.base_lr, end_lr=ft.end_lr,
        warmup_steps=ft.warmup_epochs * steps,
    )  # fmt: skip
    state = StepState(network, optimizer, runtime.grad_scaler(), runtime, schedule,
                      compiled=compile_for_training(network, cfg.runtime))
    if runtime.world_size > 1:
        state.parallel = parallel(state.forward, runtime.device)
    return state, encoder


def is_eval_epoch(epoch: int, ft: FinetuneConfig) -> bool:
    """After 0-based epochs 9, 19, ..., 89, then every epoch; and always after the last one."""
    if epoch >= ft.eval_every_epoch_from or epoch == ft.epochs - 1:
        return True
    return (epoch + 1) % ft.eval_every == 0


@dataclass
class Selection:
    """Model selection across epochs (kept in ``last.pt`` so a resumed run selects as an uninterrupted one).

    Early stopping as the thesis' code: the best DSC starts at 0, a strict improvement resets the count of
    evaluations without improvement, and training stops when that count reaches the patience.
    """

    best_dsc: float = 0.0
    best_epoch: int | None = None
    bad_evals: int = 0
    stopped: bool = False
    best: dict[str, Any] | None = None  # the full scores of the best evaluation
    evals: int = 0
    last_epoch: int = -1
    step: int = 0
    last_val_dsc: float | None = None  # the latest evaluation's DSC and epoch, for a live status
    last_val_epoch: int | None = None

    def record(self, scores: dict[str, Any], epoch: int, patience: int) -> bool:
        """Count one evaluation; return whether it is the new best."""
        self.evals += 1
        self.last_val_dsc, self.last_val_epoch = scores["dsc"], epoch
        if scores["dsc"] > self.best_dsc:
            self.best_dsc, self.best_epoch, self.bad_evals, self.best = scores["dsc"], epoch, 0, scores
            return True
        self.bad_evals += 1
        self.stopped = self.bad_evals >= patience
        return False

    def last_scores(self) -> dict[str, Any]:
        if self.last_val_dsc is None:
            return {}
        return {"last_val_dsc": self.last_val_dsc, "last_val_epoch": self.last_val_epoch}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_checkpoint(cls, payload: dict[str, Any], run_dir: Path, step: int) -> Selection:
        """The selection state of a resumed ``last.pt`` (fresh when ``payload`` is empty), whose next epoch
        starts at global ``step``; checked, since it is read back from disk."""
        if not payload:
            return cls()
        raw = payload.get("progress")
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(raw, dict) or not {"best_dsc", "bad_evals", "stopped", "step"} <= set(raw):
            raise TrainingError(f"checkpoint {run_dir / runfiles.CHECKPOINTS / ckpt.LAST} lacks the selection progress")
        selection = cls(**{k: v for k, v in raw.items() if k in names})
        if selection.step != step or not isinstance(selection.best_dsc, int | float):
            raise TrainingError(f"checkpoint {run_dir / runfiles.CHECKPOINTS / ckpt.LAST} has inconsistent progress")
        return selection


def validate_and_select(
    state: StepState, cfg: RunConfig, run_dir: Path, val: Any, selection: Selection, epoch: int, step: int
) -> dict[str, Any]:
    """Score the validation slices, keep ``best.pt`` on strict improvement, count evaluations for patience."""
    assert cfg.finetune is not None
    scores = score(evaluator(cfg)(state.model, val, state.runtime, window(cfg), cfg.model.out_channels))
    # Every rank scored the same weights; rank 0's numbers decide for all, so no rank stops alone on a
    # last-digit difference between GPUs and leaves the others waiting.
    scores = from_main(scores)
    if selection.record(scores, epoch, cfg.finetune.patience):
        payload = {
            **ckpt.describe(cfg, "best"),
            "model": state.model.state_dict(),
            "epoch": epoch,
            "step": step,
            "scores": scores,
        }
        if state.runtime.is_main:  # every rank scores (the same weights) and selects alike; one writes
            ckpt.save_atomic(payload, run_dir / runfiles.CHECKPOINTS / ckpt.BEST)
    return {
        "val_dsc": scores["dsc"],
        "val_dsc_3d": scores["dsc_3d"],
        "best_dsc": selection.best_dsc,
        "bad_evals": selection.bad_evals,
    }


def window(cfg: RunConfig) -> dict[str, Any]:
    assert cfg.finetune is not None
    return {
        "roi": cfg.data.crop,
        "sw_batch_size": cfg.finetune.sw_batch_size,
        "overlap": cfg.finetune.sw_overlap,
        "spatial_dims": cfg.model.spatial_dims,  # 3: cubes of side roi over whole volumes
    }


def training_items(store: Any, cases: list[str], cfg: RunConfig) -> np.ndarray:
    """What a fine-tune loader iterates over: the cases' slice ids in 2D, their volumes' store positions in 3D."""
    if cfg.model.spatial_dims == 3:
        return volumes.case_ids(store, cases)
    return np.asarray(store.slice_ids(cases))


def evaluator(cfg: RunConfig) -> Any:
    """Slices scored per slice and per case (2D), or whole volumes scored per case (3D: no per-slice DSC)."""
    return volumes.evaluate_volumes if cfg.model.spatial_dims == 3 else evaluate


def score(evaluation: Evaluation) -> dict[str, Any]:
    """The thesis' per-slice DSC and the 3D DSC on the preprocessed grid, from one evaluation pass."""
    per_case = {
        case: preprocessed_case_dsc(counts, FLARE_ORGANS) for case, counts in sorted(evaluation.counts.items())
    }
    per_organ, dsc_3d = summarise_cases(per_case)
    # 3D runs have no per-slice DSC (a 2D metric): their selection score and headline is the 3D DSC, named so.
    per_slice = bool(evaluation.slice_scores)
    return {
        "dsc": evaluation.dsc if per_slice else dsc_3d,
        "dsc_metric": "per-slice" if per_slice else "dsc_3d",
        "dsc_3d": dsc_3d,
        "per_case": per_case,
        "per_organ": per_organ,
        "slices": len(evaluation.slice_scores),
    }


def summarise_run(
    state: StepState,
    cfg: RunConfig,
    run_dir: Path,
    store: Any,
    parts: dict[str, list[str]],
    selection: Selection,
    encoder: dict[str, Any] | None,
    steps: int,
) -> dict[str, Any]:
    """The result of the best checkpoint (and its test score when the split has a test part)."""
    best_path = run_dir / runfiles.CHECKPOINTS / ckpt.BEST
    best = selection.best
    if best is None or not best_path.exists():
        raise TrainingError(
            f"fine-tuning in {run_dir} never scored above DSC 0 on validation: no best checkpoint to report"
        )
    result = {
        "stage": "finetune",
        "dsc": best["dsc"],
        "dsc_metric": best.get("dsc_metric", "per-slice"),  # what "dsc" is: 3D runs score "dsc_3d"
        "dsc_3d": best["dsc_3d"],
        "per_case": best["per_case"],
        "per_organ": best["per_organ"],
        "val_slices": best["slices"],
        "best_epoch": selection.best_epoch,
        "epochs": selection.last_epoch + 1,
        "steps": selection.step,
        "steps_per_epoch": steps,
        "early_stopped": selection.stopped,
        "checkpoint": str(best_path),
        "checkpoint_sha256": runfiles.sha256_file(best_path),
        "encoder": encoder,
    }
    if "test" in parts:
        result["test"] = score_test(state, cfg, store, parts["test"], best_path)
    assert cfg.finetune is not None  # a fine-tune's config (run_finetune checked its stage)
    result.update(finetune_flare(state.model, state.runtime, store, parts, best_path, window(cfg),
                                 rules=cfg.finetune.flare_rules, rounded=cfg.finetune.flare_round))
    return result


def score_test(state: StepState, cfg: RunConfig, store: Any, cases: list[str], best_path: Path) -> dict:
    """Score the best checkpoint once on the held-out test cases (never used for selection)."""
    assert cfg.finetune is not None
    ckpt.load_state(state.model, ckpt.load(best_path)["model"], best_path)
    ids = subsample(training_items(store, cases, cfg), cfg.finetune.max_val_slices)
    loader = val_loader(store, ids, loader_workers(cfg.data.num_workers), cfg.model.spatial_dims)
    return score(evaluator(cfg)(state.model, loader, state.runtime, window(cfg), cfg.model.out_channels))


def finetune_flare(
    model: torch.nn.Module, runtime: Any, store: Any, parts: Mapping[str, list[str]], best_path: Path,
    window: Mapping[str, Any], *, rules: str = "2022", rounded: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """``{"flare": section}`` for a fine-tuned run's best checkpoint, on the test cases if the split has
    them, else on the validation cases; ``{"flare_skipped": reason}`` when the store cannot be scored so (a
    format 1 store without grid records, a damaged label copy), which leaves the thesis' numbers intact.
    """
    part = "test" if parts.get("test") else "val"
    try:
        for case in parts[part]:  # before any prediction: a format 1 store is known at once
            store.source_grid(case)
        ckpt.load_state(model, ckpt.load(best_path)["model"], best_path)
        section = evaluate_flare(store, parts[part], part, model_predictor(model, store, runtime, window),
                                 rules, rounded)
    except DataError as exc:
        print(f"FLARE evaluation skipped: {exc}", file=sys.stderr)
        return {"flare_skipped": str(exc)}
    return {"flare": section}
