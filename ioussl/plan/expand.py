"""Expanding a study into runs (pure), and writing the new ones into the registry.

The thesis grid: each interval x pretrain seed gives one pretrain; each pretrain x fine-tune seed gives one
fine-tune whose parent is that pretrain; each baseline seed gives one fine-tune without a parent.
A ``[sweep]`` (``sweep.py``) multiplies this: each pretraining point of the sweep its own pretrains, each
whole point its own fine-tunes (those differing only in fine-tuning settings share their pretrain), each
fine-tuning point its own baseline. Every run records its point (``PlannedRun.point`` -> ``runs.point``).
Identity is the hash of (config, parent identity), so a second ``plan`` finds every run already there;
a study without a sweep plans exactly the runs it planned before sweeps existed.

Size: :func:`stage_counts` / :func:`run_count` give the number of runs a study expands to, computed from
its seeds, intervals and axes without expanding anything, and :func:`check_plan_size` refuses a study
above the cap (default ``DEFAULT_MAX_RUNS``) before a single config is built.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ioussl.config import DataConfig, RunConfig, run_hash
from ioussl.errors import ConfigError, DataError
from ioussl.plan.study import Interval, StudySpec
from ioussl.plan.sweep import Point, apply_point, point_text
from ioussl.resources import placeholder_message, placeholders, resources_for_run

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


def stage_counts(spec: StudySpec) -> dict[str, int]:
    """How many pretrains and fine-tunes ``expand_grid(spec)`` gives, by arithmetic (nothing is expanded).

    Per interval and pretrain seed: one pretrain per distinct pretraining point of the sweep, and one
    fine-tune per fine-tune seed and whole point (fine-tune-only axes multiply the fine-tunes of a
    pretrain, not the pretrain); the baseline: one fine-tune per baseline seed and fine-tuning point.
    Without a sweep every count of points is 1: the thesis grid.
    """
    pretrained = len(spec.intervals) * len(spec.pretrain_seeds)
    return {
        "pretrain": pretrained * spec.sweep.count("pretrain"),
        "finetune": pretrained * len(spec.finetune_seeds) * spec.sweep.count(None)
        + len(spec.baseline_seeds) * spec.sweep.count("finetune"),
    }


def run_count(spec: StudySpec) -> int:
    """How many runs ``expand_grid(spec)`` gives (:func:`stage_counts`, summed)."""
    return sum(stage_counts(spec).values())


def check_plan_size(spec: StudySpec, max_runs: int | None = None) -> int:
    """The study's run count; ConfigError when it exceeds ``max_runs`` (default DEFAULT_MAX_RUNS)."""
    limit = DEFAULT_MAX_RUNS if max_runs is None else max_runs
    if limit < 1:
        raise ConfigError(f"--max-runs must be at least 1, got {limit}")
    total = run_count(spec)
    if total > limit:
        shrink = "its sweep axes, seeds or intervals" if spec.sweep else "its seeds or intervals"
        raise ConfigError(
            f"study {spec.name!r} expands to {total:,} runs, more than the cap of {limit:,}; "
            f"shrink {shrink}, or raise the cap with --max-runs"
        )
    return total


def expand_grid(spec: StudySpec) -> list[PlannedRun]:
    """Every run of the study, pretrains before their fine-tunes, in a stable order.

    Raises:
        ConfigError: a sweep point whose settings cannot run together (the message names the point).
    """
    runs: list[PlannedRun] = []
    configs = _Configs(spec)
    groups = list(spec.sweep.pretrain_groups())
    for interval in spec.intervals:
        for pretrain_point, finetunes in groups:
            for pretrain_seed in spec.pretrain_seeds:
                config = configs.pretrain(pretrain_point, interval, pretrain_seed)
                parent = _planned(spec, config, interval, None, None, pretrain_point)
                runs.append(parent)
                for whole, finetune_point in finetunes:
                    for seed in spec.finetune_seeds:
                        config = configs.finetune(finetune_point, seed)
                        runs.append(_planned(spec, config, interval, parent, pretrain_seed, whole))
    for point in spec.sweep.baseline_points() if spec.baseline_seeds else ():
        for seed in spec.baseline_seeds:
            runs.append(_planned(spec, configs.finetune(point, seed), None, None, None, point))
    return runs


class _Configs:
    """Run configs of one study: its sections with a sweep point applied (once per point), validated."""

    def __init__(self, spec: StudySpec) -> None:
        self.spec = spec
        self._base = {"data": spec.data, "model": spec.model, "runtime": spec.runtime, "sampler": spec.sampler,
                      "pretrain": spec.pretrain, "finetune": spec.finetune}
        self._sections: dict[tuple[tuple[str, Any], ...], dict[str, Any]] = {}

    def pretrain(self, point: Point, interval: Interval, seed: int) -> RunConfig:
        sections = self._at(point)
        sampler = replace(sections["sampler"], i_min=interval.i_min, i_max=interval.i_max,
                          random_crop=interval.random_crop)
        return self._valid(point, RunConfig(
            stage="pretrain", seed=seed, data=sections["data"], model=sections["model"],
            runtime=sections["runtime"], sampler=sampler, pretrain=sections["pretrain"],
        ))

    def finetune(self, point: Point, seed: int) -> RunConfig:
        sections = self._at(point)
        return self._valid(point, RunConfig(
            stage="finetune", seed=seed, data=sections["data"], model=sections["model"],
            runtime=sections["runtime"], finetune=sections["finetune"],
        ))

    def _at(self, point: Point) -> dict[str, Any]:
        key = tuple(point.items())
        if key not in self._sections:
            self._sections[key] = apply_point(self._base, point)
        return self._sections[key]

    def _valid(self, point: Point, config: RunConfig) -> RunConfig:
        try:
            return config.validate()
        except ConfigError as exc:
            if not point:
                raise
            raise ConfigError(f"study {self.spec.name!r}: sweep point {point_text(point)}: {exc}") from None


def _planned(spec: StudySpec, config: RunConfig, interval: Interval | None, parent: PlannedRun | None,
             pretrain_seed: int | None, point: Point) -> PlannedRun:
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
        point=point,
    )


def check_data(spec: StudySpec) -> list[str]:
    """Fail before anything is written if the study's data cannot serve its runs; return warnings.

    The store (and split) of every sweep point must exist. An IoU interval that no pretraining slice can
    meet with the crop is refused; one that only some slices can meet is a warning (those slices give
    flagged fallback pairs). The science layer's numpy-only store and sampler do the geometry (imported
    lazily). A sweep over data settings checks each distinct data section once.
    """
    warnings = []
    for (data, include_labelled, dims), pretrains in _data_variants(spec).items():
        where = f" ({point_text(_data_point(spec, data))})" if data != spec.data else ""
        _check_paths(spec, data)
        if pretrains and spec.intervals:
            warnings += _check_intervals(spec, data, include_labelled, where, dims)
        if dims == 3:
            _check_training_volumes(spec, data, where)
    return warnings


def _data_variants(spec: StudySpec) -> dict[tuple[DataConfig, bool, int], bool]:
    """Each distinct (data section, include_labelled, model.spatial_dims) of the study's runs -> whether
    pretrains use it."""
    base = {"data": spec.data, "pretrain": spec.pretrain, "model": spec.model}
    variants: dict[tuple[DataConfig, bool, int], bool] = {}
    for point, _ in spec.sweep.pretrain_groups():
        sections = apply_point(base, point)
        variants[(sections["data"], sections["pretrain"].include_labelled, sections["model"].spatial_dims)] = True
    for point in spec.sweep.baseline_points():
        sections = apply_point(base, point)
        variants.setdefault((sections["data"], spec.pretrain.include_labelled, sections["model"].spatial_dims), False)
    return variants


def _data_point(spec: StudySpec, data: DataConfig) -> Point:
    return {f"data.{name}": value for name, value in vars(data).items() if value != getattr(spec.data, name)}


def check_split_files(spec: StudySpec) -> None:
    """Every split file the study names that exists must be a valid split (JSON: train, val[, test]), checked
    even with --no-check-data: a split that is not JSON would fail every job that reads it.

    Raises:
        DataError: the first split file that is not a readable split, in one line.
    """
    from ioussl.science.data.splits import load_split  # json only: no torch

    paths = {spec.data.split, *(value for value in spec.sweep.values().get("data.split", []))}
    for split in sorted(str(path) for path in paths if isinstance(path, str)):
        if spec.resolve(split).is_file():
            load_split(spec.resolve(split))


def _check_paths(spec: StudySpec, data: DataConfig) -> None:
    store_path = spec.resolve(data.store)
    if not store_path.exists():
        raise DataError(
            f"data store not found: {store_path} (preprocess first: ioussl data preprocess; "
            "or plan with --no-check-data)"
        )
    if data.split is not None and not spec.resolve(data.split).is_file():
        raise DataError(f"split file not found: {spec.resolve(data.split)}")


def _check_intervals(
    spec: StudySpec, data: DataConfig, include_labelled: bool, where: str, dims: int = 2
) -> list[str]:
    """In 2D every pretraining slice is an image; in 3D every pretraining volume, with cubes (cuboid IoU)."""
    from ioussl.science.data.store import SliceStore

    store_path = spec.resolve(data.store)
    store = SliceStore(store_path)
    cases = store.unlabelled_cases() + (store.labelled_cases() if include_labelled else [])
    if not cases:
        raise DataError(f"data store {store_path} has no unlabelled cases to pretrain on")
    if dims == 3:
        return _intervals_on(spec, store.volume_shapes(cases), (data.crop,) * 3, "volume", store_path, where)
    return _intervals_on(spec, store.shapes(store.slice_ids(cases)), (data.crop, data.crop), "slice", store_path,
                         where)  # fmt: skip


def _intervals_on(
    spec: StudySpec, shapes: Any, crop: tuple[int, ...], unit: str, store_path: Path, where: str
) -> list[str]:
    from ioussl.science.sampling.sampler import check_interval_feasible, feasible_mask

    warnings = []
    for interval in spec.intervals:
        mask = feasible_mask(shapes, crop, interval.i_min, interval.i_max)
        if not mask.any():
            try:
                check_interval_feasible(tuple(int(s) for s in shapes.max(axis=0)), crop, interval.i_min,
                                        interval.i_max)
            except ConfigError as exc:
                raise ConfigError(f"interval {interval.label}{where}: {exc}") from None
            raise ConfigError(f"interval {interval.label}{where}: no {unit} of {store_path} can meet it with crop "
                              f"{crop}")
        if not mask.all():
            warnings.append(f"interval {interval.label}{where}: {1 - mask.mean():.1%} of the pretraining {unit}s "
                            "cannot meet it with this crop; they give flagged, counted fallback pairs")
    return warnings


def _check_training_volumes(spec: StudySpec, data: DataConfig, where: str) -> None:
    """3D fine-tuning cuts cubes from its training volumes: each must hold one (validation volumes need not:
    sliding-window inference pads them)."""
    from ioussl.science.data.splits import load_split
    from ioussl.science.data.store import SliceStore

    store = SliceStore(spec.resolve(data.store))
    cases = store.labelled_cases()
    if data.split is not None:
        train = set(load_split(spec.resolve(data.split)).get("train") or [])
        cases = [c for c in cases if c in train]
    for case, shape in zip(cases, store.volume_shapes(cases).tolist(), strict=True):
        if min(shape) < data.crop:
            raise DataError(f"3D fine-tuning{where}: volume {case} of {store.root} is {tuple(shape)} (Z, H, W), "
                            f"smaller than the {data.crop}³ crop")


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
        found.update(placeholders(resources_for_run(stored, where=f"[resources.{stage}]")))
    if not found:
        return []
    message = placeholder_message(found, profile_source(spec.raw))
    return [f"{message} before submitting to SLURM (then plan again: planned runs pick it up)"]
