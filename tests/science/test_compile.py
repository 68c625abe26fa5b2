"""``runtime.compile_for_training`` for real on CPU: a tiny model compiled by TorchInductor (with this machine's
C++ compiler), and the eager fallback when compilation really fails (no working C++ compiler, as on a
cluster node without one). The SwinUNETR itself is not compiled here: that takes minutes on a CPU."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch._dynamo.utils import counters

from ioussl.config import RuntimeConfig
from ioussl.science.runtime import compile_for_training


def _tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def _step(forward: torch.nn.Module, model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list]:
    model.zero_grad()
    out = forward(x)
    out.square().mean().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.fixture
def fresh_compiler():
    """A clean dynamo state and no reuse of graphs compiled by earlier runs (the point is to compile)."""
    import torch._inductor.config as inductor

    torch._dynamo.reset()
    counters.clear()
    with inductor.patch(fx_graph_cache=False, autotune_local_cache=False):
        yield inductor
    torch._dynamo.reset()


def test_compile_is_off_unless_asked():
    assert compile_for_training(_tiny(), RuntimeConfig()) is None


@pytest.mark.slow  # TorchInductor and the C++ compiler: about 25 s on the 2-core dev box
def test_a_tiny_model_really_compiles_and_trains_like_eager(fresh_compiler):
    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("no C++ compiler on PATH: TorchInductor cannot compile for the CPU here")
    model, x = _tiny(), torch.randn(4, 8)
    compiled = compile_for_training(model, RuntimeConfig(compile=True))
    out, grads = _step(compiled, model, x)
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo captured the forward ...
    assert counters["aot_autograd"]["ok"] >= 1 and counters["aot_autograd"].get("not_ok", 0) == 0  # ... compiled
    eager_out, eager_grads = _step(model, model, x)
    torch.testing.assert_close(out, eager_out)
    for got, want in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(got, want)
    assert [id(p) for p in compiled.parameters()] == [id(p) for p in model.parameters()]  # shared weights
    assert set(model.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}  # plain checkpoint keys


@pytest.mark.slow
def test_a_compiler_that_fails_falls_back_to_eager_execution(fresh_compiler):
    model, x = _tiny(), torch.randn(4, 8)
    compiled = compile_for_training(model, RuntimeConfig(compile=True))
    before = [p.detach().clone() for p in model.parameters()]
    with fresh_compiler.patch({"cpp.cxx": ("/nonexistent/c++",)}):  # codegen cannot build its kernels
        out, grads = _step(compiled, model, x)  # no exception: the failure is suppressed ...
    assert counters["aot_autograd"]["not_ok"] >= 1 and counters["aot_autograd"].get("ok", 0) == 0  # ... it failed
    eager_out, eager_grads = _step(model, model, x)
    torch.testing.assert_close(out, eager_out)  # ... and ran eagerly instead
    for got, want in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(got, want)
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
