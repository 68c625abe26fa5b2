"""The rank notion: only the main process of a job writes run files, checkpoints and progress.

A follower rank (rank 1 of 2 here, set through ``runtime.current_ranks``, without a process group: each
trains alone on its half of every batch) runs the real ``run_pretrain`` and must leave its run directory
untouched, also when it resumes; rank 0 of the same config writes it all. (tests/science/test_ddp.py runs
real two-process jobs.)
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from ioussl import profiles, runfiles
from ioussl.config import RuntimeConfig
from ioussl.errors import ConfigError
from ioussl.science import runtime as runtime_module
from ioussl.science.runtime import Ranks, resolve_runtime
from ioussl.science.train import checkpoint as ckpt
from ioussl.science.train.pretrain import run_pretrain
from ioussl.science.train.progress import Progress


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    from ioussl.science.data.preprocess import preprocess_dataset
    from ioussl.science.data.synth import synth_dataset

    root = tmp_path_factory.mktemp("ranks")
    synth_dataset(root / "nifti", cases=1, unlabelled=1, seed=0, size=96, slices=10)
    assert preprocess_dataset(root / "nifti", root / "store").failed == []
    return str(root / "store")


def _files(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) if run_dir.exists() else []


def test_without_distributed_a_process_is_rank_0_of_1():
    runtime = resolve_runtime(RuntimeConfig(device="cpu"), amp=False)
    assert (runtime.rank, runtime.world_size, runtime.is_main) == (0, 1, True)
    assert not Ranks(rank=1, world_size=2).is_main
    with pytest.raises(ConfigError, match="does not fit world size 2"):
        Ranks(rank=2, world_size=2)


def test_a_follower_s_progress_prints_nothing(capsys):
    for main in (True, False):
        progress = Progress("pretrain", epochs=2, steps_per_epoch=3, main=main)
        progress.start(0, {"device": "cpu"}, resumed=False)
        line = progress.line(0, 3, 10.0, loss=0.5)
        progress.end("done")
        assert line["loss"] == 0.5  # the line is still built: the caller decides where it goes
        printed = capsys.readouterr().out
        assert (printed.count("[ioussl pretrain]") == 3) is main, printed


@pytest.mark.slow
def test_a_non_main_rank_writes_nothing_also_when_it_resumes(store, tmp_path, monkeypatch, capsys):
    tiny = profiles.tiny("pretrain", store=store)
    # The global batch of 4: 2 pairs per rank (batch norm needs two).
    cfg = dataclasses.replace(tiny, pretrain=dataclasses.replace(tiny.pretrain, batch_size=4, steps_per_epoch=1))
    monkeypatch.setattr(runtime_module, "current_ranks", lambda: Ranks(rank=0, world_size=2))
    main = run_pretrain(cfg, tmp_path / "main")
    assert {"metrics.jsonl", "checkpoints/last.pt", "checkpoints/encoder.pt"} <= set(_files(tmp_path / "main"))
    assert "[ioussl pretrain]" in capsys.readouterr().out

    monkeypatch.setattr(runtime_module, "current_ranks", lambda: Ranks(rank=1, world_size=2))
    follower = run_pretrain(cfg, tmp_path / "follower")
    assert follower == {"stage": "pretrain", "rank": 1, "world_size": 2}
    assert _files(tmp_path / "follower") == []
    assert capsys.readouterr().out == ""

    # Resuming reads last.pt but neither truncates the metrics past it nor notes a "resumed" event.
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "main", resumed)
    stale = {"epoch": 7, "loss": 0.1}
    runfiles.append_jsonl(resumed / runfiles.METRICS, stale)
    before = {name: (resumed / name).read_bytes() for name in _files(resumed) if (resumed / name).is_file()}
    run_pretrain(cfg, resumed)
    after = {name: (resumed / name).read_bytes() for name in _files(resumed) if (resumed / name).is_file()}
    assert after == before
    assert json.loads((resumed / runfiles.METRICS).read_text().splitlines()[-1]) == stale
    payload = ckpt.load(resumed / runfiles.CHECKPOINTS / ckpt.LAST)
    assert payload["epoch"] == cfg.pretrain.epochs - 1 and isinstance(payload["model"], dict)
    assert main["steps"] == payload["step"] and torch.isfinite(torch.tensor(main["final_loss"]))
