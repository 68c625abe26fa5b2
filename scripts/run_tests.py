"""Run the test suite and say plainly whether the SLURM and PostgreSQL tests will run or be skipped.

By default two pytest processes run side by side: the SLURM integration tests (`-m slurm`) one after another
in one process, since they share one test cluster and read its queue, and the rest of the suite on
pytest-xdist workers, one per core. The SLURM tests mostly wait for the scheduler, so the two overlap well.
(pytest-xdist's `xdist_group` would do this in one process, but with pytest 9.2 and pytest-xdist 3.8 the
group never reaches the scheduler.) The workers take whole modules (`--dist loadscope`), so a module's
expensive fixtures (a store, a pretraining read by several tests) are built once, and in the order
tests/conftest.py gives them: the modules with slow tests first. Arguments are passed to both; a `-m`, `-n`
or `-p no:xdist` of the caller runs exactly one pytest, as given.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile


def main() -> int:
    say_services()
    args = sys.argv[1:]
    workers = xdist_workers(args)
    if workers is None:
        return subprocess.call([sys.executable, "-m", "pytest", *args])
    print(f"pytest-xdist: the SLURM tests in one process, the rest on {workers} worker(s) beside it "
          "($IOUSSL_TEST_WORKERS to change, 0 for one process); the SLURM tests' report follows the rest.",
          flush=True)
    with tempfile.TemporaryFile("w+") as slurm_log:
        slurm = subprocess.Popen([sys.executable, "-m", "pytest", "-m", "slurm", "-p", "no:xdist", *args],
                                 stdout=slurm_log, stderr=subprocess.STDOUT, text=True)
        rest = subprocess.call([sys.executable, "-m", "pytest", "-m", "not slurm", "-n", workers,
                                *distribution(args), *args])
        slurm_code = slurm.wait()
        slurm_log.seek(0)
        print("\n===== the SLURM integration tests (-m slurm) =====", flush=True)
        sys.stdout.write(slurm_log.read())
    return combined(rest, slurm_code)


def distribution(args: list[str]) -> list[str]:
    """Whole modules to the workers, in collection order (not xdist's largest-module-first), unless the
    caller chose a distribution."""
    if any(a.startswith("--dist") for a in args):
        return []
    return ["--dist", "loadscope", "--no-loadscope-reorder"]


def combined(*codes: int) -> int:
    """0 when every part passed or had nothing to run (pytest's 5), else the first failure's code."""
    if all(code == 5 for code in codes):
        return 5
    failed = [code for code in codes if code not in (0, 5)]
    return failed[0] if failed else 0


def xdist_workers(args: list[str]) -> str | None:
    """How many xdist workers for the non-SLURM tests, or None to run one pytest exactly as asked."""
    if any(a.startswith(("-m", "-n", "--numprocesses")) or a == "no:xdist" for a in args):
        return None
    try:
        import xdist  # noqa: F401
    except ImportError:
        print("pytest-xdist is not installed: the tests run in one process (`make install` adds it).")
        return None
    workers = os.environ.get("IOUSSL_TEST_WORKERS") or str(os.cpu_count() or 1)
    return None if workers == "0" else workers


def say_services() -> None:
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


if __name__ == "__main__":
    sys.exit(main())
