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
    return subprocess.call([sys.executable, "-m", "pytest", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
