"""Run the test suite and say plainly whether the SLURM integration tests ran or were skipped."""

from __future__ import annotations

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
    return subprocess.call([sys.executable, "-m", "pytest", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
