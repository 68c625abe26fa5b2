"""``ioussl run pretrain|finetune``: the same files as a job, one-line errors on bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from ioussl import runfiles
from ioussl.cli import app
from ioussl.config import RunConfig

runner = CliRunner()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict[str, str]:
    from ioussl.science.data.preprocess import preprocess_dataset
    from ioussl.science.data.synth import synth_dataset

    root = tmp_path_factory.mktemp("cli")
    synth_dataset(root / "nifti", cases=2, unlabelled=1, seed=2, size=96, slices=8)
    assert preprocess_dataset(root / "nifti", root / "store").failed == []
    split = root / "split.json"
    split.write_text(json.dumps({"train": ["SYN_Tr_0001"], "val": ["SYN_Tr_0002"]}))
    return {"store": str(root / "store"), "split": str(split)}


@pytest.mark.slow
def test_run_pretrain_then_finetune_writes_the_job_files(store, tmp_path):
    pre = tmp_path / "pre"
    args = ["run", "pretrain", "--profile", "tiny", "--run-dir", str(pre), "--store", store["store"]]
    out = runner.invoke(app, [*args, "--i-min", "0.3", "--i-max", "0.6", "--seed", "5"])
    assert out.exit_code == 0, out.output
    assert "pretrain done" in out.output
    cfg = RunConfig.from_json((pre / runfiles.CONFIG).read_text())
    assert (cfg.seed, cfg.sampler.i_min, cfg.sampler.i_max) == (5, 0.3, 0.6)
    for name in (
        runfiles.RESULT,
        runfiles.METRICS,
        runfiles.EVENTS,
        "checkpoints/last.pt",
        "checkpoints/encoder.pt",
    ):
        assert (pre / name).is_file(), name

    ft = tmp_path / "ft"
    encoder = pre / "checkpoints" / "encoder.pt"
    args = ["run", "finetune", "--profile", "tiny", "--run-dir", str(ft), "--store", store["store"]]
    out = runner.invoke(app, [*args, "--split", store["split"], "--encoder", str(encoder)])
    assert out.exit_code == 0, out.output
    assert "DSC (thesis, per slice)" in out.output and "3D DSC on the preprocessed grid" in out.output
    result = json.loads((ft / runfiles.RESULT).read_text())
    assert 0.0 <= result["dsc"] <= 1.0 and (ft / "checkpoints" / "best.pt").is_file()
    flare = result["flare"]
    assert flare["part"] == "val" and set(flare["per_case"]) == {"SYN_Tr_0002"}
    assert f"FLARE 2022 (val) DSC {flare['dsc']:.4f} NSD {flare['nsd']:.4f}" in out.output

    again = runner.invoke(app, [*args, "--split", store["split"], "--encoder", str(encoder)])
    assert again.exit_code == 0 and json.loads((ft / runfiles.RESULT).read_text()) == result


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ioussl", *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--profile", "tiny", "--config", "x.json"], "exactly one of --config"),
        (["--profile", "huge"], "unknown profile 'huge'"),
        (["--config", "missing.json"], "config file missing.json does not exist"),
        (["--profile", "tiny", "--store", "no/such/store"], "data store no/such/store does not exist"),
        (["--profile", "tiny", "--i-min", "0.7", "--i-max", "0.2"], "is reversed"),
    ],
)
def test_bad_input_gives_one_line_and_exit_1(tmp_path, args, message):
    done = _cli("run", "pretrain", "--run-dir", str(tmp_path / "run"), *args)
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and message in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "run" / runfiles.RESULT).exists()


def test_bad_encoder_checkpoint_gives_one_line(store, tmp_path):
    bad = tmp_path / "encoder.pt"
    bad.write_bytes(b"truncated")
    done = _cli("run", "finetune", "--profile", "tiny", "--run-dir", str(tmp_path / "ft"),
                "--store", store["store"], "--split", store["split"], "--encoder", str(bad))  # fmt: skip
    assert done.returncode == 1 and "encoder.pt is truncated or corrupt" in done.stderr
    assert done.stderr.count("\n") == 1 and not (tmp_path / "ft" / runfiles.RESULT).exists()


def test_a_run_dir_with_another_config_is_refused(store, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    other = RunConfig.from_json(json.dumps({"stage": "pretrain", "seed": 9, "sampler": {}, "pretrain": {}}))
    (run_dir / runfiles.CONFIG).write_text(other.to_json())
    out = runner.invoke(app, ["run", "pretrain", "--profile", "tiny", "--run-dir", str(run_dir)])
    assert out.exit_code == 1 and "already holds another config" in out.output


def test_help_lists_both_commands_and_names_the_metrics_honestly():
    out = runner.invoke(app, ["run", "--help"])
    assert out.exit_code == 0
    for command in ("pretrain", "finetune"):  # listed as commands, each with its one-line description
        assert re.search(rf"^\W*{command}\s+\w", out.output, flags=re.MULTILINE), out.output
    finetune = runner.invoke(app, ["run", "finetune", "--help"])
    assert finetune.exit_code == 0, finetune.output
    text = " ".join(finetune.output.split())  # rich wraps the description to the terminal's width
    assert "3D DSC on the preprocessed grid" in text and "FLARE 2022's DSC and NSD" in text
    assert "FLARE's 3D DSC" not in text
