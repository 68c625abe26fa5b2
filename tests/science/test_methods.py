"""DINO through the real pretraining loop: its loss falls, it resumes exactly, a fine-tune starts from its
teacher or student, and a method written in one test file runs through the same loop."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from ioussl import config, profiles, runfiles
from ioussl.config import DinoConfig, RunConfig
from ioussl.science.models.swin import build_swin_unetr
from ioussl.science.train import checkpoint as ckpt
from ioussl.science.train import pretrain
from ioussl.science.train.pretrain import run_pretrain
from ioussl.science.train.transfer import load_encoder

# Learning fast enough to see in 4 tiny epochs: no warm-up, a higher lr; the rest is main_dino.py's.
FAST = DinoConfig(out_dim=256, base_lr=1e-3, warmup_epochs=0)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict[str, str]:
    from ioussl.science.data.preprocess import preprocess_dataset
    from ioussl.science.data.synth import synth_dataset

    root = tmp_path_factory.mktemp("dino-synthetic")
    synth_dataset(root / "nifti", cases=2, unlabelled=1, seed=0, size=96, slices=10)
    assert preprocess_dataset(root / "nifti", root / "store").failed == []
    split = root / "split.json"
    split.write_text(json.dumps({"train": ["SYN_Tr_0001"], "val": ["SYN_Tr_0002"]}))
    return {"store": str(root / "store"), "split": str(split)}


def dino_config(store: str, epochs: int = 4, dino: DinoConfig = FAST) -> RunConfig:
    cfg = profiles.tiny("pretrain", store=store)
    return dataclasses.replace(
        cfg, pretrain=dataclasses.replace(cfg.pretrain, method="dino", dino=dino, epochs=epochs, steps_per_epoch=3)
    ).validate()


@pytest.fixture(scope="module")
def dino_run(synthetic, tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("dino-run")
    return run_dir, run_pretrain(dino_config(synthetic["store"]), run_dir)


@pytest.mark.slow
def test_tiny_dino_pretraining_loss_falls_and_reports_collapse_statistics(dino_run):
    run_dir, summary = dino_run
    lines = list(runfiles.read_jsonl(run_dir / runfiles.METRICS))
    assert [r["epoch"] for r in lines] == [0, 1, 2, 3] and summary["steps"] == 12
    assert lines[-1]["loss"] < lines[0]["loss"]
    for line in lines:
        assert 0.0 <= line["collapse"] <= 1.0
        assert 0.0 <= line["teacher_entropy"] <= math.log(FAST.out_dim) + 1e-9
        assert 0.0 <= line["teacher_kl_uniform"] <= math.log(FAST.out_dim) + 1e-9
        assert line["teacher_temp"] == 0.04 and 0.9995 <= line["teacher_momentum"] <= 1.0
    assert lines[0]["teacher_momentum"] < lines[-1]["teacher_momentum"]  # the cosine towards 1
    assert lines[0]["weight_decay"] < lines[-1]["weight_decay"]  # the cosine from 0.04 towards 0.4
    assert summary["final_collapse"] == lines[-1]["collapse"]


@pytest.mark.slow
def test_dino_checkpoints_hold_teacher_centre_and_both_encoders(dino_run):
    run_dir, _ = dino_run
    last = ckpt.load(run_dir / runfiles.CHECKPOINTS / ckpt.LAST)["model"]
    encoder = ckpt.load(run_dir / runfiles.CHECKPOINTS / ckpt.ENCODER)
    assert last["center"].shape == (1, FAST.out_dim) and last["center"].abs().sum() > 0  # the centre moved
    teacher, student = (_under(last, f"{name}.backbone.swin.") for name in ("teacher", "student"))
    assert teacher.keys() == encoder["model"].keys() == encoder["student"].keys()
    assert all(torch.equal(encoder["model"][k], teacher[k]) for k in teacher)
    assert all(torch.equal(encoder["student"][k], student[k]) for k in student)
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)  # the EMA lags the student
    assert encoder["method"] == "dino"


@pytest.mark.slow
@pytest.mark.parametrize("init_from", ["teacher", "student"])
def test_a_finetune_loads_the_chosen_dino_encoder(dino_run, init_from):
    run_dir, _ = dino_run
    encoder = ckpt.load(run_dir / runfiles.CHECKPOINTS / ckpt.ENCODER)
    wanted = encoder["model" if init_from == "teacher" else "student"]
    cfg = profiles.tiny("finetune")
    net = build_swin_unetr(cfg.model, 0.0)
    report = load_encoder(net, run_dir / runfiles.CHECKPOINTS / ckpt.ENCODER, cfg.model, init_from=init_from)
    assert report["matched"] == len(wanted) and report["missing"] == []
    assert all(torch.equal(value, wanted[key]) for key, value in net.swinViT.state_dict().items())
    # the resume checkpoint serves as well: its teacher and student under their prefixes
    net = build_swin_unetr(cfg.model, 0.0)
    load_encoder(net, run_dir / runfiles.CHECKPOINTS / ckpt.LAST, cfg.model, init_from=init_from)
    assert all(torch.equal(value, wanted[key]) for key, value in net.swinViT.state_dict().items())


def _under(state: dict, prefix: str) -> dict:
    return {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}


def _curve(run_dir: Path) -> list[dict]:
    timing = {"time", "elapsed_s", "items_per_s", "pairs_per_s", "seconds"}
    return [{k: v for k, v in r.items() if k not in timing} for r in runfiles.read_jsonl(run_dir / runfiles.METRICS)]


class Interrupted(Exception):
    """Stands in for SLURM preempting the job."""


@pytest.mark.slow
def test_interrupted_dino_pretraining_resumes_bit_for_bit(synthetic, tmp_path, monkeypatch):
    cfg = dino_config(synthetic["store"], epochs=2)
    straight = run_pretrain(cfg, tmp_path / "straight")
    real, calls = pretrain.train_one_epoch_pretrain, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Interrupted
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(pretrain, "train_one_epoch_pretrain", flaky)
        with pytest.raises(Interrupted):
            run_pretrain(cfg, tmp_path / "resumed")
    resumed = run_pretrain(cfg, tmp_path / "resumed")
    _stop_in_the_middle_of_epoch_1(cfg, tmp_path / "stopped", monkeypatch)
    stopped = run_pretrain(cfg, tmp_path / "stopped")
    for run, result in (("resumed", resumed), ("stopped", stopped)):
        assert _curve(tmp_path / "straight") == _curve(tmp_path / run)  # teacher entropy and KL too
        assert result["final_loss"] == straight["final_loss"]
        for name in (ckpt.LAST, ckpt.ENCODER):
            a, b = (ckpt.load(tmp_path / side / runfiles.CHECKPOINTS / name) for side in ("straight", run))
            assert a["model"].keys() == b["model"].keys()
            assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), name  # teacher, centre too


def _stop_in_the_middle_of_epoch_1(cfg, run_dir: Path, monkeypatch) -> None:
    """Run ``cfg`` with a stop requested during step 4 (epoch 1 holds steps 3-5): it must stop after step 4."""
    from ioussl.science.train import stopping

    real_feed = pretrain.pretrain_feed

    def requeue():  # what the job bridge's deferred action does: requeue and end the process
        raise Interrupted

    def requesting_feed(cfg, runtime):
        feed = real_feed(cfg, runtime)

        def fed(batch, epoch, step):
            if step == 4:
                stopping.request()
            return feed(batch, epoch, step)

        return fed

    stopping.arm(requeue)  # as the job bridge arms it
    try:
        with monkeypatch.context() as patch:
            patch.setattr(pretrain, "pretrain_feed", requesting_feed)
            with pytest.raises(Interrupted):
                run_pretrain(cfg, run_dir)
        assert not stopping.pending()
    finally:
        stopping.disarm()
    stopped = ckpt.load(run_dir / runfiles.CHECKPOINTS / ckpt.LAST)
    assert (stopped["epoch"], stopped["step"], stopped["part"]["done"]) == (1, 5, 2)
    assert stopped["part"]["method"]["counted"] == 2  # DINO's epoch statistics so far travel with it


def test_a_method_in_one_test_file_runs_through_the_real_loop(synthetic, tmp_path, monkeypatch):
    import toymethod  # tests/science/toymethod.py: the whole method

    from ioussl.science.train import methods

    monkeypatch.setattr(config, "PRETRAIN_METHODS", [*config.PRETRAIN_METHODS])
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))
    methods.register("toy")(toymethod.ToyMethod)
    cfg = profiles.tiny("pretrain", store=synthetic["store"])
    cfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, method="toy", epochs=1)).validate()
    summary = run_pretrain(cfg, tmp_path / "toy")
    lines = list(runfiles.read_jsonl(tmp_path / "toy" / runfiles.METRICS))
    assert len(lines) == 1 and math.isfinite(lines[0]["loss"]) and lines[0]["toy_steps"] == 3
    net = build_swin_unetr(cfg.model, 0.0)
    assert load_encoder(net, Path(summary["checkpoint"]), cfg.model)["missing"] == []


def test_the_thesis_dino_checkpoint_loads_as_an_encoder(tmp_path):
    """main_dino.py saved ``student[0].model.state_dict()``: the bare Swin weights, keys unprefixed."""
    cfg = profiles.tiny("finetune")
    torch.manual_seed(3)
    swin = build_swin_unetr(cfg.model, 0.0).swinViT
    with torch.no_grad():
        for param in swin.parameters():
            param.add_(1.0)  # unmistakably not a fresh initialisation
    path = tmp_path / "test_ssl.pt"
    torch.save(swin.state_dict(), path)
    net = build_swin_unetr(cfg.model, 0.0)
    report = load_encoder(net, path, cfg.model)
    assert report["matched"] == len(swin.state_dict()) and report["missing"] == [] and report["unexpected"] == []
    assert all(torch.equal(value, swin.state_dict()[key]) for key, value in net.swinViT.state_dict().items())


@pytest.mark.slow
def test_a_tiny_methods_study_runs_its_dino_chain_on_cpu(synthetic, tmp_path, repo_root):
    """jobs/methods.toml shrunk to CPU size (C 12, 64² crops, 2 x 2 steps, one interval and seed): the planner's
    DINO pretrain and its fine-tune run as jobs do (config.json, ``run_stage``, the parent's encoder.pt), and
    each job computes the run id the planner gave it, with results the ingest accepts."""
    from ioussl.plan.expand import expand_grid
    from ioussl.plan.study import load_study, parse_study
    from ioussl.submit.entrypoint import run_stage
    from ioussl.track.resultcheck import check_result

    raw = load_study(repo_root / "jobs" / "methods.toml").raw
    tiny = {
        **raw,
        "study": {"name": "methods-tiny", "runs_dir": str(tmp_path / "runs")},
        "data": {"store": synthetic["store"], "split": synthetic["split"], "crop": 64, "num_workers": 0},
        "model": {"feature_size": 12},
        "runtime": {"device": "cpu", "precision": "fp32", "channels_last": False, "cudnn_benchmark": False},
        "pretrain": {"seeds": [1], "batch_size": 8, "epochs": 2, "steps_per_epoch": 2, "amp": False,
                     "dino": {"out_dim": 256, "base_lr": 1e-3, "warmup_epochs": 0}},
        "finetune": {"seeds": [1], "batch_size": 2, "epochs": 1, "steps_per_epoch": 1, "warmup_epochs": 0,
                     "eval_every": 1, "eval_every_epoch_from": 0, "sw_batch_size": 16, "max_val_slices": 2,
                     "amp": False},
        "intervals": [{"i_min": 0.3, "i_max": 0.6}],
    }  # fmt: skip
    runs = expand_grid(parse_study(tiny, path=None, base_dir=repo_root / "jobs"))
    assert [(r.stage, r.point["pretrain.method"]) for r in runs] == [
        ("pretrain", "simsiam"), ("finetune", "simsiam"), ("pretrain", "dino"), ("finetune", "dino")]  # fmt: skip
    pre, ft = (r for r in runs if r.point["pretrain.method"] == "dino")
    assert ft.parent_key == pre.key and ft.config.finetune.init_from == "teacher"
    for run in (pre, ft):
        (tmp_path / run.key).mkdir()
        runfiles.atomic_write_text(tmp_path / run.key / runfiles.CONFIG, run.config.to_json())
    pre_result = run_stage(tmp_path / pre.key)
    encoder = tmp_path / pre.key / runfiles.CHECKPOINTS / ckpt.ENCODER
    ft_result = run_stage(tmp_path / ft.key, encoder)
    assert (pre_result["run_hash"], ft_result["run_hash"]) == (pre.run_hash, ft.run_hash)
    for result, run in ((pre_result, pre), (ft_result, ft)):
        check_result(json.loads(json.dumps(result)), stage=run.stage, config_hashes={ckpt.config_hash(run.config)})
    teacher = ckpt.load(encoder)["model"]
    assert ft_result["encoder"]["matched"] == len(teacher) and ft_result["encoder"]["missing"] == []
