"""Expanding a study into runs (pure), and writing the new ones into the registry.

The thesis grid: each interval x pretrain seed gives one pretrain; each pretrain x fine-tune seed gives one
fine-tune whose parent is that pretrain; each baseline seed gives one fine-tune without a parent.
Identity is the hash of (config, parent identity), so a second ``plan`` finds every run already there.

Size: :func:`run_count` is the number of runs a study expands to, computed from its axes without
expanding anything, and :func:`check_plan_size` refuses a study above the cap (default
``DEFAULT_MAX_RUNS``) before a single config is built. A sweep multiplies the count; extend
:func:`run_count` (one place) when a study gains axes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ioussl.config import RunConfig, run_hash
from ioussl.errors import ConfigError, DataError
from ioussl.orchestration import slurm
from ioussl.orchestration.study import Interval, StudySpec

BASELINE_GROUP = "no pretraining"
DEFAULT_MAX_RUNS = 5000  # plan size cap: above it `plan grid` refuses unless --max-runs says otherwise


@dataclass(frozen=True)
class PlannedRun:
    key: str  # run id: short hash of (study, run hash)
    stage: str
    group: str
    interval: Interval | None
    seed: int
    pretrain_seed: int | None
    parent_key: str | None
    config: RunConfig
    run_hash: str  # identity: config.run_hash(config, parent's run_hash), stored as runs.run_hash
    resources: dict[str, Any] = field(hash=False, compare=False)
    point: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)  # sweep point; {} without


def run_key(study: str, run_hash: str) -> str:
    return hashlib.sha256(f"{study}\0{run_hash}".encode()).hexdigest()[:12]


def run_count(spec: StudySpec) -> int:
    """How many runs ``expand_grid(spec)`` gives, by arithmetic on the study's axes (nothing is expanded).

    Per interval: one pretrain per pretrain seed, each with one fine-tune per fine-tune seed; plus the
    baseline's fine-tunes.
    """
    per_interval = len(spec.pretrain_seeds) * (1 + len(spec.finetune_seeds))
    return len(spec.intervals) * per_interval + len(spec.baseline_seeds)


def check_plan_size(spec: StudySpec, max_runs: int | None = None) -> int:
    """The study's run count; ConfigError when it exceeds ``max_runs`` (default DEFAULT_MAX_RUNS)."""
    limit = DEFAULT_MAX_RUNS if max_runs is None else max_runs
    if limit < 1:
        raise ConfigError(f"--max-runs must be at least 1, got {limit}")
    total = run_count(spec)
    if total > limit:
        raise ConfigError(
            f"study {spec.name!r} expands to {total:,} runs, more than the cap of {limit:,}; "
            "shrink its seeds or intervals, or raise the cap with --max-runs"
        )
    return total


def expand_grid(spec: StudySpec) -> list[PlannedRun]:
    """Every run of the study, pretrains before their fine-tunes, in a stable order."""
    runs: list[PlannedRun] = []
    for interval in spec.intervals:
        sampler = replace(spec.sampler, i_min=interval.i_min, i_max=interval.i_max,
                          random_crop=interval.random_crop)
        for pretrain_seed in spec.pretrain_seeds:
            config = RunConfig(stage="pretrain", seed=pretrain_seed, data=spec.data, model=spec.model,
                               runtime=spec.runtime, sampler=sampler, pretrain=spec.pretrain).validate()
            parent = _planned(spec, config, interval, None, None)
            runs.append(parent)
            for seed in spec.finetune_seeds:
                runs.append(_planned(spec, _finetune_config(spec, seed), interval, parent, pretrain_seed))
    for seed in spec.baseline_seeds:
        runs.append(_planned(spec, _finetune_config(spec, seed), None, None, None))
    return runs


def _finetune_config(spec: StudySpec, seed: int) -> RunConfig:
    return RunConfig(stage="finetune", seed=seed, data=spec.data, model=spec.model, runtime=spec.runtime,
                     finetune=spec.finetune).validate()


def _planned(spec: StudySpec, config: RunConfig, interval: Interval | None, parent: PlannedRun | None,
             pretrain_seed: int | None) -> PlannedRun:
    digest = run_hash(config, parent.run_hash if parent else None)
    return PlannedRun(
        key=run_key(spec.name, digest),
        stage=config.stage,
        group=interval.label if interval else BASELINE_GROUP,
        interval=interval,
        seed=config.seed,
        pretrain_seed=pretrain_seed,
        parent_key=parent.key if parent else None,
        config=config,
        run_hash=digest,
        resources=spec.resources[config.stage],
    )


def check_data(spec: StudySpec) -> list[str]:
    """Fail before anything is written if the study's data cannot serve its runs; return warnings.

    The store (and split) must exist. An IoU interval that no pretraining slice can meet with the crop is
    refused; one that only some slices can meet is a warning (those slices give flagged fallback pairs).
    The science layer's numpy-only store and sampler do the geometry (imported lazily).
    """
    store_path = spec.resolve(spec.data.store)
    if not store_path.exists():
        raise DataError(
            f"data store not found: {store_path} (preprocess first: ioussl data preprocess; "
            "or plan with --no-check-data)"
        )
    if spec.data.split is not None and not spec.resolve(spec.data.split).is_file():
        raise DataError(f"split file not found: {spec.resolve(spec.data.split)}")
    if not spec.intervals:
        return []
    from ioussl.science.sampler import check_interval_feasible, feasible_mask
    from ioussl.science.store import SliceStore

    store = SliceStore(store_path)
    cases = store.unlabelled_cases() + (store.labelled_cases() if spec.pretrain.include_labelled else [])
    if not cases:
        raise DataError(f"data store {store_path} has no unlabelled cases to pretrain on")
    shapes = store.shapes(store.slice_ids(cases))
    crop = (spec.data.crop, spec.data.crop)
    warnings = []
    for interval in spec.intervals:
        mask = feasible_mask(shapes, crop, interval.i_min, interval.i_max)
        if not mask.any():
            try:
                check_interval_feasible(tuple(int(s) for s in shapes.max(axis=0)), crop, interval.i_min,
                                        interval.i_max)
            except ConfigError as exc:
                raise ConfigError(f"interval {interval.label}: {exc}") from None
            raise ConfigError(f"interval {interval.label}: no slice of {store_path} can meet it with crop {crop}")
        if not mask.all():
            warnings.append(f"interval {interval.label}: {1 - mask.mean():.1%} of the pretraining slices cannot "
                            "meet it with this crop; they give flagged, counted fallback pairs")
    return warnings


def job_config_json(config_json: str, base_dir: str) -> str:
    """The config a job reads: the registry's canonical config with its data paths made absolute.

    Identity hashes the config as the study file wrote it (relative paths stay portable); a job on a
    node needs paths that do not depend on its working directory.
    """
    config = RunConfig.from_json(config_json)
    base = Path(base_dir).expanduser().resolve()
    data = replace(
        config.data,
        store=str(base / config.data.store),  # an absolute store path stays as it is
        split=None if config.data.split is None else str(base / config.data.split),
    )
    return replace(config, data=data).to_json()


def run_dir_for(spec: StudySpec, planned: PlannedRun) -> Path:
    return spec.resolve(spec.runs_dir) / f"{planned.stage}-{planned.key}"


def profile_source(raw: dict[str, Any]) -> str:
    """Where a study's SLURM settings come from, for messages: its cluster profile and/or its [slurm]."""
    cluster = (raw.get("study") or {}).get("cluster")
    sources = [f"cluster profile {cluster}"] if cluster else []
    if raw.get("slurm"):
        sources.append("the study's [slurm] table")
    return " and ".join(sources) or "the study's resources"


def placeholder_warnings(spec: StudySpec) -> list[str]:
    """A warning when the SLURM settings still hold a template placeholder (submit to SLURM refuses them)."""
    found: dict[str, str] = {}
    for stage, stored in spec.resources.items():
        found.update(slurm.placeholders(slurm.resources_for_run(stored, where=f"[resources.{stage}]")))
    if not found:
        return []
    message = slurm.placeholder_message(found, profile_source(spec.raw))
    return [f"{message} before submitting to SLURM (then plan again: planned runs pick it up)"]
