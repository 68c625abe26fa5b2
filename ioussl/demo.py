"""The demo: the thesis' study end to end at tiny size on this machine (`make demo` / `ioussl demo`).

Synthesise an abdomen-like CT dataset -> preprocess it into a slice store -> split its labelled cases ->
plan the scaled-down thesis grid (jobs/demo.toml) -> submit it on the embedded default (submitit's local
executor; SLURM if asked) -> sync -> report. Every step reuses what exists, so a second run finishes
quickly and an interrupted run resumes. It composes the data layer and the orchestrator, so it sits above
both (science and orchestration are imported lazily, step by step).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ioussl.errors import ConfigError
from ioussl.runfiles import atomic_write_text

if TYPE_CHECKING:
    from ioussl.registry.repo import RunRecord

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STUDY = REPO / "jobs" / "demo.toml"

Say = Callable[[str], None]


@dataclass(frozen=True)
class DemoSettings:
    study_file: Path = DEFAULT_STUDY
    labelled: int = 6
    unlabelled: int = 4
    size: int = 160  # in-plane voxels
    slices: int = 16
    spacing_mm: float = 1.1  # a small body (13-18 cm after resampling to 1 mm): still room for disjoint 64² crops
    seed: int = 0
    executor: str = "auto"  # SLURM where sbatch exists, else this machine (and it says so)
    max_parallel: int = 2


def run_demo(settings: DemoSettings, db: str | None, say: Say, progress: Callable | None = None):
    """Run (or resume) the demo study; returns the report outcome."""
    from ioussl.plan.study import load_study

    if not settings.study_file.is_file():
        raise ConfigError(f"demo study not found: {settings.study_file} (run the demo from an ioussl checkout)")
    spec = load_study(settings.study_file)
    store = spec.resolve(spec.data.store).resolve()
    split = spec.resolve(spec.data.split).resolve() if spec.data.split else None
    workdir = store.parent
    db = db or str(workdir / "registry.db")
    raw = workdir / "raw"
    _synthesise(raw, settings, say)
    crop = max([spec.data.crop, *spec.sweep.values().get("data.crop", [])])
    cubes = 3 in (spec.model.spatial_dims, *spec.sweep.values().get("model.spatial_dims", []))
    _preprocess(raw, store, crop, say, depth=crop if cubes else 0)
    if split is not None:
        _split(store, split, settings, say)
    return _run_study(settings, db, say, progress, plot_dir=workdir / "plots")


def _synthesise(raw: Path, settings: DemoSettings, say: Say) -> None:
    marker = raw / ".complete"
    if marker.exists():
        say(f"1/5 synthetic CT: reusing {raw}")
        return
    from ioussl.science.data.synth import synth_dataset

    say(f"1/5 synthetic CT: writing {settings.labelled} labelled + {settings.unlabelled} unlabelled cases")
    shutil.rmtree(raw, ignore_errors=True)  # a half-written dataset from an interrupted run
    synth_dataset(raw, settings.labelled, settings.unlabelled, seed=settings.seed, size=settings.size,
                  slices=settings.slices, spacing_mm=settings.spacing_mm)
    atomic_write_text(marker, "ok\n")


def _preprocess(raw: Path, store: Path, crop: int, say: Say, depth: int = 0) -> None:
    """The slice store, every slice padded to at least ``crop`` (the largest a study's sweep asks for), and
    every volume to ``depth`` slices (a 3D study's cube side; 0 for 2D)."""
    from ioussl.science.data.preprocess import PreprocessSettings, preprocess_dataset

    report = preprocess_dataset(raw, store, PreprocessSettings(min_size=crop, min_depth=depth), workers=2)
    say(f"2/5 preprocessing: {len(report.done)} volume(s) done, {len(report.skipped)} reused -> {store}")
    if report.failed:
        raise ConfigError(f"preprocessing failed for {', '.join(case for case, _ in report.failed)}")


def _split(store: Path, split: Path, settings: DemoSettings, say: Say) -> None:
    if split.exists():
        say(f"3/5 split: reusing {split}")
        return
    from ioussl.science.data.splits import make_split, split_to_json
    from ioussl.science.data.store import SliceStore

    cases = SliceStore(store).labelled_cases()
    n_test = 1 if len(cases) >= 4 else 0
    n_val = max(1, (len(cases) - n_test) // 3)
    parts = make_split(cases, len(cases) - n_val - n_test, n_val, n_test, seed=settings.seed)
    atomic_write_text(split, split_to_json(parts, "demo split: selection on val, reporting on test too"))
    say(f"3/5 split: {len(parts['train'])} train / {len(parts['val'])} val / {len(parts.get('test', []))} test")


def _run_study(settings: DemoSettings, db: str, say: Say, progress: Callable | None, plot_dir: Path):
    from ioussl.plan.service import plan_grid
    from ioussl.report.service import report_study
    from ioussl.track.listing import status_rows

    planned = plan_grid(settings.study_file, db)
    say(f"4/5 plan: {len(planned.new)} new run(s), {len(planned.existing)} already planned (registry {db})")
    name = planned.study
    if settings.executor == "auto":
        from ioussl.backends.base import resolve_executor

        executor, why_local = resolve_executor("auto")
        settings = replace(settings, executor=executor)
        say(f"    {why_local}: running on this machine with the local executor" if why_local else
            "    the SLURM controller answers: submitting to it")
    from ioussl.submit.interrupts import StopRequest, stop_on_signals

    startable = None
    # Ctrl-C or SIGTERM from here on: the submit stops its jobs, records them INTERRUPTED (resumed next time).
    with stop_on_signals(StopRequest()) as stop:
        while True:  # jobs of an interrupted demo may still run: wait for them, then start what they unlocked
            _submit(db, name, settings, progress, stop)
            _wait_while_active(db, name, progress, stop=stop)
            previous, startable = startable, _startable(status_rows(db, study=name))
            if not startable or startable == previous:
                break
        retried = _retry_lost(db, name, settings, say)
        if retried:
            _submit(db, name, settings, progress, stop)
            _wait_while_active(db, name, progress, stop=stop)
    if progress is not None:
        progress(status_rows(db, study=name))
    say(f"5/5 runs finished{f' ({retried} retried after an interruption)' if retried else ''}; report:")
    outcome = report_study(db, name, plot_dir=plot_dir)
    for group, runs in outcome.pretrain_losses.items():
        first, last = (sum(points[i][1] for points in runs) / len(runs) for i in (0, -1))
        say(f"    pretraining loss {group}: {first:+.3f} (epoch 1) -> {last:+.3f} (epoch {runs[0][-1][0] + 1})")
    return outcome


def _submit(db: str, study: str, settings: DemoSettings, progress: Callable | None, stop=None) -> None:
    """Submit the study's planned (and interrupted) runs; the local executor blocks until they end, drawing
    progress meanwhile. ``stop`` (a StopRequest) ends it cleanly: see :mod:`ioussl.submit.interrupts`."""
    from ioussl.submit import service as jobservice
    from ioussl.track.listing import status_rows

    worker = _Submitter(lambda: jobservice.submit(db, study, executor=settings.executor,
                                                  max_parallel=settings.max_parallel, stop=stop,
                                                  command="demo"))
    worker.start()
    while worker.is_alive():
        if progress is not None:
            progress(status_rows(db, study=study))
        worker.join(timeout=2.0)
    if worker.error is not None:
        raise worker.error


def _startable(records: Sequence[RunRecord]) -> frozenset[str]:
    """Planned runs that could start now: no pretrain, or a completed one."""
    from ioussl.status import RunStatus

    done = {r.id for r in records if r.status == RunStatus.COMPLETED}
    return frozenset(r.id for r in records
                     if r.status.awaits_submit() and (r.parent_id is None or r.parent_id in done))


def _wait_while_active(db: str, study: str, progress: Callable | None, poll_s: float = 5.0, stop=None) -> None:
    """Sync until no run of the study is queued or running (SLURM's chain, or local jobs of an earlier demo)."""
    from ioussl.errors import Interrupted
    from ioussl.submit import service as jobservice
    from ioussl.track.listing import status_rows

    while True:
        if stop is not None and stop.is_set():
            raise Interrupted(f"stopped by {stop.signal_name} while waiting for the study's jobs (they go on)")
        jobservice.sync_studies(db, study)
        records = status_rows(db, study=study)
        if progress is not None:
            progress(records)
        if not any(record.status.is_active() for record in records):
            return
        if stop is not None:
            stop.wait(poll_s)
        else:
            time.sleep(poll_s)


def _retry_lost(db: str, study: str, settings: DemoSettings, say: Say) -> int:
    """Runs whose job died with an interrupted demo come back LOST: run them again, once."""
    from ioussl.status import RunStatus
    from ioussl.submit import service as jobservice
    from ioussl.track.listing import status_rows

    if not status_rows(db, study=study, statuses=[RunStatus.LOST]):
        return 0
    outcome = jobservice.retry(db, study, statuses=(RunStatus.LOST,), executor=settings.executor)
    say(f"retried {len(outcome.job_ids)} run(s) lost by an earlier interruption")
    return len(outcome.job_ids)


class _Submitter(threading.Thread):
    """Runs the blocking local submission so the main thread can draw progress from the registry."""

    def __init__(self, target: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self._target_fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as exc:  # re-raised in the main thread
            self.error = exc
