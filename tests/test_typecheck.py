"""The type checker runs in the README's test command (and so in .ci/run): mypy, configured in pyproject.toml,
must be clean on ioussl/ (issue 18.7)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_mypy_is_clean_on_the_package(repo_root, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"), "--no-error-summary"],
        cwd=repo_root, capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_finds_a_type_error(repo_root, tmp_path):
    """The check above could pass on a mypy that checks nothing: it must reject a wrong call."""
    bad = tmp_path / "bad.py"
    bad.write_text("from ioussl.config import validate_interval\nvalidate_interval('low', 1.0)\n")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"), "--follow-imports", "silent", str(bad)],
        cwd=repo_root, capture_output=True, text=True, check=False,
    )
    assert done.returncode == 1 and "arg-type" in done.stdout, done.stdout
