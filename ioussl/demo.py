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
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ioussl.errors import ConfigError
from ioussl.runfiles import atomic_write_text

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


def run_demo(settings: DemoSettings, db: str | None, say: Say, progress: Callable | None = None):  # type: ignore[no-untyped-def]
    """Run (or resume) the demo study; returns the report outcome."""
    from ioussl.orchestration.study import load_study

    if not settings.study_file.is_file():
        raise ConfigError(f"demo study not found: {settings.study_file} (run the demo from an ioussl checkout)")
    spec = load_study(settings.study_file)
    store = spec.resolve(spec.data.store).resolve()
    split = spec.resolve(spec.data.split).resolve() if spec.data.split else None
    workdir = store.parent
    db = db or str(workdir / "registry.db")
    raw = workdir / "raw"
    _synthesise(raw, settings, say)
    _preprocess(raw, store, spec.data.crop, say)
    if split is not None:
        _split(store, split, settings, say)
    return _run_study(settings, db, say, progress, plot_dir=workdir / "plots")


def _synthesise(raw: Path, settings: DemoSettings, say: Say) -> None:
    marker = raw / ".complete"
    if marker.exists():
        say(f"1/5 synthetic CT: reusing {raw}")
        return
    from ioussl.science.synth import synth_dataset

    say(f"1/5 synthetic CT: writing {settings.labelled} labelled + {settings.unlabelled} unlabelled cases")
    shutil.rmtree(raw, ignore_errors=True)  # a half-written dataset from an interrupted run
    synth_dataset(raw, settings.labelled, settings.unlabelled, seed=settings.seed, size=settings.size,
                  slices=settings.slices, spacing_mm=settings.spacing_mm)
    atomic_write_text(marker, "ok\n")


def _preprocess(raw: Path, store: Path, crop: int, say: Say) -> None:
    from ioussl.science.preprocess import PreprocessSettings, preprocess_dataset

    report = preprocess_dataset(raw, store, PreprocessSettings(min_size=crop), workers=2)
    say(f"2/5 preprocessing: {len(report.done)} volume(s) done, {len(report.skipped)} reused -> {store}")
    if report.failed:
        raise ConfigError(f"preprocessing failed for {', '.join(case for case, _ in report.failed)}")


def _split(store: Path, split: Path, settings: DemoSettings, say: Say) -> None:
    if split.exists():
        say(f"3/5 split: reusing {split}")
        return
    from ioussl.science.splits import make_split, split_to_json
    from ioussl.science.store import SliceStore

    cases = SliceStore(store).labelled_cases()
    n_test = 1 if len(cases) >= 4 else 0
    n_val = max(1, (len(cases) - n_test) // 3)
    parts = make_split(cases, len(cases) - n_val - n_test, n_val, n_test, seed=settings.seed)
    atomic_write_text(split, split_to_json(parts, "demo split: selection on val, reporting on test too"))
    say(f"3/5 split: {len(parts['train'])} train / {len(parts['val'])} val / {len(parts.get('test', []))} test")


def _run_study(settings: DemoSettings, db: str, say: Say, progress: Callable | None, plot_dir: Path):  # type: ignore[no-untyped-def]
    from ioussl.orchestration import jobservice
    from ioussl.orchestration.service import plan_grid, report_study, status_rows

    outcome = plan_grid(settings.study_file, db)
    say(f"4/5 plan: {len(outcome.new)} new run(s), {len(outcome.existing)} already planned (registry {db})")
    name = outcome.study
    if settings.executor == "auto":
        from ioussl.orchestration.backends import resolve_executor

        executor, why_local = resolve_executor("auto")
        settings = replace(settings, executor=executor)
        say(f"    {why_local}: running on this machine with the local executor" if why_local else
            "    the SLURM controller answers: submitting to it")
    worker = _Submitter(lambda: jobservice.submit(db, name, executor=settings.executor,
                                                  max_parallel=settings.max_parallel))
    worker.start()
    while worker.is_alive():
        if progress is not None:
            progress(status_rows(db, study=name))
        worker.join(timeout=2.0)
    if worker.error is not None:
        raise worker.error
    if settings.executor != "local":  # SLURM runs the chain by itself: sync until every run has ended
        _wait_for_scheduler(db, name, progress)
    retried = _retry_lost(db, name, settings, say)
    if retried and settings.executor != "local":
        _wait_for_scheduler(db, name, progress)
    if progress is not None:
        progress(status_rows(db, study=name))
    say(f"5/5 runs finished{f' ({retried} retried after an interruption)' if retried else ''}; report:")
    outcome = report_study(db, name, plot_dir=plot_dir)
    curves = _pretrain_losses(db, name)
    for group, runs in curves.items():
        first, last = (sum(points[i][1] for points in runs) / len(runs) for i in (0, -1))
        say(f"    pretraining loss {group}: {first:+.3f} (epoch 1) -> {last:+.3f} (epoch {runs[0][-1][0] + 1})")
    if curves:
        outcome.plots.append(_plot_losses(curves, plot_dir / "pretrain_loss_per_epoch.png"))
    return outcome


def _pretrain_losses(db: str, study: str) -> dict[str, list[list[tuple[int, float]]]]:
    """The SimSiam loss per epoch of each pretraining, by group in the study's order (runs without epochs
    left out)."""
    from ioussl.orchestration.registry import opened, repo
    from ioussl.orchestration.report import order_groups, study_group_order

    with opened(db) as registry, registry.session(write=False) as session:
        order = study_group_order(repo.find_study(session, study).spec)
        pretrains = [r for r in repo.list_runs(session, study=study) if r.stage == "pretrain"]
        series = repo.metric_series(session, [r.id for r in pretrains], "loss")
    curves: dict[str, list[list[tuple[int, float]]]] = {}
    for record in pretrains:
        if series.get(record.id):
            curves.setdefault(record.group, []).append(series[record.id])
    return {group: curves[group] for group in order_groups(curves, order)}


def _plot_losses(curves: dict[str, list[list[tuple[int, float]]]], path: Path) -> Path:
    """One thin line per pretraining run and a thick one per group mean (the collapse figure's layout)."""
    import matplotlib
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for colour, (group, runs) in zip(matplotlib.colormaps["tab10"].colors, curves.items(), strict=False):
        for points in runs:
            ax.plot([e + 1 for e, _ in points], [v for _, v in points], color=colour, alpha=0.35, lw=0.8)
        epochs = sorted({e for points in runs for e, _ in points})
        mean = [sum(dict(p).get(e, 0.0) for p in runs) / sum(e in dict(p) for p in runs) for e in epochs]
        ax.plot([e + 1 for e in epochs], mean, color=colour, lw=2.2, label=group)
    ax.set(xlabel="epoch", ylabel="SimSiam loss  (-1: the two views' embeddings agree)",
           title="Pretraining loss per epoch (thin: runs, thick: group mean)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="IoU interval", title_fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _wait_for_scheduler(db: str, study: str, progress: Callable | None, poll_s: float = 5.0) -> None:  # type: ignore[type-arg]
    from ioussl.orchestration import jobservice
    from ioussl.orchestration.service import status_rows

    while True:
        jobservice.sync_studies(db, study)
        records = status_rows(db, study=study)
        if progress is not None:
            progress(records)
        if all(record.status.is_terminal() for record in records):
            return
        time.sleep(poll_s)


def _retry_lost(db: str, study: str, settings: DemoSettings, say: Say) -> int:
    """Runs whose job died with an interrupted demo come back LOST: run them again, once."""
    from ioussl.orchestration import jobservice
    from ioussl.orchestration.service import status_rows
    from ioussl.orchestration.status import RunStatus

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
