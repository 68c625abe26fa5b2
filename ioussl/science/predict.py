"""``ioussl predict``'s science: a fine-tuned run's best checkpoint segmenting whole cases.

The network is built from the run's config, the checkpoint is checked against its architecture and loaded,
and every slice of a case goes through the same sliding window as validation (``flare_eval.model_predictor``);
:mod:`ioussl.science.evaluate.prediction` writes the NIfTI files and pictures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from ioussl.config import RunConfig
from ioussl.errors import ConfigError, TrainingError
from ioussl.science.evaluate.prediction import CasePrediction, check_cases, predict_cases


def predict_run(cfg: RunConfig, checkpoint: Path, cases: Sequence[str], out_dir: Path, slices: Sequence[int] = (),
                device: Literal["auto", "cuda", "cpu"] = "auto", caption: str = "") -> list[CasePrediction]:
    """Segment ``cases`` of the run's store with ``checkpoint`` and write them into ``out_dir``.

    Raises:
        ConfigError: not a fine-tune config, or CUDA asked for but absent.
        DataError: the store, a case or its grid record is missing.
        TrainingError: the checkpoint is missing, corrupt or of another architecture.
    """
    from ioussl.science.evaluate.flare_eval import model_predictor
    from ioussl.science.models.swin import build_swin_unetr
    from ioussl.science.runtime import resolve_runtime
    from ioussl.science.train import checkpoint as ckpt
    from ioussl.science.train.finetune import window
    from ioussl.science.train.trainingdata import open_store

    if cfg.stage != "finetune" or cfg.finetune is None:
        raise ConfigError(f"predictions come from a fine-tuned run, not a {cfg.stage} run")
    store = open_store(cfg)
    chosen = check_cases(store, cases)  # before the network is built: a typo fails in a second
    runtime = resolve_runtime(dataclasses.replace(cfg.runtime, device=device), cfg.finetune.amp)
    model = build_swin_unetr(cfg.model, cfg.model.finetune_drop_path).to(runtime.device)
    payload = ckpt.load(checkpoint)
    ckpt.check_architecture(payload, cfg.model, checkpoint)
    state = payload.get("model")
    if not isinstance(state, dict):
        raise TrainingError(f"checkpoint {checkpoint} holds no model weights")
    ckpt.load_state(model, state, checkpoint)
    predict = model_predictor(model, store, runtime, window(cfg))
    return predict_cases(store, chosen, predict, out_dir, slices, caption)
