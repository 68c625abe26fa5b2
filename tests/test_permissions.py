"""Permissions: files written through the atomic helper follow the umask (a group can share a store);
folders that hold what jobs execute are never group- or world-writable, whatever the umask."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import pytest

from ioussl import runfiles


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_respect_the_umask(tmp_path, mask, expected):
    with umask(mask):
        runfiles.atomic_write_json(tmp_path / "store.json", {"a": 1})
        runfiles.atomic_write_text(tmp_path / "sub" / "config.json", "{}")
    assert mode(tmp_path / "store.json") == expected and mode(tmp_path / "sub" / "config.json") == expected
    assert not list(tmp_path.rglob(".*.tmp"))


def test_private_dirs_lose_group_and_world_write_even_under_umask_000(tmp_path):
    with umask(0):
        runfiles.make_private_dir(tmp_path / "runs" / "_submitit")
        assert mode(tmp_path / "runs") == 0o755 and mode(tmp_path / "runs" / "_submitit") == 0o755
        (tmp_path / "loose").mkdir()
        assert mode(tmp_path / "loose") == 0o777
        runfiles.make_private_dir(tmp_path / "loose")
        assert mode(tmp_path / "loose") == 0o755
        with runfiles.private_dirs():
            (tmp_path / "inside").mkdir()
            (tmp_path / "inside" / "job.pkl").write_bytes(b"x")
        assert mode(tmp_path / "inside") == 0o755 and mode(tmp_path / "inside" / "job.pkl") == 0o644
        (tmp_path / "after").mkdir()
        assert mode(tmp_path / "after") == 0o777  # the umask is restored


LOCAL_STUDY = """
[study]
name = "perm"
runs_dir = "runs"
[data]
store = "store"
crop = 64
[model]
feature_size = 12
[finetune]
baseline_seeds = [1]
[resources.finetune]
gpus = 0
time_min = 5
"""


def test_a_submission_under_umask_000_leaves_nothing_group_or_world_writable(tmp_path):
    from ioussl.backends.local import LocalBackend
    from ioussl.plan.service import plan_grid
    from ioussl.submit import service as jobservice
    from ioussl.submit import workload

    (tmp_path / "study.toml").write_text(LOCAL_STUDY)
    db = str(tmp_path / "registry.db")
    with umask(0):
        plan_grid(tmp_path / "study.toml", db, check_data=False)
        outcome = jobservice.submit(db, "perm", backend=LocalBackend(tmp_path / "runs" / "_submitit"),
                                    factory=workload.make_job)
    assert outcome.sbatch_calls == 1
    runs = tmp_path / "runs"
    pickles = list(runs.rglob("*.pkl"))
    assert pickles and (runs / "_submitit").is_dir()
    configs = list(runs.rglob("config.json"))
    assert configs  # what the job reads: its frozen config (0666 under umask 000 before)
    for path in [runs, *runs.rglob("*")]:
        if path.is_dir() or path in pickles or path in configs:
            assert mode(path) & 0o022 == 0, f"{path} is {oct(mode(path))}"
