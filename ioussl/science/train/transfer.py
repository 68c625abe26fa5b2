"""Load a pretrained encoder into the segmentation network's ``swinViT`` and say what matched.

Accepted files: an ioussl ``encoder.pt`` (the usual case; a DINO one holds the teacher's and the student's), an
ioussl pretraining ``last.pt`` (weights under ``backbone.swin.``, DINO's under ``teacher.`` / ``student.``), a
bare SimSiam state dict from the thesis' code (weights under ``backbone.model.``, thesis protocol notes §4) or its
DINO one (the student's Swin weights, unprefixed, §5). Missing and unexpected keys are reported; a file with no
matching key is an error, never a silent from-scratch run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ioussl.config import ModelConfig
from ioussl.errors import TrainingError
from ioussl.science.train import checkpoint as ckpt

PREFIXES = ("backbone.swin.", "backbone.model.", "swinViT.")


def encoder_weights(payload: dict[str, Any], init_from: str = "teacher") -> dict[str, torch.Tensor]:
    """The ``swinViT``-named tensors of a loaded checkpoint, whatever its flavour.

    Args:
        init_from: for a DINO pretraining, the teacher's encoder (``encoder.pt``'s ``model``) or the student's
            (its ``student``); a SimSiam checkpoint has one encoder, which both select.
    """
    if payload.get("format") == ckpt.FORMAT:
        both = init_from == "student" and isinstance(payload.get("student"), dict)
        state = payload["student"] if both else payload.get("model", {})
    else:
        state = payload.get("state_dict", payload)
    if not isinstance(state, dict):
        return {}
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    for prefix in (f"{init_from}.backbone.swin.", *PREFIXES):  # a DINO last.pt: both networks, prefixed
        stripped = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if stripped:
            return stripped
    return tensors


def load_encoder(network: nn.Module, path: Path, model: ModelConfig, init_from: str = "teacher") -> dict[str, Any]:
    """Copy the encoder weights in ``path`` into ``network.swinViT`` (``init_from``: see :func:`encoder_weights`).

    Returns:
        ``{"matched": n, "missing": [...], "unexpected": [...], "source_config_hash": str | None}``.

    Raises:
        TrainingError: the file is missing or corrupt, from another architecture or feature size,
            or no key matched.
    """
    payload = ckpt.load(path)
    ckpt.check_architecture(payload, model, path)
    weights = encoder_weights(payload, init_from)
    encoder = cast(nn.Module, network.swinViT)
    target = encoder.state_dict()
    matched = sorted(set(weights) & set(target))
    if not matched:
        raise TrainingError(f"encoder checkpoint {path}: no key matches the Swin UNETR encoder (swinViT)")
    wrong = [k for k in matched if weights[k].shape != target[k].shape]
    if wrong:
        k = wrong[0]
        raise TrainingError(
            f"encoder checkpoint {path} is from another architecture or feature size: {k} has shape "
            f"{tuple(weights[k].shape)}, this model {tuple(target[k].shape)}"
        )
    result = ckpt.load_state(encoder, {k: weights[k] for k in matched}, path, strict=False)
    return {
        "matched": len(matched),
        "missing": sorted(result.missing_keys),
        "unexpected": sorted(set(weights) - set(target)),
        "source_config_hash": payload.get("config_hash"),
    }
