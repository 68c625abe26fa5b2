"""Device, precision, RNG state and worker sizing."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch

from ioussl.config import RuntimeConfig
from ioussl.errors import ConfigError
from ioussl.science.runtime import allocated_cpus, loader_workers, resolve_runtime, rng_state, set_rng_state


def test_workers_follow_the_slurm_allocation(monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    assert allocated_cpus() == 6
    assert loader_workers(None) == 5  # one CPU stays with the training process
    assert loader_workers(2) == 2
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    monkeypatch.delenv("SLURM_CPUS_ON_NODE", raising=False)
    assert allocated_cpus() >= 1


def test_local_executor_allocation_wins_and_sets_cpu_threads(monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    monkeypatch.setenv("IOUSSL_CPUS_PER_TASK", "1")
    assert allocated_cpus() == 1
    before = torch.get_num_threads()
    try:
        resolve_runtime(RuntimeConfig(device="cpu"), amp=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_cpu_runtime_runs_fp32_and_refuses_a_missing_gpu():
    runtime = resolve_runtime(RuntimeConfig(), amp=True)
    assert runtime.device.type == "cpu" and runtime.dtype is None and not runtime.channels_last
    assert not runtime.grad_scaler().is_enabled()
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_runtime(RuntimeConfig(device="cuda"), amp=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_runtime_uses_mixed_precision():
    runtime = resolve_runtime(RuntimeConfig(), amp=True)
    assert runtime.device.type == "cuda" and runtime.dtype in (torch.bfloat16, torch.float16)


def test_rng_state_round_trips_through_a_weights_only_checkpoint():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    buffer = io.BytesIO()
    torch.save({"rng": rng_state()}, buffer)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    buffer.seek(0)
    set_rng_state(torch.load(buffer, weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
