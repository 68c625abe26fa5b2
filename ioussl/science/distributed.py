"""Several processes training one run (one per GPU, DDP): the process group, the few collectives training
needs, synchronised batch norm and the ``DistributedDataParallel`` wrapper.

The job bridge (``submit/entrypoint.py``) opens the process group from the environment submitit exports
(``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) when a job has more than one
task, and closes it when the stage ends, failed or not. Everything else here is a no-op in a single process
(``ioussl run``, a one-task job, a test): with one process training is exactly what it was before DDP.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ioussl.config import RuntimeConfig
from ioussl.errors import ConfigError, TrainingError

ENV_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")


def backend_for(cfg: RuntimeConfig) -> str:
    """NCCL between GPUs, gloo between CPU processes (the tests, a CPU-only smoke run)."""
    return "nccl" if cfg.device != "cpu" and torch.cuda.is_available() else "gloo"


@contextlib.contextmanager
def process_group(cfg: RuntimeConfig) -> Iterator[None]:
    """The default process group of this job's processes, from the ``env://`` variables; destroyed on exit,
    also when training raised.

    Raises:
        ConfigError: a variable of the ``env://`` method is missing.
        TrainingError: the processes could not meet (an unreachable host, a port in use).
    """
    missing = [name for name in ENV_VARS if not os.environ.get(name)]
    if missing:
        raise ConfigError(f"torch.distributed needs {', '.join(missing)} in the environment (set by the job bridge)")
    backend = backend_for(cfg)
    if backend == "nccl":  # before init: NCCL binds each process to the GPU current at its first collective
        local = int(os.environ.get("LOCAL_RANK", "0") or 0)
        torch.cuda.set_device(local % torch.cuda.device_count())
    global _HOST_GROUP
    try:
        dist.init_process_group(backend=backend, init_method="env://")
        # Host-side agreement (a stop at the next step: stopping.py) over gloo, so it never waits on the GPU queue.
        _HOST_GROUP = dist.new_group(backend="gloo") if backend == "nccl" else None
    except (RuntimeError, ValueError) as exc:  # torch's DistError is a RuntimeError
        raise TrainingError(f"torch.distributed ({backend}) could not start: {_first_line(exc)}") from None
    try:
        yield
    finally:
        _HOST_GROUP = None
        dist.destroy_process_group()


_HOST_GROUP: Any = None  # gloo beside NCCL for host-side collectives; None: the default group is gloo already


def world_size() -> int:
    """The number of processes training together: 1 without an initialised process group."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def sum_over_ranks(tensor: Tensor) -> Tensor:
    """``tensor`` summed over the processes (in place; returned as is in a single process)."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def min_over_ranks(tensor: Tensor) -> Tensor:
    """``tensor``'s element-wise minimum over the processes (in place; as is in a single process)."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def mean_over_ranks(tensor: Tensor) -> Tensor:
    """The mean of ``tensor`` over the processes (a new tensor; ``tensor`` itself in a single process).

    Gloo has no AVG reduction: sum, then divide. Every rank holds an equal share of the global batch, so
    the mean of the ranks' batch means is the mean over the global batch.
    """
    size = world_size()
    if size == 1:
        return tensor
    total = tensor.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / size


def mean_numbers_over_ranks(values: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Each number of ``values`` averaged over the processes, in one collective (an epoch's per-rank
    statistics, e.g. the collapse coefficient); the mapping unchanged in a single process."""
    if world_size() == 1:
        return dict(values)
    keys = [key for key, value in values.items() if isinstance(value, int | float) and not isinstance(value, bool)]
    if not keys:
        return dict(values)
    averaged = mean_over_ranks(torch.tensor([float(values[key]) for key in keys], dtype=torch.float64,
                                            device=device)).tolist()  # fmt: skip
    return {**values, **dict(zip(keys, averaged, strict=True))}


def any_over_ranks(flag: bool) -> bool:
    """Whether ``flag`` is true on any process (one small host-side all-reduce); ``flag`` in a single process."""
    if world_size() == 1:
        return flag
    total = torch.tensor([int(flag)])
    dist.all_reduce(total, op=dist.ReduceOp.MAX, group=_HOST_GROUP)
    return bool(total.item())


def gather_objects(value: Any) -> list[Any]:
    """Every process's ``value`` (a picklable object, tensors on the CPU), in rank order, on every process;
    ``[value]`` in a single process."""
    if world_size() == 1:
        return [value]
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value, group=_HOST_GROUP)
    return values


def barrier() -> None:
    """Wait until every process got here (host-side); nothing in a single process."""
    if world_size() > 1:
        dist.barrier(group=_HOST_GROUP)


def from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every process (a picklable object), so that every rank takes the same decision
    (fine-tuning's model selection and early stopping); ``value`` itself in a single process."""
    if world_size() == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def check_global_batch(batch_size: int, size: int, key: str) -> int:
    """One process's share of a global batch of ``batch_size`` over ``size`` processes (the batch is the
    study's setting, whatever the number of GPUs, so a study's science does not change with it).

    Raises:
        ConfigError: the batch does not split evenly over the processes.
    """
    if batch_size % size:
        raise ConfigError(f"{key} = {batch_size} is the global batch and must split evenly over this job's {size} "
                          f"processes (one per GPU); use a multiple of {size} or another number of GPUs")  # fmt: skip
    return batch_size // size


def parallel(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` (one call per training step) wrapped in ``DistributedDataParallel``, its batch norms
    synchronised over the processes; ``module`` itself in a single process.

    The wrapper shares the module's parameters (checkpoints keep saving the plain module). Rank 0's
    parameters and buffers reach every rank once, when it is built; buffers are not broadcast again before
    every forward: synchronised batch norm keeps the running statistics equal on every rank, and a method's
    other buffers (DINO's centre) are updated alike from all-reduced values.
    """
    if world_size() == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    module = synchronise_batch_norms(module, device)
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, forward_sync_buffers=False)


def synchronise_batch_norms(module: nn.Module, device: torch.device) -> nn.Module:
    """Every ``BatchNorm*d`` of ``module`` (in place) computing its statistics over the global batch: torch's
    ``SyncBatchNorm`` on GPUs, ``ReducedBatchNorm`` on CPUs (torch's has no CPU kernels). Parameter and
    buffer names stay as they were, so checkpoints are those of one process."""
    if device.type == "cuda":
        return cast(nn.Module, nn.SyncBatchNorm.convert_sync_batchnorm(module))
    for name, child in list(module.named_children()):
        module.add_module(name, synchronise_batch_norms(child, device))
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, ReducedBatchNorm):
        return ReducedBatchNorm.like(module)
    return module


class ReducedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of the global batch, by differentiable all-reduces
    (``torch.distributed.nn``, which gloo runs on CPUs): the mean and the biased variance of every rank's
    rows together, the unbiased variance for the running estimate, as ``F.batch_norm`` on the whole batch.

    The gradient flows through the reductions into every rank's rows, as through torch's ``SyncBatchNorm``;
    in evaluation mode, or in a single process, it is plain batch norm.
    """

    @classmethod
    def like(cls, bn: nn.modules.batchnorm._BatchNorm) -> ReducedBatchNorm:
        """``bn`` as a ReducedBatchNorm sharing its parameters and buffers (as torch's
        ``convert_sync_batchnorm`` shares them): an optimiser built before keeps working, the keys stay."""
        reduced = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        if bn.affine:
            reduced.weight, reduced.bias = bn.weight, bn.bias
        reduced.running_mean, reduced.running_var = bn.running_mean, bn.running_var
        reduced.num_batches_tracked = bn.num_batches_tracked
        return reduced.train(bn.training)

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or world_size() == 1:
            return super().forward(input)
        dims = [0, *range(2, input.dim())]  # every axis but the channels
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = torch.tensor(float(input.numel() // input.shape[1]), device=input.device)
        dist.all_reduce(count)  # rows of every rank (equal shares of the global batch, but nothing relies on it)
        mean = _SumOverRanks.apply(input.sum(dim=dims)) / count
        centred = input - mean.reshape(shape)
        variance = _SumOverRanks.apply(centred.square().sum(dim=dims)) / count
        out = centred * torch.rsqrt(variance + self.eps).reshape(shape)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        if self.track_running_stats:
            self._update_running(mean.detach(), variance.detach() * count / (count - 1))
        return out

    @torch.no_grad()
    def _update_running(self, mean: Tensor, unbiased: Tensor) -> None:
        assert self.running_mean is not None and self.running_var is not None and self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.mul_(1 - factor).add_(mean * factor)
        self.running_var.mul_(1 - factor).add_(unbiased * factor)


class _SumOverRanks(torch.autograd.Function):
    """A sum over the processes that gradients flow through: the gradient of every rank's input is the sum
    of the gradients of every rank's output (each rank's loss depends on every rank's rows)."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        return sum_over_ranks(tensor.clone())

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return sum_over_ranks(grad.clone())


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(exc).__name__
