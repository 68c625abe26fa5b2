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
    monkeypatch.delenv("IOUSSL_CPUS_PER_TASK", raising=False)  # a pytest-xdist worker's share (conftest.py)
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


def test_the_deterministic_switch_is_set_process_wide_both_ways_and_only_warns():
    try:
        resolve_runtime(RuntimeConfig(device="cpu", deterministic=True), amp=False)
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        resolve_runtime(RuntimeConfig(device="cpu"), amp=False)  # a later run in the same process
        assert not torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)  # strict, by someone else: made to warn only
        resolve_runtime(RuntimeConfig(device="cpu", deterministic=True), amp=False)
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_a_runtime_that_changes_no_switch_does_not_import_torchinductor():
    """torch's deterministic setter imports TorchInductor (1.5-2 s of a CPU job's start): not when unchanged."""
    import subprocess
    import sys

    code = ("import sys; from ioussl.config import RuntimeConfig; from ioussl.science.runtime import resolve_runtime;"
            " resolve_runtime(RuntimeConfig(device='cpu'), amp=False); print('torch._inductor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


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


@pytest.mark.parametrize(
    ("native_bf16", "precision", "expected"),
    [(True, "auto", torch.bfloat16), (False, "auto", torch.float16), (False, "bf16", torch.bfloat16),
     (True, "fp16", torch.float16), (True, "fp32", None)],  # fmt: skip
    ids=["A100-auto", "V100-auto", "V100-forced-bf16", "fp16", "fp32"],
)
def test_auto_precision_uses_bf16_only_where_the_gpu_computes_it_natively(
    monkeypatch, native_bf16, precision, expected
):
    asked = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:  # a V100 emulates bf16: True by default
        asked.append(including_emulation)
        return native_bf16 or including_emulation

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    flags = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:
        runtime = resolve_runtime(RuntimeConfig(precision=precision), amp=True)
        assert runtime.device.type == "cuda" and runtime.dtype is expected
        assert runtime.needs_scaler is (expected is torch.float16)  # fp16 trains with a GradScaler, as the thesis
        assert asked in ([False], [])  # asked about native support only, or not at all
        assert resolve_runtime(RuntimeConfig(), amp=False).dtype is None  # no AMP asked: fp32
    finally:  # resolve_runtime sets these process-wide for CUDA
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = flags[:2]
        torch.backends.cuda.matmul.allow_tf32 = flags[2]


def test_the_numerics_are_described_and_tf32_is_a_setting_that_keeps_old_ids():
    """Issue 21.8: precision, TF32 and compile reach the result's provenance (``describe``); ``runtime.tf32``
    left at its default is not hashed, set to false it is."""
    from ioussl.config import RunConfig, config_hash

    described = resolve_runtime(RuntimeConfig(device="cpu", compile=True, tf32=False), amp=True).describe()
    assert (described["autocast"], described["tf32"], described["compile"]) == ("None", False, True)
    assert resolve_runtime(RuntimeConfig(device="cpu"), amp=True).describe()["tf32"] is False  # no TF32 on a CPU
    base = RunConfig.from_dict({"stage": "finetune", "seed": 1, "finetune": {}})
    assert "tf32" not in base.to_json()
    thesis = RunConfig.from_dict({"stage": "finetune", "seed": 1, "finetune": {},
                                  "runtime": {"precision": "fp16", "tf32": False}})
    assert '"tf32":false' in thesis.to_json() and config_hash(thesis) != config_hash(base)
