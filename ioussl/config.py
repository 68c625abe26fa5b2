"""Run configuration: the frozen contract between the orchestrator and the training code.

A run's config is stored in the registry as canonical JSON and handed to the job as ``config.json``;
its hash (with stage and parent) is the run's identity, so planning the same study twice adds nothing.

Defaults are the thesis' Table 4.1 / section 4.5 settings (see thesis protocol notes §3, §4).
This module imports neither torch nor the orchestration layer: both sides may use it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from ioussl.errors import ConfigError

# Field metadata of a setting added after runs were planned: see :func:`added`.
OMIT_AT_DEFAULT = "ioussl.omit_at_default"


def added(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING) -> Any:
    """Declare a setting added after runs were planned with this config: it is left out of the canonical JSON
    (and so of every config and run hash, ``config.json`` and the registry) while it equals its default, so
    adding it changes no existing run id; set to anything else, it is written and hashed like every field.
    New sections default to None (``added(None)``) and are left out while None."""
    return field(default=default, default_factory=default_factory, metadata={OMIT_AT_DEFAULT: True})


Stage = Literal["pretrain", "finetune"]
SamplerMode = Literal["exact", "algorithm1"]
AugmentOn = Literal["device", "loader"]


@dataclass(frozen=True)
class DataConfig:
    """Where the preprocessed slice store and the split live (paths as given; resolved by the planner)."""

    store: str = "data/store"
    split: str | None = None  # JSON {"train": [...], "val": [...], "test": [...]}; None = every labelled case
    crop: int = 96  # square crop side for both stages
    num_workers: int | None = None  # None: sized from the CPUs SLURM allocated
    # Where the view / crop augmentations run: "device" batched on the training device after the transfer
    # (the loader only cuts crops); "loader" per sample with MONAI in the loader workers (the reference).
    augment_on: AugmentOn = "device"


@dataclass(frozen=True)
class SamplerConfig:
    """How the two positive views of a pretraining pair are cut."""

    i_min: float = 0.0
    i_max: float = 1.0
    random_crop: bool = False  # the thesis' "random cropping" row: two independent crops, [0, 1]
    mode: SamplerMode = "exact"
    r1: int = 30  # Algorithm 1 only: inner retries
    r2: int = 4  # Algorithm 1 only: outer retries


@dataclass(frozen=True)
class ModelConfig:
    """2D Swin UNETR; pretraining uses exactly its ``swinViT``."""

    feature_size: int = 48
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    out_channels: int = 14
    pretrain_drop_path: float = 0.1
    finetune_drop_path: float = 0.0
    use_checkpoint: bool = False  # gradient checkpointing trades speed for memory


@dataclass(frozen=True)
class PretrainConfig:
    """SimSiam pretraining, Table 4.1."""

    batch_size: int = 128
    epochs: int = 100
    base_lr: float = 0.025
    end_lr: float = 1e-6
    warmup_epochs: int = 0
    momentum: float = 0.9
    weight_decay: float = 1e-5
    proj_dim: int = 2048
    pred_hidden_dim: int = 512
    amp: bool = True
    steps_per_epoch: int | None = None  # None: floor(slices / batch), as the reference code
    include_labelled: bool = False  # the thesis pretrains on the unlabelled cases only


@dataclass(frozen=True)
class FinetuneConfig:
    """Swin UNETR fine-tuning for 13 organs, Table 4.1 and section 4.5."""

    batch_size: int = 32  # slices per step; each gives crops_per_slice crops
    crops_per_slice: int = 2
    pos: float = 1.0
    neg: float = 1.0
    epochs: int = 225
    base_lr: float = 1e-3
    end_lr: float = 5e-5
    warmup_epochs: int = 10
    weight_decay: float = 1e-5
    patience: int = 20  # evaluations without strict improvement
    eval_every: int = 10
    eval_every_epoch_from: int = 90  # from this (0-based) epoch on, evaluate every epoch
    sw_batch_size: int = 64
    sw_overlap: float = 0.25
    amp: bool = True
    steps_per_epoch: int | None = None  # None: ceil(train slices / batch_size)
    max_val_slices: int | None = None  # tiny profiles only; None scores every validation slice


@dataclass(frozen=True)
class RuntimeConfig:
    """How to run, not what to compute; still hashed because `deterministic` changes results."""

    device: Literal["auto", "cuda", "cpu"] = "auto"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    deterministic: bool = False
    channels_last: bool = True
    cudnn_benchmark: bool = True
    compile: bool = False  # torch.compile the training step: 1.9x pretraining on an H100, 1-2 min warm-up


@dataclass(frozen=True)
class RunConfig:
    """Everything a single pretrain or fine-tune job needs besides its run directory."""

    stage: Stage
    seed: int
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    sampler: SamplerConfig | None = None  # pretrain only
    pretrain: PretrainConfig | None = None  # pretrain only
    finetune: FinetuneConfig | None = None  # finetune only

    def validate(self) -> RunConfig:
        """Raise ConfigError on settings that cannot run; return self for chaining."""
        if self.stage not in ("pretrain", "finetune"):
            raise ConfigError(f"stage must be 'pretrain' or 'finetune', got {self.stage!r}")
        if self.stage == "pretrain" and (self.sampler is None or self.pretrain is None):
            raise ConfigError("a pretrain run needs [sampler] and [pretrain] settings")
        if self.stage == "finetune" and self.finetune is None:
            raise ConfigError("a finetune run needs [finetune] settings")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be an integer in [0, 2**32), got {self.seed!r}")
        validate_model(self.model, self.data.crop)
        for section in (self.data, self.model, self.sampler, self.pretrain, self.finetune):
            if section is not None:
                validate_ranges(section)
        if self.sampler is not None:
            validate_interval(self.sampler.i_min, self.sampler.i_max)
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain data of the config as it is hashed: settings declared with :func:`added` left out at default."""
        return plain(self)

    def to_json(self) -> str:
        """:func:`canonical_json` of :meth:`to_dict`, byte for byte, built from each section's JSON (cached per
        section: the runs of a study share their sections, and planning 5,000 runs hashes 5,000 configs)."""
        parts = {item.name: _section_json(getattr(self, item.name)) for item in _hashed_fields(self)}
        return "{" + ",".join(f"{json.dumps(name)}:{parts[name]}" for name in sorted(parts)) + "}"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        return from_dict(cls, raw, where="run config")

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return cls.from_dict(json.loads(text))


MAX_INT = 2**31 - 1  # every integer setting fits a 32-bit column and a C int
# Allowed values per setting name (the same name means the same thing in every section).
RANGES: dict[str, str] = {
    "batch_size": ">=1", "epochs": ">=1", "steps_per_epoch": ">=1", "proj_dim": ">=1", "pred_hidden_dim": ">=1",
    "crops_per_slice": ">=1", "patience": ">=1", "eval_every": ">=1", "sw_batch_size": ">=1",
    "max_val_slices": ">=1", "r1": ">=1", "r2": ">=1", "out_channels": ">=2", "feature_size": ">=1",
    "warmup_epochs": ">=0", "eval_every_epoch_from": ">=0", "num_workers": ">=0", "crop": ">=1",
    "base_lr": ">0", "end_lr": ">=0", "weight_decay": ">=0", "pos": ">=0", "neg": ">=0",
    "momentum": "[0,1)", "sw_overlap": "[0,1)", "pretrain_drop_path": "[0,1)", "finetune_drop_path": "[0,1)",
    "depths": ">=1", "num_heads": ">=1",
}


@functools.lru_cache(maxsize=256)  # sections are frozen and shared by every run of a study: check each once
def validate_ranges(section: Any) -> None:
    """Every number of a config section finite and in its range (RANGES); integers below 2**31."""
    name_of = type(section).__name__.removesuffix("Config").lower()
    for item in dataclasses.fields(section):
        check_range(name_of, item.name, getattr(section, item.name))


def check_range(section: str, name: str, value: Any) -> None:
    """One setting's numbers (each of a tuple's) finite and in its range (RANGES); ConfigError if not."""
    for number in value if isinstance(value, tuple) else (value,):
        if isinstance(number, bool) or not isinstance(number, int | float):
            continue
        if isinstance(number, int) and abs(number) > MAX_INT:  # say so, not "must be >=1" for 10**100
            shown = repr(number) if len(repr(number)) <= 20 else f"a {len(str(abs(number)))}-digit integer"
            raise ConfigError(f"[{section}].{name} is too large ({shown}): integers must lie within +-{MAX_INT}")
        if not _in_range(number, RANGES.get(name)):
            rule = RANGES.get(name, "finite")
            raise ConfigError(f"[{section}].{name} must be {rule.replace(',', ', ')}, got {number!r}")


def _in_range(value: float, rule: str | None) -> bool:
    if isinstance(value, int) and abs(value) > MAX_INT:
        return False
    if not math.isfinite(value):
        return False
    if rule is None:
        return True
    if rule == "[0,1)":
        return 0 <= value < 1
    bound = float(rule.lstrip("<>="))
    return value >= bound if rule.startswith(">=") else value > bound


def validate_interval(i_min: float, i_max: float) -> None:
    if not (0.0 <= i_min <= 1.0 and 0.0 <= i_max <= 1.0):
        raise ConfigError(f"IoU interval [{i_min}, {i_max}] must lie inside [0, 1]")
    if i_min > i_max:
        raise ConfigError(f"IoU interval [{i_min}, {i_max}] is reversed: i_min must be <= i_max")


def validate_model(model: ModelConfig, crop: int) -> None:
    # SwinUNETR downsamples 5 times by 2 (patch 2, four merges): sides must be divisible by 32, and the
    # deepest stage needs at least 2x2 positions for batch-norm statistics, hence >= 64 when training.
    if crop % 32 != 0 or crop < 64:
        raise ConfigError(f"crop side must be a multiple of 32 and at least 64, got {crop}")
    if model.feature_size <= 0 or model.feature_size % 12 != 0:
        raise ConfigError(f"feature_size must be a positive multiple of 12, got {model.feature_size}")
    if len(model.depths) != 4 or len(model.num_heads) != 4:
        raise ConfigError("depths and num_heads must each have 4 entries (one per Swin stage)")
    # Stage i attends over feature_size * 2**i channels split into num_heads[i] heads (MONAI reshapes them
    # without a check): an indivisible width would crash every job of the study, so refuse it at plan time.
    for stage, heads in enumerate(model.num_heads):
        width = model.feature_size * 2**stage
        if width % heads:
            raise ConfigError(f"num_heads[{stage}] = {heads} does not divide stage {stage + 1}'s width {width} "
                              f"(feature_size {model.feature_size} x {2**stage}); e.g. num_heads = [3, 6, 12, 24]")


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no spaces: the same config always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {value!r}")


def config_hash(config: RunConfig) -> str:
    """SHA-256 of the canonical config alone (checkpoints and results carry it; run_hash adds the parent)."""
    return hashlib.sha256(config.to_json().encode()).hexdigest()


def run_hash(config: RunConfig, parent_hash: str | None) -> str:
    """Identity of a run: its canonical config (which holds the stage) and its parent's identity."""
    payload = f'{{"config":{config.to_json()},"parent":{canonical_json(parent_hash)}}}'  # canonical_json's bytes
    return hashlib.sha256(payload.encode()).hexdigest()


@functools.lru_cache(maxsize=4096)
def _section_json(value: Any) -> str:
    """Canonical JSON of a config section (a frozen dataclass) or of a plain value (seed, stage, None)."""
    return canonical_json(plain(value))


def plain(value: Any) -> Any:
    """A (nested) config dataclass as plain JSON data, leaving out :func:`added` settings at their default."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {item.name: plain(getattr(value, item.name)) for item in _hashed_fields(value)}
    if isinstance(value, tuple | list):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


def _hashed_fields(value: Any) -> list[dataclasses.Field[Any]]:
    return [item for item in dataclasses.fields(value)
            if not (item.metadata.get(OMIT_AT_DEFAULT) and getattr(value, item.name) == _default(item))]


def _default(item: dataclasses.Field[Any]) -> Any:
    if item.default is not dataclasses.MISSING:
        return item.default
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return dataclasses.MISSING


def from_dict(cls: type, raw: Any, where: str) -> Any:
    """Build a (nested) frozen dataclass from plain data, naming the valid keys on a typo."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - valid)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}")
    kwargs = {name: _coerce(hints[name], value, f"{where}.{name}") for name, value in raw.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required key is missing
        raise ConfigError(f"{where}: {exc}") from None


def coerce_setting(cls: type, name: str, value: Any, where: str) -> Any:
    """One setting of a config section as :func:`from_dict` reads it: type checked, a list as a tuple."""
    return _coerce(_type_hints(cls)[name], value, where)


@functools.lru_cache(maxsize=16)
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        return _coerce(options[0], value, where)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(args[0], v, where) for v in value)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value
