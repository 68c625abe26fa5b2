"""Multi-GPU scaling of pretraining: pairs/s of one process against N processes (DDP), and the efficiency
pairs/s at N / (N x pairs/s at 1).

Each process trains the real pretraining step (``engine.train_one_epoch_pretrain``, the method wrapped as
a job's processes wrap it: ``MethodStep`` in DistributedDataParallel, synchronised batch norm) on synthetic
views already on its device, so this measures computation and gradient all-reduce, not data
loading. Processes are spawned here (no torchrun): one per GPU, NCCL, MASTER_ADDR 127.0.0.1 and a free port.
Weak scaling by default (``--batch`` pairs per process, as each GPU of a job gets its share of the global
batch); the thesis' global batch of 128 on N GPUs is ``--batch $((128 / N))``.

    python benchmarks/bench_ddp_scaling.py                  # every visible GPU; $OUT/bench_ddp.json if OUT set
    python benchmarks/bench_ddp_scaling.py --gpus 4 --method dino
    python benchmarks/bench_ddp_scaling.py --device cpu     # gloo at tiny shapes: checks the script runs

On a CPU (the default without CUDA, and in ``make bench``) it runs 2 gloo processes at tiny shapes (C 12,
64², 4 pairs each, 1 thread each): a smoke check of the multi-process path, not a measurement. About
1-2 minutes on an 8-GPU node at thesis settings (C 48, 96², 128 pairs per GPU, bf16).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from ioussl import profiles  # noqa: E402
from ioussl.config import DinoConfig, ModelConfig, RunConfig, RuntimeConfig  # noqa: E402


def config(args: argparse.Namespace) -> RunConfig:
    """The thesis' pretraining config (or the tiny profile's on a CPU) with the benchmark's method and batch."""
    if args.device == "cpu":
        cfg = profiles.tiny("pretrain")
    else:
        cfg = dataclasses.replace(profiles.thesis("pretrain"), model=ModelConfig(feature_size=args.feature_size))
    assert cfg.pretrain is not None
    pretrain = dataclasses.replace(cfg.pretrain, batch_size=args.batch, method=args.method,
                                   dino=DinoConfig() if args.method == "dino" else None)  # fmt: skip
    return dataclasses.replace(cfg, pretrain=pretrain)


def worker(rank: int, world: int, args: argparse.Namespace, port: int, out: str) -> None:
    """One process of a job of ``world``: set up as the job bridge does, time the steps, rank 0 reports."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    from contextlib import nullcontext

    from ioussl.science import distributed

    runtime_cfg = RuntimeConfig(device=args.device)
    group = distributed.process_group(runtime_cfg) if world > 1 else nullcontext()
    with group:
        result = measure(args, runtime_cfg)
    if rank == 0:
        Path(out).write_text(json.dumps(result))


def measure(args: argparse.Namespace, runtime_cfg: RuntimeConfig) -> dict[str, Any]:
    from ioussl.science.distributed import parallel
    from ioussl.science.runtime import Runtime, current_ranks
    from ioussl.science.train.engine import StepState, train_one_epoch_pretrain
    from ioussl.science.train.methods import build_method
    from ioussl.science.train.methods.base import MethodStep

    ranks = current_ranks()
    cuda = args.device == "cuda"
    device = torch.device("cuda", ranks.local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = torch.backends.cuda.matmul.allow_tf32 = True
    else:
        torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = config(args)
    method = build_method(cfg, steps_per_epoch=args.steps)
    assert isinstance(method, torch.nn.Module)
    method.to(device)
    runtime = Runtime(device=device, dtype=torch.bfloat16 if cuda else None, channels_last=cuda, ranks=ranks)
    if runtime.channels_last:
        method.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    state = StepState(method, method.make_optimizer(fused=cuda), runtime.grad_scaler(), runtime)
    if ranks.world_size > 1:
        state.parallel = parallel(MethodStep(method, method), device)
    batch = synthetic_batch(args.batch, cfg.data.crop, device)
    train_one_epoch_pretrain(state, iter(lambda: batch, None), 0, args.warmup)
    stats = train_one_epoch_pretrain(state, iter(lambda: batch, None), args.warmup, args.steps)
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    return {"processes": ranks.world_size, "pairs_per_s": stats["pairs_per_s"], "loss": stats["loss"],
            "device": name}  # fmt: skip


def synthetic_batch(pairs: int, crop: int, device: torch.device) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    views = {key: torch.rand(pairs, 1, crop, crop, generator=gen).to(device) for key in ("view1", "view2")}
    return {**views, "fallback": torch.zeros(pairs, dtype=torch.bool), "iou": torch.ones(pairs)}


def run(world: int, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "result.json")
        mp.start_processes(worker, args=(world, args, free_port(), out), nprocs=world, start_method="spawn")
        return dict(json.loads(Path(out).read_text()))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--gpus", type=int, default=None,
                        help="processes of the multi-process run (default: every GPU; 2 on a CPU)")
    parser.add_argument("--method", choices=("simsiam", "dino"), default="simsiam")
    parser.add_argument("--batch", type=int, default=None, help="pairs per process (default 128; 4 on a CPU)")
    parser.add_argument("--feature-size", type=int, default=48)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20; 2 on a CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; 1 on a CPU)")
    args = parser.parse_args()
    cpu = args.device == "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_ddp_scaling: no CUDA device (use --device cpu to check the script with gloo)")
        return 1
    args.gpus = args.gpus or (2 if cpu else torch.cuda.device_count())
    args.batch = args.batch or (4 if cpu else 128)
    args.steps = args.steps or (2 if cpu else 20)
    args.warmup = args.warmup or (1 if cpu else 5)
    if args.gpus < 2 or (not cpu and args.gpus > torch.cuda.device_count()):
        print(f"bench_ddp_scaling: needs 2 or more processes (--gpus {args.gpus}, {torch.cuda.device_count()} GPUs)")
        return 1
    one, many = run(1, args), run(args.gpus, args)
    efficiency = many["pairs_per_s"] / (args.gpus * one["pairs_per_s"])
    report = {"device": one["device"], "method": args.method, "pairs_per_process": args.batch,
              "one": one["pairs_per_s"], "n": args.gpus, "many": many["pairs_per_s"],
              "efficiency": efficiency}  # fmt: skip
    print(f"{args.method} on {report['device']}, {args.batch} pairs per process: 1 process {one['pairs_per_s']:,.1f} "
          f"pairs/s, {args.gpus} processes {many['pairs_per_s']:,.1f} pairs/s; scaling efficiency "
          f"{efficiency:.2f} (pairs/s at {args.gpus} / ({args.gpus} x pairs/s at 1))"
          + (" [CPU smoke check, not a measurement]" if cpu else ""))  # fmt: skip
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "bench_ddp.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
