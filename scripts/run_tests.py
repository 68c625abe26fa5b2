"""Run the test suite and say plainly whether the SLURM and PostgreSQL tests will run or be skipped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def main() -> int:
    cluster = shutil.which("sbatch") and subprocess.run(
        ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True
    ).returncode == 0
    if cluster:
        print("SLURM test cluster is up: the integration tests (-m slurm) will run.", flush=True)
    else:
        print(
            "SLURM test cluster is NOT up: the integration tests (-m slurm) will be SKIPPED. "
            "Start it with `make slurm-up` (root, Debian) to run them.",
            flush=True,
        )
    if os.environ.get("IOUSSL_TEST_PG_URL"):
        print("PostgreSQL: $IOUSSL_TEST_PG_URL is set: the registry tests run on PostgreSQL too.", flush=True)
    else:
        print(
            "PostgreSQL: $IOUSSL_TEST_PG_URL is NOT set: the registry tests' PostgreSQL cases will be SKIPPED. "
            'Start one with `export IOUSSL_TEST_PG_URL="$(sudo bash scripts/postgres-local-up.sh)"`.',
            flush=True,
        )
    if os.environ.get("IOUSSL_REQUIRE_SERVICES", "") not in ("", "0"):
        print("$IOUSSL_REQUIRE_SERVICES is set: a missing SLURM cluster or PostgreSQL server FAILS its tests.")
    return subprocess.call([sys.executable, "-m", "pytest", *parallel_args(sys.argv[1:]), *sys.argv[1:]])


def parallel_args(args: list[str]) -> list[str]:
    """pytest-xdist workers: one more than the cores (the SLURM tests mostly wait), unless told otherwise.

    `--dist loadgroup` keeps the SLURM tests on one worker, one after another (tests/conftest.py marks
    them); `IOUSSL_TEST_WORKERS=0` or a `-n`/`-p no:xdist` of the caller runs everything in one process.
    """
    if any(a == "-n" or a.startswith(("-n", "--numprocesses")) or a == "no:xdist" for a in args):
        return []
    try:
        import xdist  # noqa: F401
    except ImportError:
        print("pytest-xdist is not installed: the tests run in one process (`make install` adds it).")
        return []
    workers = os.environ.get("IOUSSL_TEST_WORKERS") or str((os.cpu_count() or 1) + 1)
    if workers == "0":
        return []
    print(f"pytest-xdist: {workers} workers ($IOUSSL_TEST_WORKERS to change, 0 for one process).", flush=True)
    return ["-n", workers, "--dist", "loadgroup"]


if __name__ == "__main__":
    sys.exit(main())
