"""Status sync over 1,000 active jobs: one SLURM query, and the time spent beyond that query.

The registry holds 1,000 submitted runs (500 pending, 500 running, each run directory with events and
50 epochs of metrics); the scheduler's answer is a canned
``sacct --parsable2`` text for all of them (state changes for 10% of the jobs), so the number measured is
ioussl's own cost: fetch, parse, classify, apply, read run directories. Target: < 1 s beyond the query.
Run: python benchmarks/bench_sync.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ioussl.backends import slurmcmd as scheduler  # noqa: E402
from ioussl.backends.slurm import SlurmBackend  # noqa: E402
from ioussl.registry import open_registry, repo  # noqa: E402
from ioussl.registry.models import Attempt  # noqa: E402
from ioussl.status import RunStatus  # noqa: E402
from ioussl.track.sync import sync  # noqa: E402

N = 1000


def build_registry(root: Path) -> str:
    db = str(root / "registry.db")
    registry = open_registry(db, create=True)
    with registry.session() as session:
        study, _ = repo.get_or_create_study(session, "bench", None, {}, str(root / "runs"))
        for i in range(N):
            status = RunStatus.PENDING if i % 2 else RunStatus.RUNNING
            run = repo.add_run(
                session,
                study,
                id=f"r{i:05d}",
                stage="pretrain",
                group="[0.3, 0.6]",
                seed=i,
                config="{}",
                run_hash=f"h{i}",
                resources={},
                run_dir=str(root / "runs" / str(i)),
            )
            run.status = status
            session.flush()
            # What a running job has written by now: a few events and 50 epochs of metrics.
            run_dir = Path(run.run_dir)
            run_dir.mkdir(parents=True)
            (run_dir / "events.jsonl").write_text('{"event": "started", "t": 1}\n' * 3)
            (run_dir / "metrics.jsonl").write_text("".join(f'{{"epoch": {e}, "loss": 0.5}}\n' for e in range(50)))
            session.add(
                Attempt(
                    run_id=run.id, executor="slurm", job_id=str(1000 + i), status=status, job_name=f"ioussl-{run.id}"
                )
            )
    registry.dispose()
    return db


def canned_sacct() -> str:
    lines = []
    for i in range(N):
        state = "RUNNING" if i % 2 == 0 else "PENDING"
        if i % 10 == 0:
            state = "FAILED"  # 10% change state in this sync
        lines.append(
            f"{1000 + i}|{1000 + i}|ioussl-r{i:05d}|{state}|{int(state == 'FAILED')}:0|node{i % 50}|None|"
            f"2026-11-26T01:00:00|{'2026-11-26T01:05:00' if state == 'FAILED' else 'Unknown'}"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    text = canned_sacct()
    calls: list[tuple[list[str], float]] = []

    def runner(argv):
        start = time.perf_counter()
        out = text if argv[0] == "sacct" else ""
        calls.append((list(argv), time.perf_counter() - start))
        return out

    with tempfile.TemporaryDirectory() as tmp:
        db = build_registry(Path(tmp))
        registry = open_registry(db, create=False)
        start = time.perf_counter()
        with registry.session() as session:
            outcome = sync(session, study="bench", backends={"slurm": SlurmBackend(Path(tmp), runner)})
        total = time.perf_counter() - start
        registry.dispose()
    queries = [argv[0] for argv, _ in calls]
    query_s = sum(t for _, t in calls)
    print(
        f"sync over {outcome.checked} active jobs: {len(calls)} SLURM query ({', '.join(queries)}), "
        f"{len(outcome.transitions)} transitions, {total - query_s:.3f} s beyond the query (target < 1 s)"
    )
    real = scheduler.sbatch_available()
    if real:
        start = time.perf_counter()
        try:
            scheduler.query_jobs([str(1000 + i) for i in range(N)])
            print(f"the real query for {N} job ids on this machine's cluster: {time.perf_counter() - start:.3f} s")
        except Exception as exc:  # noqa: BLE001 - informational only
            print(f"real sacct not measured: {exc}")
    if total - query_s >= 1.0 or len(calls) != 1:
        raise SystemExit("FAILED: sync target missed")


if __name__ == "__main__":
    main()
