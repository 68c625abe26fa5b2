"""The job entry point: result.json only on success, events, idempotence, submitit round trip."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from ioussl import profiles, runfiles
from ioussl.config import RunConfig, run_hash
from ioussl.errors import ConfigError, DataError, TrainingError
from ioussl.submit.entrypoint import RunJob, config_hash, run_stage


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict[str, str]:
    from ioussl.science.data.preprocess import preprocess_dataset
    from ioussl.science.data.synth import synth_dataset

    root = tmp_path_factory.mktemp("entry")
    synth_dataset(root / "nifti", cases=2, unlabelled=1, seed=1, size=96, slices=8)
    assert preprocess_dataset(root / "nifti", root / "store").failed == []
    split = root / "split.json"
    split.write_text(json.dumps({"train": ["SYN_Tr_0001"], "val": ["SYN_Tr_0002"]}))
    return {"store": str(root / "store"), "split": str(split)}


def _prepare(run_dir: Path, cfg: RunConfig) -> Path:
    runfiles.atomic_write_text(run_dir / runfiles.CONFIG, cfg.to_json())
    return run_dir


def _events(run_dir: Path) -> list[str]:
    return [e["event"] for e in runfiles.read_jsonl(run_dir / runfiles.EVENTS)]


@pytest.mark.slow
def test_pretrain_then_finetune_jobs_write_results_and_are_idempotent(store, tmp_path):
    pre_cfg = profiles.tiny("pretrain", store=store["store"])
    pre_dir = _prepare(tmp_path / "pre", pre_cfg)
    pre = RunJob(str(pre_dir))()
    on_disk = json.loads((pre_dir / runfiles.RESULT).read_text())
    assert on_disk == pre and pre["config_hash"] == config_hash(pre_cfg)
    assert pre["run_hash"] == run_hash(pre_cfg, None)
    assert {"versions", "host", "device"} <= set(pre["provenance"])
    assert _events(pre_dir) == ["started", "finished"]
    import torch

    encoder_payload = torch.load(pre_dir / runfiles.CHECKPOINTS / "encoder.pt", weights_only=True)
    assert encoder_payload["config_hash"] == pre["config_hash"]  # one hash for files and results

    ft_cfg = profiles.tiny("finetune", store=store["store"], split=store["split"])
    ft_dir = _prepare(tmp_path / "ft", ft_cfg)
    encoder = pre_dir / runfiles.CHECKPOINTS / "encoder.pt"
    job = pickle.loads(pickle.dumps(RunJob(str(ft_dir), str(encoder))))  # submitit pickles the callable
    result = job()
    assert 0.0 <= result["dsc"] <= 1.0 and result["encoder"]["matched"] > 0
    assert result["run_hash"] == run_hash(ft_cfg, pre["run_hash"])  # the parent is the pretraining run
    mtime = (ft_dir / runfiles.RESULT).stat().st_mtime_ns
    assert job() == result  # done: returned, not retrained
    assert (ft_dir / runfiles.RESULT).stat().st_mtime_ns == mtime
    assert _events(ft_dir) == ["started", "finished"]


def test_failure_is_recorded_and_leaves_no_result(store, tmp_path):
    cfg = profiles.tiny("finetune", store=store["store"], split=store["split"])
    run_dir = _prepare(tmp_path, cfg)
    with pytest.raises(TrainingError, match="nope.pt does not exist"):
        run_stage(run_dir, tmp_path / "nope.pt")
    assert not (run_dir / runfiles.RESULT).exists()
    failed = list(runfiles.read_jsonl(run_dir / runfiles.EVENTS))[-1]
    assert failed["event"] == "failed" and "nope.pt" in failed["error"]


def test_missing_or_invalid_config_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="config.json does not exist"):
        run_stage(tmp_path)
    (tmp_path / runfiles.CONFIG).write_text('{"stage": "pretrain", "seed": 0, "colour": 1}')
    with pytest.raises(ConfigError, match="unknown key"):
        run_stage(tmp_path)
    (tmp_path / runfiles.CONFIG).write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        run_stage(tmp_path)


def test_checkpoint_requeues_the_same_callable(tmp_path):
    job = RunJob(str(tmp_path), None)
    delayed = job.checkpoint()
    assert delayed.function is job
    assert _events(tmp_path) == ["requeued"]


def test_entrypoint_module_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, ioussl.submit.entrypoint; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_runs_under_submitit_and_records_the_job(tmp_path, monkeypatch):
    import submitit

    monkeypatch.setattr("pdb.post_mortem", lambda *args, **kwargs: None)  # the debug executor would stop here
    cfg = profiles.tiny("pretrain", store=str(tmp_path / "no-store"))
    run_dir = _prepare(tmp_path / "run", cfg)
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="debug")
    job = executor.submit(RunJob(str(run_dir)))
    with pytest.raises(DataError, match="no-store does not exist"):
        job.result()
    started, failed = list(runfiles.read_jsonl(run_dir / runfiles.EVENTS))
    assert started["event"] == "started" and started["job_id"] == job.job_id
    assert failed["event"] == "failed" and not (run_dir / runfiles.RESULT).exists()


class Requeued(BaseException):
    """Stands in for submitit's handler of the warning signal, which requeues the job and exits."""


def _requeue(signum, frame):
    raise Requeued


def test_the_warning_s_grace_is_half_the_delay_the_job_was_given():
    from ioussl.submit.entrypoint import stop_grace_s

    assert stop_grace_s({"IOUSSL_SIGNAL_DELAY_S": "120"}) == 60.0
    assert stop_grace_s({"SUBMITIT_LOCAL_SIGNAL_DELAY_S": "30"}) == 15.0  # submitit's local executor
    assert stop_grace_s({"IOUSSL_SIGNAL_DELAY_S": "soon"}) == 60.0 == stop_grace_s({})


def test_a_warning_with_no_step_boundary_in_its_grace_requeues_anyway(monkeypatch):
    import os
    import signal
    import time

    from ioussl.science.train import stopping
    from ioussl.submit.entrypoint import stops_at_step_boundaries

    monkeypatch.setenv("IOUSSL_SIGNAL_DELAY_S", "1")  # 0.5 s to reach a step boundary
    previous = signal.signal(signal.SIGUSR2, _requeue)
    try:
        with pytest.raises(Requeued), stops_at_step_boundaries():
            assert signal.getsignal(signal.SIGUSR2) is not _requeue  # deferred while the stage runs
            os.kill(os.getpid(), signal.SIGUSR2)
            assert stopping.pending()  # a stop is requested, not carried out
            time.sleep(0.2)
            assert stopping.pending()
            time.sleep(5)  # validation, say: no step boundary; the alarm requeues after 0.5 s
        assert signal.getsignal(signal.SIGUSR2) is _requeue and not stopping.pending()
        with stops_at_step_boundaries():
            pass  # without a warning nothing happens, and the handler is submitit's again afterwards
        assert signal.getsignal(signal.SIGUSR2) is _requeue
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_outside_submitit_the_warning_signal_keeps_its_meaning():
    import signal

    from ioussl.submit.entrypoint import stops_at_step_boundaries

    previous = signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    try:
        with stops_at_step_boundaries():
            assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGUSR2, previous)
