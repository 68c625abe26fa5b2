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
    # 2: slices, square crops (the thesis); 3: volumes, cubic crops (data.crop = 96 means 96³), MONAI's Swin
    # UNETR with spatial_dims = 3 (issue 20). Added after runs were planned: 2 keeps every existing run id.
    spatial_dims: int = added(2)


# The augmentation operations: geometric ones move image and label alike, intensity ones the image only.
GEOMETRIC_OPS = ("zoom", "flip", "rot90")
INTENSITY_OPS = ("scale", "shift", "smooth", "noise")


@dataclass(frozen=True)
class AugmentConfig:
    """One augmentation pipeline: its operations in order, each one's probability and range (a probability
    of 0 turns an operation off). The laws are MONAI's: ``science/augment`` runs them batched on the device
    and as MONAI transforms in the loader.

    Attributes:
        order: operations from GEOMETRIC_OPS and INTENSITY_OPS, each at most once, in the order applied.
        zoom_range: zoom factor uniform in [low, high), one factor for both axes.
        flip_prob: per spatial axis, independently.
        rot90_prob: then k uniform in {1, 2, 3} quarter turns.
        scale_range: f uniform in [-r, r): v -> v (1 + f).
        shift_range: o uniform in [-r, r): v -> v + o.
        sigma_range: Gaussian smoothing sigma per axis, uniform in [low, high).
        noise_std: additive Gaussian noise whose std is uniform in [0, noise_std).
    """

    order: tuple[str, ...] = ()
    zoom_prob: float = 0.0
    zoom_range: tuple[float, ...] = (1.0, 1.0)
    flip_prob: float = 0.0
    rot90_prob: float = 0.0
    scale_prob: float = 0.0
    scale_range: float = 0.0
    shift_prob: float = 0.0
    shift_range: float = 0.0
    smooth_prob: float = 0.0
    sigma_range: tuple[float, ...] = (0.25, 1.5)
    noise_prob: float = 0.0
    noise_std: float = 0.0


@dataclass(frozen=True)
class ViewAugmentConfig(AugmentConfig):
    """Each SimSiam view's augmentations: thesis protocol §3, in the reference code's order."""

    order: tuple[str, ...] = ("zoom", "flip", "rot90", "scale", "shift", "smooth", "noise")
    zoom_prob: float = 0.75
    zoom_range: tuple[float, ...] = (0.8, 1.2)
    flip_prob: float = 0.5
    rot90_prob: float = 0.5
    scale_prob: float = 0.75
    scale_range: float = 0.1
    shift_prob: float = 0.75
    shift_range: float = 0.1
    smooth_prob: float = 0.25
    noise_prob: float = 0.25
    noise_std: float = 0.01


@dataclass(frozen=True)
class CropAugmentConfig(AugmentConfig):
    """The fine-tuning crops' augmentations: thesis protocol §4, in the reference code's order."""

    order: tuple[str, ...] = ("smooth", "scale", "shift", "noise", "flip", "rot90")
    flip_prob: float = 0.25
    rot90_prob: float = 0.25
    scale_prob: float = 0.15
    scale_range: float = 0.1
    shift_prob: float = 0.15
    shift_range: float = 0.1
    smooth_prob: float = 0.15
    noise_prob: float = 0.15
    noise_std: float = 0.01
# The pretraining methods ioussl/science/train/methods/ implements (its ``register`` adds any other), checked here
# without importing torch.
PRETRAIN_METHODS: list[str] = ["simsiam", "dino"]


@dataclass(frozen=True)
class DinoConfig:
    """DINO pretraining as the thesis' main_dino.py runs it (thesis protocol notes §5); used when
    ``pretrain.method = "dino"``, in place of the SimSiam optimiser settings of [pretrain]."""

    out_dim: int = 1024  # the last layer, the softmax's dimension
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04  # linear from this to teacher_temp over warmup_teacher_temp_epochs
    warmup_teacher_temp_epochs: int = 0
    center_momentum: float = 0.9
    teacher_momentum: float = 0.9995  # EMA momentum of the teacher at step 0, cosine to 1 at the end
    base_lr: float = 5e-5  # AdamW, peak after the warm-up
    end_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04  # cosine from this to weight_decay_end; biases and norms get none
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0  # each parameter's gradient norm clipped on its own; 0: no clipping
    freeze_last_layer_epochs: int = 1  # the last layer does not learn in these first epochs


@dataclass(frozen=True)
class PretrainConfig:
    """SimSiam pretraining, Table 4.1 (or another method: ``method``)."""

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
    augment: ViewAugmentConfig = added(ViewAugmentConfig())  # [pretrain.augment]: each view's augmentations
    # The self-supervised method: "simsiam" (the thesis) or "dino" (the thesis' main_dino.py). The optimiser
    # settings above (base_lr ... pred_hidden_dim) are SimSiam's; DINO's are all in [pretrain.dino].
    method: str = added("simsiam")
    dino: DinoConfig | None = added(None)  # present exactly when method = "dino" (its defaults if not given)

    def __post_init__(self) -> None:
        # One run, one config: the DINO section belongs to DINO runs only, so a [pretrain.dino] table in a study
        # that sweeps the method reaches its DINO runs and equal runs keep equal ids.
        if self.method != "dino" and self.dino is not None:
            object.__setattr__(self, "dino", None)
        elif self.method == "dino" and self.dino is None:
            object.__setattr__(self, "dino", DinoConfig())


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
    augment: CropAugmentConfig = added(CropAugmentConfig())  # [finetune.augment]: the crops' augmentations
    # Which encoder of a DINO pretraining to start from (DINO's authors evaluate the teacher). SimSiam has one
    # encoder, which both names select.
    init_from: Literal["teacher", "student"] = added("teacher")
    # FLARE's evaluation rules (issue 21.7): "2022" (the challenge's code) or "2024" (NSD 0 where DSC < 0.2),
    # and the organisers' 4-decimal rounding of each value. Added later: runs planned before keep their ids.
    flare_rules: Literal["2022", "2024"] = added("2022")
    flare_round: bool = added(False)


@dataclass(frozen=True)
class RuntimeConfig:
    """How to run, not what to compute; still hashed because `deterministic` changes results."""

    device: Literal["auto", "cuda", "cpu"] = "auto"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    deterministic: bool = False
    channels_last: bool = True
    cudnn_benchmark: bool = True
    compile: bool = False  # torch.compile the training step: 1.9x pretraining on an H100, 1-2 min warm-up
    # TF32 matmuls and convolutions on Ampere+ GPUs (unless deterministic); false with precision = "fp16"
    # replicates the thesis' V100 numerics (issue 21.8). Added later: runs planned before keep their ids.
    tf32: bool = added(True)


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
        validate_model(self.model, self.data.crop, self.stage)
        if self.model.spatial_dims == 3 and self.data.augment_on != "device":
            raise ConfigError('model.spatial_dims = 3 augments on the device only: set data.augment_on = "device"')
        for section in (self.data, self.model, self.sampler, self.pretrain, self.finetune):
            if section is not None:
                validate_ranges(section)
        if self.sampler is not None:
            validate_interval(self.sampler.i_min, self.sampler.i_max)
        if self.pretrain is not None:
            validate_method(self.pretrain)
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
    # [pretrain.augment] and [finetune.augment]: a zoom outside [0.1, 10] empties or blows up a 64-pixel crop,
    # a scale of -1 or below inverts the image, and sigma 8 already spans a 65-pixel kernel (4 sigma each side).
    "zoom_prob": "[0,1]", "flip_prob": "[0,1]", "rot90_prob": "[0,1]", "scale_prob": "[0,1]", "shift_prob": "[0,1]",
    "smooth_prob": "[0,1]", "noise_prob": "[0,1]", "zoom_range": "[0.1,10]", "scale_range": "[0,1)",
    "shift_range": ">=0", "sigma_range": "(0,8]", "noise_std": ">=0",
    "out_dim": ">=1", "hidden_dim": ">=1", "bottleneck_dim": ">=1", "student_temp": ">0", "teacher_temp": ">0",
    "warmup_teacher_temp": ">0", "warmup_teacher_temp_epochs": ">=0", "center_momentum": "[0,1)",
    "teacher_momentum": "[0,1]", "weight_decay_end": ">=0", "clip_grad": ">=0", "freeze_last_layer_epochs": ">=0",
}


@functools.lru_cache(maxsize=256)  # sections are frozen and shared by every run of a study: check each once
def validate_ranges(section: Any) -> None:
    """Every number of a config section finite and in its range (RANGES); integers below 2**31."""
    name_of = type(section).__name__.removesuffix("Config").lower()
    for item in dataclasses.fields(section):
        value = getattr(section, item.name)
        if isinstance(value, AugmentConfig):
            validate_augment(value, f"{name_of}.{item.name}")
        else:
            check_range(name_of, item.name, value)


def validate_augment(augment: AugmentConfig, section: str) -> None:
    """An augmentation pipeline's numbers in range, its operations known and each listed once, and its
    ranges [low, high] pairs; ``section`` names it in messages ("pretrain.augment")."""
    for item in dataclasses.fields(augment):
        check_range(section, item.name, getattr(augment, item.name))
    known = GEOMETRIC_OPS + INTENSITY_OPS
    for position, op in enumerate(augment.order):
        if op not in known:
            raise ConfigError(f"[{section}].order: unknown operation {op!r}; operations: {', '.join(known)}")
        if op in augment.order[:position]:
            raise ConfigError(f"[{section}].order lists {op!r} twice")
    for name in ("zoom_range", "sigma_range"):
        pair = getattr(augment, name)
        if len(pair) != 2 or pair[0] > pair[1]:
            raise ConfigError(f"[{section}].{name} must be [low, high] with low <= high, got {list(pair)}")


def check_range(section: str, name: str, value: Any) -> None:
    """One setting's numbers (each of a tuple's) finite and in its range (RANGES); ConfigError if not.
    A dotted ``name`` ("augment.zoom_prob") is a setting of a table inside ``section``."""
    if "." in name:
        table, _, name = name.rpartition(".")
        section = f"{section}.{table}"
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
    if rule[0] in "[(":  # an interval: "[0,1)", "(0,8]"
        low, high = (float(bound) for bound in rule[1:-1].split(","))
        above = value >= low if rule[0] == "[" else value > low
        return above and (value <= high if rule[-1] == "]" else value < high)
    bound = float(rule.lstrip("<>="))
    return value >= bound if rule.startswith(">=") else value > bound


def validate_method(pretrain: PretrainConfig) -> None:
    """A known ``pretrain.method``, and the numbers of its [pretrain.dino] section in range."""
    if pretrain.method not in PRETRAIN_METHODS:
        raise ConfigError(f"[pretrain].method must be one of {', '.join(map(repr, PRETRAIN_METHODS))}, "
                          f"got {pretrain.method!r}")  # fmt: skip
    if pretrain.dino is not None:
        for item in dataclasses.fields(pretrain.dino):
            check_range("pretrain.dino", item.name, getattr(pretrain.dino, item.name))


def validate_interval(i_min: float, i_max: float) -> None:
    if not (0.0 <= i_min <= 1.0 and 0.0 <= i_max <= 1.0):
        raise ConfigError(f"IoU interval [{i_min}, {i_max}] must lie inside [0, 1]")
    if i_min > i_max:
        raise ConfigError(f"IoU interval [{i_min}, {i_max}] is reversed: i_min must be <= i_max")


def validate_model(model: ModelConfig, crop: int, stage: str | None = None) -> None:
    """The architecture's own limits; ``stage`` None (a study, whose runs include fine-tunes) is the strictest."""
    if isinstance(model.spatial_dims, bool) or model.spatial_dims not in (2, 3):
        raise ConfigError(f"model.spatial_dims must be 2 (slices) or 3 (volumes), got {model.spatial_dims!r}")
    # SwinUNETR downsamples 5 times by 2 (patch 2, four merges): sides must be divisible by 32, and the
    # deepest stage needs at least 2x2 positions for batch-norm statistics, hence >= 64 when training.
    # In 3D, SimSiam pretraining uses the encoder alone (layer norms only), so 32³ cubes train there; the
    # segmentation network's instance norms need 2x2x2 deepest positions, hence >= 64 for fine-tuning.
    smallest = 32 if model.spatial_dims == 3 and stage == "pretrain" else 64
    if crop % 32 != 0 or crop < smallest:
        cubes = f" for {stage or 'a study'} in 3D" if model.spatial_dims == 3 else ""
        raise ConfigError(f"crop side must be a multiple of 32 and at least {smallest}{cubes}, got {crop}")
    if model.feature_size <= 0 or model.feature_size % 12 != 0:
        raise ConfigError(f"feature_size must be a positive multiple of 12, got {model.feature_size}")
    if len(model.depths) != 4 or len(model.num_heads) != 4:
        raise ConfigError("depths and num_heads must each have 4 entries (one per Swin stage)")
    # Stage i attends over feature_size * 2**i channels split into num_heads[i] heads (MONAI reshapes them
    # without a check): an indivisible width would crash every job of the study, so refuse it at plan time.
    for level, heads in enumerate(model.num_heads):  # not `stage`: that is the parameter above
        width = model.feature_size * 2**level
        if width % heads:
            raise ConfigError(f"num_heads[{level}] = {heads} does not divide stage {level + 1}'s width {width} "
                              f"(feature_size {model.feature_size} x {2**level}); e.g. num_heads = [3, 6, 12, 24]")


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
    """One setting of a config section as :func:`from_dict` reads it: type checked, a list as a tuple.
    A dotted ``name`` ("augment.zoom_prob") is a setting of a table inside the section."""
    *tables, name = name.split(".")
    for table in tables:
        cls = _type_hints(cls)[table]
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
        return from_dict(typing.cast(type, hint), value, where)
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
