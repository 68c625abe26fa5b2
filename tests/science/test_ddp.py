"""Multi-process training (DDP) on the CPU: two gloo processes started as a real two-task job (submitit's
LocalExecutor, ``tasks_per_node=2``, through the job bridge) train as one process does.

With data no rank draws at random (every slice 64 x 64 and cut whole, no augmentation, no drop path) the
ranks' shares of each global batch are exactly the batch of one process, and the two runs differ only by
float32 rounding (sums taken in another order), which training amplifies a little at every update. Measured
on the 2-core dev box (docs/slurm.md), 2 epochs x 2 steps, 2 processes against 1:

| | loss per epoch, max abs diff | encoder update gap | same without the all-reduce | per-rank batch norm |
|---|---|---|---|---|
| SimSiam | 7.6e-5 | 0.017 | 3.2 (loss 2.2e-2) | 2.4 (loss 2.0e-2) |
| DINO | 2.4e-7 | 3.6e-5 | 0.11 (loss 3.0e-3) | (no batch norm) |
| fine-tuning | 6.0e-8 | (val DSC identical) | | |

The update gap is ||encoder(2 processes) - encoder(1 process)|| / ||encoder(1 process) - initial encoder||.
For scale, one process on 1 thread against 2 threads differs by 5.0e-4 (loss) and 0.048 (gap) for SimSiam:
SimSiam's first steps amplify any rounding. One step's gradients differ by 4e-6 (relative norm), as they do
between one process's batch and the same batch in another order (6e-6); in float64 by 1e-13.

With the tiny profile's random crops, augmentations and drop path each rank draws its own (seeded per rank),
so the curves differ as two seeds' do: measured up to 6.2e-3 (seeds 0-2), while seeds differ by up to 9.6e-3.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ioussl import profiles, runfiles
from ioussl.config import CropAugmentConfig, DinoConfig, RunConfig, ViewAugmentConfig
from ioussl.errors import ConfigError, TrainingError
from ioussl.science.runtime import Ranks
from ioussl.science.seeds import derived_seed
from ioussl.science.train import checkpoint as ckpt

LOSS_TOL = 1e-3  # between the measured differences and what a broken synchronisation gives (table above)
UPDATE_TOL = {"simsiam": 0.25, "dino": 0.01}
CURVE_TOL = 0.02


@pytest.fixture(scope="module")
def store64(tmp_path_factory) -> dict[str, str]:
    """Synthetic CT whose slices are all 64 x 64 (a 4 cm body padded to the crop): a 64 crop is the slice."""
    from ioussl.science.data.preprocess import PreprocessSettings, preprocess_dataset
    from ioussl.science.data.synth import synth_dataset

    root = tmp_path_factory.mktemp("store64")
    synth_dataset(root / "nifti", cases=3, unlabelled=1, seed=0, size=40, slices=16, spacing_mm=1.0)
    assert preprocess_dataset(root / "nifti", root / "store", PreprocessSettings(min_size=64)).failed == []
    split = root / "split.json"
    split.write_text(json.dumps({"train": ["SYN_Tr_0001"], "val": ["SYN_Tr_0002"]}))
    return {"store": str(root / "store"), "split": str(split)}


def exact_pretrain(store: str, method: str = "simsiam") -> RunConfig:
    """The tiny profile on data no rank draws: whole-slice crops, no augmentation, no drop path."""
    cfg = profiles.tiny("pretrain", store=store)
    assert cfg.sampler is not None and cfg.pretrain is not None
    pretrain = dataclasses.replace(cfg.pretrain, augment=ViewAugmentConfig(order=()), epochs=2, steps_per_epoch=2)
    if method == "dino":
        pretrain = dataclasses.replace(pretrain, method="dino", dino=DinoConfig(out_dim=256, base_lr=1e-3,
                                                                                warmup_epochs=0))  # fmt: skip
    return dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, pretrain_drop_path=0.0),
        sampler=dataclasses.replace(cfg.sampler, random_crop=True), pretrain=pretrain,
    ).validate()  # fmt: skip


def run_job(run_dir: Path, cfg: RunConfig, tasks: int, encoder: Path | None = None) -> list[dict[str, Any]]:
    """``cfg`` as a local submitit job of ``tasks`` processes through the real job bridge (RunJob): every
    task's return value, rank 0's first."""
    import submitit

    from ioussl.submit.entrypoint import RunJob

    run_dir.mkdir(parents=True)
    runfiles.atomic_write_text(run_dir / runfiles.CONFIG, cfg.to_json())
    executor = submitit.LocalExecutor(folder=run_dir.parent / f"_submitit_{run_dir.name}" / "%j")
    executor.update_parameters(tasks_per_node=tasks, timeout_min=5, stderr_to_stdout=True)
    job = executor.submit(RunJob(str(run_dir), str(encoder) if encoder else None))
    return job.results()


def curve(run_dir: Path) -> list[dict[str, Any]]:
    return list(runfiles.read_jsonl(run_dir / runfiles.METRICS))


def encoder_update_gap(one: Path, two: Path, initial: dict[str, torch.Tensor]) -> float:
    """||encoder(two) - encoder(one)|| / ||encoder(one) - initial||: how far apart the two runs' updates are."""
    first = ckpt.load(one / runfiles.CHECKPOINTS / ckpt.ENCODER)["model"]
    second = ckpt.load(two / runfiles.CHECKPOINTS / ckpt.ENCODER)["model"]
    gap = sum(float((second[k].double() - first[k].double()).square().sum()) for k in first)
    update = sum(float((first[k].double() - initial[k].double()).square().sum()) for k in first)
    return math.sqrt(gap / update)


def initial_encoder(cfg: RunConfig) -> dict[str, torch.Tensor]:
    """The encoder every run of ``cfg`` starts from (run_pretrain seeds with the run seed, then builds)."""
    from ioussl.science.runtime import seed_everything
    from ioussl.science.train.methods import build_method

    seed_everything(cfg.seed)
    return build_method(cfg, steps_per_epoch=1).encoder_states()["model"]


def assert_rank_zero_wrote_once(run_dir: Path, results: list[dict[str, Any]], epochs: int) -> None:
    main, follower = results
    assert follower == {"stage": main["stage"], "rank": 1, "world_size": 2}  # it trained, wrote nothing
    assert [line["epoch"] for line in curve(run_dir)] == list(range(epochs))  # one line per epoch
    events = [e["event"] for e in runfiles.read_jsonl(run_dir / runfiles.EVENTS)]
    assert events == ["started", "finished"]
    started = next(iter(runfiles.read_jsonl(run_dir / runfiles.EVENTS)))
    assert started["world_size"] == 2
    assert json.loads((run_dir / runfiles.RESULT).read_text())["provenance"]["world_size"] == 2
    last = ckpt.load(run_dir / runfiles.CHECKPOINTS / ckpt.LAST)
    assert last["world_size"] == 2
    assert not any(key.startswith(("module.", "method.")) for key in last["model"])  # the plain module's keys
    assert not [p.name for p in (run_dir / runfiles.CHECKPOINTS).iterdir() if p.name.startswith(".")]  # no leftovers


@pytest.fixture()
def one_cpu(monkeypatch):
    """Each process (this one and every task) computes on one thread, as the jobs of the tests do."""
    monkeypatch.setenv("IOUSSL_CPUS_PER_TASK", "1")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["simsiam", "dino"])
def test_two_processes_pretrain_as_one_on_the_same_data(store64, tmp_path, one_cpu, method):
    from ioussl.submit.entrypoint import run_stage

    cfg = exact_pretrain(store64["store"], method)
    (tmp_path / "one").mkdir()
    runfiles.atomic_write_text(tmp_path / "one" / runfiles.CONFIG, cfg.to_json())
    run_stage(tmp_path / "one")
    results = run_job(tmp_path / "two", cfg, tasks=2)
    assert_rank_zero_wrote_once(tmp_path / "two", results, epochs=2)
    one, two = curve(tmp_path / "one"), curve(tmp_path / "two")
    for a, b in zip(one, two, strict=True):
        assert abs(a["loss"] - b["loss"]) <= LOSS_TOL, (a["loss"], b["loss"])
        assert abs(a["collapse"] - b["collapse"]) <= LOSS_TOL  # over the global batch, not one rank's share
        assert a["fallback_rate"] == b["fallback_rate"] and a["mean_iou"] == b["mean_iou"] == 1.0  # whole slices
    assert one[-1]["loss"] != one[0]["loss"]  # it trained
    gap = encoder_update_gap(tmp_path / "one", tmp_path / "two", initial_encoder(cfg))
    assert gap <= UPDATE_TOL[method], gap


@pytest.mark.slow
def test_two_processes_fine_tune_as_one_on_the_same_data(store64, tmp_path, one_cpu):
    from ioussl.submit.entrypoint import run_stage

    cfg = profiles.tiny("finetune", store=store64["store"], split=store64["split"])
    assert cfg.finetune is not None
    cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(
        cfg.finetune, augment=CropAugmentConfig(order=()), epochs=2, steps_per_epoch=2)).validate()  # fmt: skip
    (tmp_path / "one").mkdir()
    runfiles.atomic_write_text(tmp_path / "one" / runfiles.CONFIG, cfg.to_json())
    single = run_stage(tmp_path / "one")
    results = run_job(tmp_path / "two", cfg, tasks=2)
    assert_rank_zero_wrote_once(tmp_path / "two", results, epochs=2)
    for a, b in zip(curve(tmp_path / "one"), curve(tmp_path / "two"), strict=True):
        assert abs(a["loss"] - b["loss"]) <= LOSS_TOL, (a["loss"], b["loss"])
        assert abs(a["val_dsc"] - b["val_dsc"]) <= LOSS_TOL
    assert abs(results[0]["dsc"] - single["dsc"]) <= LOSS_TOL


@pytest.mark.slow
def test_with_random_crops_two_processes_follow_the_one_process_curve(tmp_path, one_cpu):
    """The tiny profile as it is: each rank cuts and augments its own crops, so the curves agree as two
    seeds' do, and the ranks' crops really differ (their IoUs do)."""
    from ioussl.science.data.preprocess import preprocess_dataset
    from ioussl.science.data.synth import synth_dataset
    from ioussl.submit.entrypoint import run_stage

    synth_dataset(tmp_path / "nifti", cases=1, unlabelled=1, seed=0, size=96, slices=10)
    assert preprocess_dataset(tmp_path / "nifti", tmp_path / "store").failed == []
    cfg = profiles.tiny("pretrain", store=str(tmp_path / "store"))
    (tmp_path / "one").mkdir()
    runfiles.atomic_write_text(tmp_path / "one" / runfiles.CONFIG, cfg.to_json())
    run_stage(tmp_path / "one")
    run_job(tmp_path / "two", cfg, tasks=2)
    one, two = curve(tmp_path / "one"), curve(tmp_path / "two")
    assert [line["step"] for line in one] == [line["step"] for line in two]  # global batch: the same steps
    for a, b in zip(one, two, strict=True):
        assert abs(a["loss"] - b["loss"]) <= CURVE_TOL, (a["loss"], b["loss"])
    assert [a["mean_iou"] for a in one] != [b["mean_iou"] for b in two]  # rank 1 drew its own crops


@pytest.mark.slow
def test_a_batch_that_does_not_split_over_the_processes_fails_every_rank_in_one_line(store64, tmp_path, one_cpu):
    import submitit

    cfg = profiles.tiny("pretrain", store=store64["store"])
    assert cfg.pretrain is not None
    cfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, batch_size=7)).validate()
    with pytest.raises(submitit.core.utils.FailedJobError, match="must split evenly"):
        run_job(tmp_path / "run", cfg, tasks=2)
    events = list(runfiles.read_jsonl(tmp_path / "run" / runfiles.EVENTS))
    assert [e["event"] for e in events] == ["started", "failed"]  # rank 0's, once
    assert events[1]["error"] == ("pretrain.batch_size = 7 is the global batch and must split evenly over this "
                                  "job's 2 processes (one per GPU); use a multiple of 2 or another number of GPUs")
    assert not (tmp_path / "run" / runfiles.METRICS).exists() and not (tmp_path / "run" / runfiles.RESULT).exists()


# Fast checks of the pieces, in one process.


def test_the_ranks_batches_together_are_the_batches_of_one_process():
    from torch.utils.data import DataLoader

    from ioussl.science.train.datasets import RankBatches

    def one_process(size: int, batch: int, drop_last: bool) -> list[list[int]]:
        generator = torch.Generator().manual_seed(7)
        loader = DataLoader(range(size), batch_size=batch, shuffle=True, drop_last=drop_last, generator=generator)
        return [b.tolist() for _ in range(2) for b in loader]  # two passes, as cycle() makes them

    def ranks(size: int, batch: int, drop_last: bool, world: int) -> list[list[list[int]]]:
        shares = []
        for rank in range(world):
            generator = torch.Generator().manual_seed(7)
            sampler = RankBatches(size, batch, Ranks(rank, world), generator, drop_last)
            loader = DataLoader(range(size), batch_sampler=sampler, generator=generator)
            shares.append([b.tolist() for _ in range(2) for b in loader])
        return shares

    for world in (2, 4):
        shares = ranks(22, 8, True, world)
        assert [sum(parts, []) for parts in zip(*shares, strict=True)] == one_process(22, 8, True)
        assert all(len(b) == 8 // world for rank in shares for b in rank)
    shares = ranks(21, 8, False, 2)  # 21 = 8 + 8 + 5: the last global batch padded to 6, 3 per rank
    whole = one_process(21, 8, False)
    assert [len(b) for b in shares[0]] == [4, 4, 3] * 2
    assert [sum(parts, []) for parts in zip(*shares, strict=True)][:2] == whole[:2]
    assert (shares[0][2] + shares[1][2])[:5] == whole[2]
    with pytest.raises(ConfigError, match="batch size 6 is not divisible by the 4 processes"):
        RankBatches(21, 6, Ranks(0, 4), torch.Generator(), True)


def test_rank_zero_keeps_the_single_process_seeds_and_other_ranks_get_their_own():
    assert derived_seed(3, 1, "pairs") == derived_seed(3, 1, "pairs", rank=0)
    seeds = {derived_seed(3, 1, "pairs", rank=r) for r in range(8)}
    assert len(seeds) == 8 and all(0 <= s < 2**31 for s in seeds)


def test_a_global_batch_must_split_evenly_over_the_processes(monkeypatch):
    from ioussl.science import distributed

    assert distributed.check_global_batch(8, 1, "pretrain.batch_size") == 8  # one process: all of it
    with pytest.raises(ConfigError, match=r"pretrain.batch_size = 8 is the global batch and must split evenly "
                                          r"over this job's 3 processes"):  # fmt: skip
        distributed.check_global_batch(8, 3, "pretrain.batch_size")
    assert distributed.check_global_batch(12, 3, "pretrain.batch_size") == 4


def test_a_resume_with_another_number_of_processes_is_refused(tmp_path):
    from ioussl.science.data.preprocess import PreprocessSettings, preprocess_dataset
    from ioussl.science.data.store import SliceStore
    from ioussl.science.data.synth import synth_dataset
    from ioussl.science.train.pretrain import run_pretrain

    synth_dataset(tmp_path / "nifti", cases=1, unlabelled=1, seed=0, size=40, slices=8, spacing_mm=1.0)
    assert preprocess_dataset(tmp_path / "nifti", tmp_path / "store", PreprocessSettings(min_size=64)).failed == []
    cfg = profiles.tiny("pretrain", store=str(tmp_path / "store"))
    last = tmp_path / "run" / runfiles.CHECKPOINTS / ckpt.LAST
    store = SliceStore(tmp_path / "store").fingerprint
    payload = {**ckpt.describe(cfg, "last"), "store": store, "model": {}, "optimizer": {}, "scaler": {}, "rng": {},
               "epoch": 0, "step": 3, "world_size": 2}  # fmt: skip
    ckpt.save_atomic(payload, last)
    with pytest.raises(TrainingError, match=r"written by a job of 2 process\(es\) \(one per GPU\) but this job has 1: "
                                            r"resume with the resources it started with"):  # fmt: skip
        run_pretrain(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / runfiles.EVENTS).exists()  # refused before anything was resumed


def test_one_process_is_not_distributed():
    from ioussl.science import distributed
    from ioussl.submit.entrypoint import distributed as bridge
    from ioussl.submit.entrypoint import job_tasks

    assert job_tasks() == 1 and distributed.world_size() == 1
    with bridge(profiles.tiny("pretrain")):  # no process group, no environment needed
        assert not torch.distributed.is_initialized()
    values = torch.tensor([1.0, 2.0])
    assert distributed.sum_over_ranks(values) is values and distributed.mean_over_ranks(values) is values
    assert distributed.from_main({"dsc": 0.5}) == {"dsc": 0.5}
    stats = {"collapse": 0.25, "name": "x"}
    assert distributed.mean_numbers_over_ranks(stats, torch.device("cpu")) == stats
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    assert distributed.parallel(net, torch.device("cpu")) is net


def test_cpu_batch_norm_replacement_shares_parameters_and_keys():
    from ioussl.science.distributed import ReducedBatchNorm, synchronise_batch_norms
    from ioussl.science.models.heads import ProjectionHead

    head = ProjectionHead(8, 4, 6)
    keys, params = list(head.state_dict()), [id(p) for p in head.parameters()]
    x = torch.randn(5, 8)
    expected = head(x)
    synchronise_batch_norms(head, torch.device("cpu"))
    assert sum(isinstance(m, ReducedBatchNorm) for m in head.modules()) == 3
    assert list(head.state_dict()) == keys and [id(p) for p in head.parameters()] == params
    assert torch.allclose(head(x), expected, atol=1e-6)  # one process: plain batch norm
    assert int(np.asarray(head[1].num_batches_tracked)) == 2


def _task_pids(controller: int) -> list[int]:
    """The task processes submitit's local controller started (its children)."""
    children = Path(f"/proc/{controller}/task/{controller}/children")
    return [int(pid) for pid in children.read_text().split()] if children.exists() else []


@pytest.mark.slow
def test_a_warned_two_process_job_stops_at_one_step_on_every_rank_and_resumes_bit_for_bit(store64, tmp_path, one_cpu):
    """The tiny profile's random crops, augmentations and drop path: each rank's own random state must come back."""
    import os
    import signal
    import time

    import submitit

    from ioussl.submit.entrypoint import RunJob

    cfg = profiles.tiny("pretrain", store=store64["store"])
    assert cfg.pretrain is not None
    cfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, epochs=2, steps_per_epoch=8)).validate()
    run_job(tmp_path / "straight", cfg, tasks=2)
    warned = tmp_path / "warned"
    warned.mkdir()
    runfiles.atomic_write_text(warned / runfiles.CONFIG, cfg.to_json())
    executor = submitit.LocalExecutor(folder=tmp_path / "_submitit_warned" / "%j")
    executor.update_parameters(tasks_per_node=2, timeout_min=5, stderr_to_stdout=True)
    job = executor.submit(RunJob(str(warned)))
    deadline = time.monotonic() + 240
    while not curve(warned):  # epoch 0 is done: warn both tasks in epoch 1, as SLURM's --signal does
        assert time.monotonic() < deadline and not job.done(), "the job never finished its first epoch"
        time.sleep(0.05)
    tasks = _task_pids(job._process.pid)
    assert len(tasks) == 2
    for pid in tasks:
        os.kill(pid, signal.SIGUSR2)
    job.results()
    events = list(runfiles.read_jsonl(warned / runfiles.EVENTS))
    assert [e["event"] for e in events] == ["started", "requeued", "interrupted", "started", "resumed", "finished"]
    resumed = next(e for e in events if e["event"] == "resumed")
    assert resumed["epoch"] == 1 and 0 < resumed["epoch_steps_done"] < 8  # inside epoch 1, at one step for both
    timing = {"time", "elapsed_s", "items_per_s", "pairs_per_s", "seconds"}
    lines = [[{k: v for k, v in line.items() if k not in timing} for line in curve(run)]
             for run in (tmp_path / "straight", warned)]  # fmt: skip
    assert lines[0] == lines[1]
    for name in (ckpt.LAST, ckpt.ENCODER):
        a, b = (ckpt.load(run / runfiles.CHECKPOINTS / name)["model"] for run in (tmp_path / "straight", warned))
        assert all(torch.equal(a[key], b[key]) for key in a), name
