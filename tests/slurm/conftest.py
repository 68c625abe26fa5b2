"""SLURM integration tests: they need the local test cluster (scripts/slurm-local-up.sh).

Checked once per session; without a cluster every test here is skipped with the reason, and
scripts/run_tests.py says so plainly at the start of `make test`. Under $IOUSSL_REQUIRE_SERVICES=1
(.ci/run) a missing cluster fails them instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.slurm.helpers import StudyRig


def _cluster_problem() -> str | None:
    for command in ("sbatch", "sinfo", "squeue", "scancel"):
        if shutil.which(command) is None:
            return f"{command} is not on PATH"
    try:
        answer = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 10 s"
    if answer.returncode != 0:
        return f"sinfo failed: {answer.stderr.strip()}"
    if not any(
        state.strip().rstrip("*~#!%$@^-") in ("idle", "mix", "alloc", "comp", "resv", "plnd")
        for state in answer.stdout.split()
    ):
        return f"no usable node (sinfo states: {answer.stdout.split()})"
    return None


_PROBLEM: list[str | None] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slurm_items = [item for item in items if item.get_closest_marker("slurm")]
    if not slurm_items:
        return
    if not _PROBLEM:
        _PROBLEM.append(_cluster_problem())
    if _PROBLEM[0] and not _required():
        skip = pytest.mark.skip(reason=f"SLURM test cluster not up ({_PROBLEM[0]}): run `make slurm-up`")
        for item in slurm_items:
            item.add_marker(skip)


def _required() -> bool:
    return os.environ.get("IOUSSL_REQUIRE_SERVICES", "") not in ("", "0")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Services required ($IOUSSL_REQUIRE_SERVICES=1, as in .ci/run): a missing cluster fails the test."""
    if item.get_closest_marker("slurm") and _PROBLEM and _PROBLEM[0] and _required():
        pytest.fail(f"the SLURM test cluster is required but not up ({_PROBLEM[0]})", pytrace=False)


@pytest.fixture
def rig(tmp_path):
    """A fresh registry and tiny study in tmp_path; every job it submitted is cancelled afterwards."""
    study = StudyRig(tmp_path)
    yield study
    study.cleanup()
