"""Named run profiles: the thesis' full settings and a tiny CPU profile for tests and smoke runs.

No torch here: the CLI and the orchestrator build configs from these on a login node.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ioussl.config import (
    DataConfig,
    FinetuneConfig,
    ModelConfig,
    PretrainConfig,
    RunConfig,
    RuntimeConfig,
    SamplerConfig,
    Stage,
)
from ioussl.errors import ConfigError

PROFILES = ("thesis", "tiny")


def thesis(stage: Stage, seed: int = 0, store: str = "data/store", split: str | None = None) -> RunConfig:
    """Table 4.1 exactly: C = 48, 96² crops, batch 128 x 100 epochs, fine-tune 32 x 2 crops x 225 epochs."""
    data = DataConfig(store=store, split=split)
    if stage == "pretrain":
        return RunConfig(
            stage="pretrain", seed=seed, data=data, sampler=SamplerConfig(), pretrain=PretrainConfig()
        )
    return RunConfig(stage="finetune", seed=seed, data=data, finetune=FinetuneConfig())


def tiny(stage: Stage, seed: int = 0, store: str = "data/store", split: str | None = None) -> RunConfig:
    """C = 12, 64² crops, a few steps per epoch, in-process data loading, CPU fp32.

    Pretrain then fine-tune take well under a minute on 2 CPU cores; fine-tuning evaluates every epoch
    (on at most 4 validation slices) so a DSC exists.
    """
    data = DataConfig(store=store, split=split, crop=64, num_workers=0)
    model = ModelConfig(feature_size=12)
    runtime = RuntimeConfig(device="cpu", precision="fp32", channels_last=False, cudnn_benchmark=False)
    if stage == "pretrain":
        pretrain = PretrainConfig(batch_size=8, epochs=2, steps_per_epoch=3, amp=False)
        return RunConfig(
            stage="pretrain", seed=seed, data=data, model=model, runtime=runtime,
            sampler=SamplerConfig(), pretrain=pretrain,
        )  # fmt: skip
    finetune = FinetuneConfig(
        batch_size=2, epochs=3, steps_per_epoch=3, warmup_epochs=1, patience=3, eval_every=1,
        eval_every_epoch_from=0, sw_batch_size=16, amp=False, max_val_slices=4,
    )  # fmt: skip
    return RunConfig(stage="finetune", seed=seed, data=data, model=model, runtime=runtime, finetune=finetune)


def build(name: str, stage: Stage, **kwargs: Any) -> RunConfig:
    """The config of profile ``name`` for ``stage``.

    Raises:
        ConfigError: an unknown profile or stage.
    """
    if stage not in ("pretrain", "finetune"):
        raise ConfigError(f"stage must be 'pretrain' or 'finetune', got {stage!r}")
    makers = {"thesis": thesis, "tiny": tiny}
    if name not in makers:
        raise ConfigError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return makers[name](stage, **kwargs)


def with_sampler(cfg: RunConfig, **changes: Any) -> RunConfig:
    """Replace sampler fields (i_min, i_max, random_crop, mode) of a pretrain config, validated."""
    if cfg.sampler is None:
        raise ConfigError("only pretrain configs have sampler settings")
    return dataclasses.replace(cfg, sampler=dataclasses.replace(cfg.sampler, **changes)).validate()
