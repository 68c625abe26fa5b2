"""Sweep axes: any RunConfig setting varied by its dotted name, in a study's ``[sweep]`` table.

    [sweep]
    "pretrain.base_lr" = [0.0125, 0.025, 0.05]   # one axis per key
    "data.crop" = [64, 96]
    [[sweep.zip]]                                 # keys that change together: one axis, one value each per point
    "pretrain.batch_size" = [64, 128]
    "pretrain.epochs" = [50, 100]

Axes combine as a product (with the study's intervals and seeds). A key's section says which runs it
reaches: ``sampler.*`` and ``pretrain.*`` pretrains (each value a pretrain of its own, with its fine-tunes),
``finetune.*`` fine-tunes only (the fine-tunes of one pretrain then share it), and ``data.*``, ``model.*``
and ``runtime.*`` both stages. The IoU interval is not swept here: ``[[intervals]]`` lists it. A table
inside a section is reached by one more dot: ``"pretrain.augment.zoom_prob" = [0.5, 0.75]`` varies the
pretraining views' zoom probability and keeps the view augmentations' other settings.

Each run records its *point*, the swept settings that reach it (``runs.point``): a pretrain its
pretraining ones, a fine-tune of a pretrain every axis, a no-pretraining fine-tune its fine-tuning ones.
Everything here is checked before a config is built: keys (the closest valid ones are named), types and
ranges of every value, empty axes, repeated values, zip groups of unequal lengths, a key in two axes.
"""

from __future__ import annotations

import difflib
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any, get_type_hints

from ioussl import jobtext as jobscript
from ioussl.config import (
    DataConfig,
    FinetuneConfig,
    ModelConfig,
    PretrainConfig,
    RuntimeConfig,
    SamplerConfig,
    check_range,
    coerce_setting,
)
from ioussl.errors import ConfigError

SECTIONS: dict[str, type] = {
    "data": DataConfig, "model": ModelConfig, "runtime": RuntimeConfig, "sampler": SamplerConfig,
    "pretrain": PretrainConfig, "finetune": FinetuneConfig,
}
STAGE_SECTIONS = {
    "pretrain": frozenset({"data", "model", "runtime", "sampler", "pretrain"}),
    "finetune": frozenset({"data", "model", "runtime", "finetune"}),
}
SET_BY_INTERVALS = frozenset({"sampler.i_min", "sampler.i_max", "sampler.random_crop"})


def _settings(prefix: str, cls: type) -> Iterator[str]:
    """Dotted names of a section's settings; a table inside it (``pretrain.augment``) gives each of its own."""
    hints = get_type_hints(cls)
    for item in fields(cls):
        if is_dataclass(hints[item.name]):
            yield from _settings(f"{prefix}.{item.name}", hints[item.name])
        else:
            yield f"{prefix}.{item.name}"


SETTINGS = tuple(name for section, cls in SECTIONS.items() for name in _settings(section, cls))
PATH_SETTINGS = frozenset({"data.store", "data.split"})  # strings that reach a job's command line

Point = dict[str, Any]  # dotted setting -> value
Projection = tuple[tuple[str, Any], ...]  # a point's (setting, value) pairs for one stage, hashable


@dataclass(frozen=True)
class Axis:
    """One axis of a sweep: a key with its values, or a zip group's keys with one value each per point."""

    keys: tuple[str, ...]
    points: tuple[tuple[Any, ...], ...]
    where: str  # for messages: '[sweep] "data.crop"' or '[[sweep.zip]] 1'

    def projection(self, index: int, stage: str) -> Projection:
        """Point ``index`` restricted to the keys that reach ``stage``."""
        sections = STAGE_SECTIONS[stage]
        return tuple((k, v) for k, v in zip(self.keys, self.points[index], strict=True)
                     if k.partition(".")[0] in sections)

    def groups(self, stage: str) -> dict[Projection, list[int]]:
        """Distinct projections onto ``stage`` (first-seen order), each with the points that give it."""
        found: dict[Projection, list[int]] = {}
        for index in range(len(self.points)):
            found.setdefault(self.projection(index, stage), []).append(index)
        return found


@dataclass(frozen=True)
class Sweep:
    """A study's axes, in file order; empty for a study without ``[sweep]``."""

    axes: tuple[Axis, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.axes)

    @property
    def names(self) -> tuple[str, ...]:
        """Every swept setting in file order (a zip group contributes each of its keys): ``studies.axes``."""
        return tuple(key for axis in self.axes for key in axis.keys)

    def values(self) -> dict[str, list[Any]]:
        """Each setting's distinct values in file order (tuples as lists): stored with the study."""
        out: dict[str, list[Any]] = {}
        for axis in self.axes:
            for column, key in enumerate(axis.keys):
                distinct = dict.fromkeys(point[column] for point in axis.points)
                out[key] = [list(v) if isinstance(v, tuple) else v for v in distinct]
        return out

    def count(self, stage: str | None) -> int:
        """Distinct points of one stage (``None``: whole points), by arithmetic: nothing is expanded."""
        if stage is None:
            return math.prod(len(axis.points) for axis in self.axes)
        return math.prod(len(axis.groups(stage)) for axis in self.axes)

    def pretrain_groups(self) -> Iterator[tuple[Point, list[tuple[Point, Point]]]]:
        """Each distinct pretraining point with its fine-tunes' (whole point, fine-tuning point) pairs.

        The fine-tunes of one pretraining point share its pretrains: fine-tune-only axes multiply them.
        """
        per_axis = [list(axis.groups("pretrain").items()) for axis in self.axes]
        for combo in itertools.product(*per_axis):
            pretrain_point = dict(pair for projection, _ in combo for pair in projection)
            members = itertools.product(*(indices for _, indices in combo))
            yield pretrain_point, [self._point_pair(indices) for indices in members]

    def baseline_points(self) -> list[Point]:
        """The fine-tuning points a fine-tune without a pretrain takes (pretraining axes do not reach it)."""
        per_axis = [list(axis.groups("finetune")) for axis in self.axes]
        return [dict(pair for projection in combo for pair in projection) for combo in itertools.product(*per_axis)]

    def _point_pair(self, indices: tuple[int, ...]) -> tuple[Point, Point]:
        whole = {k: v for axis, i in zip(self.axes, indices, strict=True)
                 for k, v in zip(axis.keys, axis.points[i], strict=True)}
        finetune = {k: v for axis, i in zip(self.axes, indices, strict=True) for k, v in axis.projection(i, "finetune")}
        return whole, finetune


def parse_sweep(raw: Any, where: str) -> Sweep:
    """The ``[sweep]`` table (``where`` names it in messages); ConfigError with one line on any problem."""
    if raw is None:
        return Sweep()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table of setting = [values], got {_short(raw)}")
    axes: list[Axis] = []
    for key, values in _flatten(raw, "", where):
        if key == "zip":
            axes += _zip_groups(values, where)
        else:
            axes.append(Axis((key,), tuple((v,) for v in _axis_values(key, values, f'{where} "{key}"')),
                             f'[sweep] "{key}"'))
    _check_once(axes, where)
    return Sweep(tuple(axes))


def _flatten(table: dict[str, Any], prefix: str, where: str) -> Iterator[tuple[str, Any]]:
    """Quoted ("pretrain.base_lr") and dotted (pretrain.base_lr, [sweep.pretrain]) keys alike."""
    for name, value in table.items():
        if not isinstance(name, str):
            raise ConfigError(f"{where}: {name!r} is not a setting name")
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            yield from _flatten(value, f"{key}.", where)
        else:
            yield key, value


def _zip_groups(groups: Any, where: str) -> list[Axis]:
    if not isinstance(groups, list) or not all(isinstance(group, dict) for group in groups):
        raise ConfigError(f"{where}: zip must be an array of tables ([[sweep.zip]]), got {_short(groups)}")
    axes = []
    for number, group in enumerate(groups, start=1):
        here = f"{where} zip group {number}"
        if not group:
            raise ConfigError(f"{here}: is empty: give it settings with one value each per point")
        columns = {key: _axis_values(key, values, f'{here} "{key}"', unique=False)
                   for key, values in _flatten(group, "", here)}
        lengths = {key: len(values) for key, values in columns.items()}
        if len(set(lengths.values())) > 1:
            listed = ", ".join(f"{key} has {n}" for key, n in lengths.items())
            raise ConfigError(f"{here}: its lists must have equal lengths (one value each per point); {listed}")
        points = tuple(zip(*columns.values(), strict=True))
        for index, point in enumerate(points):
            if point in points[:index]:
                raise ConfigError(f"{here}: the point {_point_text(dict(zip(columns, point, strict=True)))} is "
                                  "listed twice")
        axes.append(Axis(tuple(columns), points, f"[[sweep.zip]] {number}"))
    return axes


def _axis_values(key: str, values: Any, where: str, unique: bool = True) -> tuple[Any, ...]:
    """An axis' values: a non-empty list, each of the setting's type and in its range, none twice."""
    section, name = check_setting(key, where)
    if not isinstance(values, list):
        raise ConfigError(f"{where}: an axis is a list of values, got {_short(values)}")
    if not values:
        raise ConfigError(f"{where}: the axis is empty: give it at least one value")
    checked = []
    for value in values:
        typed = coerce_setting(SECTIONS[section], name, value, where)
        try:
            check_range(section, name, typed)
        except ConfigError as exc:
            raise ConfigError(f"{where}: value {value!r} is out of range: {exc}") from None
        if key in PATH_SETTINGS:
            jobscript.check_path(typed, where)
        if unique and typed in checked:
            raise ConfigError(f"{where}: lists the value {value!r} twice")
        checked.append(typed)
    return tuple(checked)


def check_setting(key: str, where: str) -> tuple[str, str]:
    """(section, name) of a swept setting; an unknown one names the closest valid settings."""
    if key in SET_BY_INTERVALS:
        raise ConfigError(f"{where}: {key} is set by [[intervals]]; list the intervals there instead of sweeping it")
    if key not in SETTINGS:
        close = difflib.get_close_matches(key, SETTINGS, n=3, cutoff=0.6)
        hint = (f"closest: {', '.join(close)}" if close else
                f"a setting is <section>.<name> with section one of {', '.join(SECTIONS)} (see docs/guide.md)")
        seeds = "; seeds are listed in [pretrain].seeds and [finetune].seeds" if "seed" in key else ""
        raise ConfigError(f"{where}: unknown setting {key!r}; {hint}{seeds}")
    section, _, name = key.partition(".")
    return section, name


def _check_once(axes: list[Axis], where: str) -> None:
    seen: dict[str, str] = {}
    for axis in axes:
        for key in axis.keys:
            if key in seen:
                raise ConfigError(f"{where}: {key} is swept twice ({seen[key]} and {axis.where}); "
                                  "a setting belongs to one axis")
            seen[key] = axis.where


def apply_point(sections: dict[str, Any], point: Point) -> dict[str, Any]:
    """The study's config sections (name -> frozen dataclass) with a point's settings replaced."""
    if not point:
        return sections
    changes: dict[str, dict[str, Any]] = {}
    for key, value in point.items():
        section, _, name = key.partition(".")
        changes.setdefault(section, {})[name] = value
    return {name: _replaced(section, changes[name]) if name in changes else section
            for name, section in sections.items()}


def _replaced(table: Any, changes: dict[str, Any]) -> Any:
    """A frozen config table with settings replaced; a dotted name ("augment.zoom_prob") reaches into the
    table inside it, whose other settings stay."""
    inner: dict[str, dict[str, Any]] = {}
    direct = {}
    for name, value in changes.items():
        head, dot, rest = name.partition(".")
        if dot:
            inner.setdefault(head, {})[rest] = value
        else:
            direct[name] = value
    direct.update({head: _replaced(getattr(table, head), nested) for head, nested in inner.items()})
    return replace(table, **direct)


def point_text(point: Point) -> str:
    """A point for messages and labels: ``data.crop=96, pretrain.base_lr=0.05``."""
    return _point_text(point)


def _point_text(point: Point) -> str:
    return ", ".join(f"{key}={format_value(value)}" for key, value in point.items()) or "(no swept setting)"


def format_value(value: Any) -> str:
    """A swept value as the study file writes it: 0.025, 96, true, "exact", [2, 2, 6, 2]."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."
