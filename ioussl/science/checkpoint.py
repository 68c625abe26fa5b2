"""Self-describing checkpoints, written atomically and loaded with ``weights_only``.

Every file says what it is (format, kind, stage, architecture), which config produced it (the canonical
JSON and its hash) and where training stood (epoch, step, RNG states, optimiser / scaler / schedule state),
so a run resumes from ``last.pt`` and a fine-tune refuses an encoder of another architecture with a message
that names the file. The thesis' checkpoints held bare weights only (thesis protocol notes §3, §7).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ioussl.config import ModelConfig, RunConfig, config_hash
from ioussl.errors import TrainingError
from ioussl.runfiles import atomic_write

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
