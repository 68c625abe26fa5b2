"""Where and how a job runs: device, mixed precision, speed options, seeding, RNG state, loader workers,
and this process's rank among the processes of the job (``Ranks``: only the main rank writes).

CUDA when present (bf16 autocast where the GPU supports it, fp16 with a gradient scaler otherwise,
channels-last and ``cudnn.benchmark`` as options), CPU otherwise. ``deterministic`` turns the speed options
off and asks torch for deterministic kernels, which the thesis' code could not do (it set
``cudnn.benchmark`` after seeding).
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch

from ioussl.config import RuntimeConfig
from ioussl.errors import ConfigError


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes of one job (one per GPU): rank 0 of 1 without
    ``torch.distributed``. Only the main rank writes run files, checkpoints and progress (nanoGPT's
    ``master_process``, DINO's ``is_main_process``), so the writers ask this, never the environment."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise ConfigError(f"rank {self.rank} (local {self.local_rank}) does not fit world size {self.world_size}")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_ranks() -> Ranks:
    """The ranks of this process: from the initialised default process group, else rank 0 of 1."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0") or 0))
    return Ranks()


@dataclass(frozen=True)
class Runtime:
    """Resolved run-time choices; ``dtype`` is the autocast type or None for plain fp32."""

    device: torch.device
    dtype: torch.dtype | None
    channels_last: bool
    ranks: Ranks = field(default_factory=Ranks)

    @property
    def rank(self) -> int:
        return self.ranks.rank

    @property
    def world_size(self) -> int:
        return self.ranks.world_size

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run's files, checkpoints and progress (rank 0)."""
        return self.ranks.is_main

    def follower_summary(self, stage: str) -> dict[str, Any]:
        """What a non-main rank returns from a stage: it wrote nothing, so it has no result of its own."""
        return {"stage": stage, "rank": self.rank, "world_size": self.world_size}
    tf32: bool = False  # TF32 matmuls and convolutions in effect (CUDA only)
    compile: bool = False  # the training step asked torch.compile (it may have fallen back to eager)

    @property
    def needs_scaler(self) -> bool:
        return self.dtype is torch.float16

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A scaler that is a no-op unless fp16 needs it (its state is still checkpointed)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.needs_scaler)

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last and batch.ndim == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    def describe(self) -> dict[str, Any]:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        # The numerics a result was computed with (issue 21.8): recorded in its provenance, shown by the report.
        return {"device": str(self.device), "device_name": name, "autocast": str(self.dtype), "tf32": self.tf32,
                "compile": self.compile}


def resolve_runtime(cfg: RuntimeConfig, amp: bool, ranks: Ranks | None = None) -> Runtime:
    """Pick the device and precision and set global backend flags.

    Args:
        cfg: the run's runtime settings.
        amp: whether the stage asks for mixed precision (Table 4.1: yes for both stages).
        ranks: this process's ranks; default: from ``torch.distributed`` (rank 0 of 1 without it).

    Raises:
        ConfigError: CUDA was requested but is not available.
    """
    has_cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not has_cuda:
        raise ConfigError("runtime.device is 'cuda' but no CUDA device is available")
    ranks = ranks if ranks is not None else current_ranks()
    device = torch.device("cuda" if cfg.device != "cpu" and has_cuda else "cpu")
    if device.type == "cuda" and ranks.world_size > 1:
        # One process per GPU: local rank i takes GPU i of those it sees (all of the node's, or only its own
        # when CUDA_VISIBLE_DEVICES was narrowed per task), never every rank on GPU 0 (submitit #1704).
        device = torch.device("cuda", ranks.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    dtype = autocast_dtype(cfg.precision, amp, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark and not cfg.deterministic
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32 and not cfg.deterministic
        torch.backends.cudnn.allow_tf32 = cfg.tf32 and not cfg.deterministic
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # Set either way: the flag is process-wide, and a previous run in this process may have set it. Only
    # when it differs, though: torch's setter imports TorchInductor, 1.5-2 s of every CPU job's start.
    if torch.are_deterministic_algorithms_enabled() != cfg.deterministic or (
        cfg.deterministic and not torch.is_deterministic_algorithms_warn_only_enabled()
    ):
        torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    if device.type == "cpu":
        # torch defaults to every core of the machine; jobs sharing a node (SLURM, or the local executor
        # running several at once) would oversubscribe it.
        torch.set_num_threads(allocated_cpus())
    channels_last = cfg.channels_last and device.type == "cuda" and not cfg.deterministic
    tf32 = device.type == "cuda" and cfg.tf32 and not cfg.deterministic
    return Runtime(device=device, dtype=dtype, channels_last=channels_last, ranks=ranks, tf32=tf32,
                   compile=cfg.compile)


def autocast_dtype(precision: str, amp: bool, device: torch.device) -> torch.dtype | None:
    """The autocast type for a stage: None (fp32) on the CPU or without AMP; with ``auto``, bf16 only on a
    GPU that computes it natively (Ampere and later), else fp16 with a gradient scaler, as the thesis ran
    on its V100s (which emulate bf16 slowly: ``is_bf16_supported()`` alone says yes there)."""
    if precision == "fp32" or (precision == "auto" and not amp) or device.type != "cuda":
        # CPU autocast (bf16) is slower than fp32 on most CPUs, and the tiny profile must stay exact.
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    return torch.float16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG a training loop draws from, for a checkpoint."""
    name, key, pos, has_gauss, cached = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    state: dict[str, Any] = {
        "python": random.getstate(),
        # Plain lists, not an ndarray: checkpoints must load with torch.load(weights_only=True).
        "numpy": [name, key.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def compile_for_training(model: torch.nn.Module, cfg: RuntimeConfig) -> torch.nn.Module | None:
    """``torch.compile(model)`` when the run asks for it, else None (train eagerly).

    The compiled wrapper shares the model's parameters, so checkpoints keep plain state-dict keys and
    evaluation runs the eager model (sliding windows of varying batch would recompile). A compiler that
    fails on this machine falls back to eager execution rather than failing the job.
    """
    if not cfg.compile:
        return None
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    return cast(torch.nn.Module, torch.compile(model))


def allocated_cpus() -> int:
    """CPUs this job may use: SLURM's allocation (or the local executor's, $IOUSSL_CPUS_PER_TASK) when set,
    else the process's affinity mask."""
    for var in ("IOUSSL_CPUS_PER_TASK", "SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def loader_workers(requested: int | None) -> int:
    """Data-loader workers: the configured number, else all allocated CPUs but one (for the main process)."""
    if requested is not None:
        return max(0, requested)
    return max(0, min(16, allocated_cpus() - 1))


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Evaluate under ``no_grad`` and restore the previous train/eval mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
