"""Report rows by any axes: the IoU interval (the thesis table), any swept setting, several studies.

A fine-tune's group is its study and its value on each ``--by`` axis: ``interval`` is its report group
(``runs.group``: "[0.3, 0.6]", "no pretraining", ...), a swept setting its value in ``runs.point`` (never
read from the config: a point is small and already parsed), or none where the run has no such setting (a
fine-tune without a pretrain has no pretraining setting). Fine-tunes without a pretrain always form rows of
their own; the row they give is the baseline of every row of the same study that agrees with it on each
axis it has. Rows are ordered by study, then axis by axis as the study file lists intervals (baseline
first) and values.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ioussl.errors import ConfigError
from ioussl.plan.expand import BASELINE_GROUP
from ioussl.plan.sweep import format_value
from ioussl.registry.repo import RunRecord

INTERVAL = "interval"  # the axis of IoU intervals (and the no-pretraining baseline): runs.group
Value = Any  # a hashable axis value (lists from JSON become tuples)


@dataclass(frozen=True)
class StudyOrder:
    """How one study orders its rows: its interval labels and each swept setting's values, as listed."""

    groups: tuple[str, ...] = ()
    values: Mapping[str, tuple[Value, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, spec: Mapping[str, Any], group_order: Sequence[str]) -> StudyOrder:
        """From ``studies.spec`` (its ``sweep`` values, written at plan time) and the study's group order."""
        sweep = spec.get("sweep") or {}
        return cls(tuple(group_order), {name: tuple(hashable(v) for v in values) for name, values in sweep.items()})


@dataclass(frozen=True)
class GroupKey:
    study: str
    values: tuple[tuple[str, Value], ...]  # (axis, value) per --by axis; None where the run has no such setting
    baseline: bool  # fine-tunes without a pretrain

    def axes(self) -> dict[str, Value]:
        """The group's value on each axis, for GroupRow.axes (tuples back as lists, as the study wrote them)."""
        return {axis: list(value) if isinstance(value, tuple) else value for axis, value in self.values}

    def label(self, with_study: bool = False) -> str:
        """'[0.3, 0.6]' for the thesis table; 'pretrain.base_lr=0.025, [0.3, 0.6]' by several axes."""
        parts = [value if axis == INTERVAL else f"{axis}={format_value(value)}"
                 for axis, value in self.values if value is not None]
        if self.baseline and INTERVAL not in dict(self.values):
            parts.append(BASELINE_GROUP)
        text = ", ".join(parts) or "all"
        return f"{self.study}: {text}" if with_study else text


def hashable(value: Any) -> Value:
    """A point value usable in a key: JSON lists as tuples."""
    return tuple(hashable(v) for v in value) if isinstance(value, list | tuple) else value


def resolve_by(by: str | Sequence[str] | None, axes: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """The axes to group by; each must be ``interval`` or an axis of one of the studies (``axes``: study ->
    its ``studies.axes``). Default: every swept setting, then the interval (for the thesis: the interval).

    Accepts "a,b", ["a", "b"] or ["a,b"]. Raises ConfigError naming the axes there are, and the closest.
    """
    known = [*dict.fromkeys(name for names in axes.values() for name in names)]
    if by is None:
        return (*known, INTERVAL)
    items = [by] if isinstance(by, str) else list(by)
    names = [name.strip() for item in items for name in item.split(",") if name.strip()]
    if not names:
        raise ConfigError("--by names no axis; give e.g. --by interval or --by pretrain.base_lr,interval")
    valid = [*known, INTERVAL]
    studies = ", ".join(axes)
    for name in names:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise ConfigError(f"--by {name!r} is no axis of study {studies} (its axes: {', '.join(valid)}){hint}")
    return tuple(dict.fromkeys(names))


def key_of(record: RunRecord, by: Sequence[str]) -> GroupKey:
    point = record.point
    values = tuple((axis, record.group if axis == INTERVAL else hashable(point.get(axis))) for axis in by)
    return GroupKey(record.study, values, record.group == BASELINE_GROUP)


def keys_of(records: Sequence[RunRecord], by: Sequence[str]) -> list[GroupKey]:
    """:func:`key_of` of each record, built once per (study, group, point): records read by ``list_runs``
    share one point object per distinct point (``repo.JsonTexts``), so a 10,000-run sweep builds few keys."""
    built: dict[tuple[str, str, int], GroupKey] = {}
    keys = []
    for record in records:
        seen = (record.study, record.group, id(record.point))
        key = built.get(seen)
        if key is None:
            key = built[seen] = key_of(record, by)
        keys.append(key)
    return keys


def sort_keys(keys: Iterable[GroupKey], orders: Mapping[str, StudyOrder]) -> list[GroupKey]:
    """Studies in the order given; within one, axis by axis as its file lists them; none (and the baseline)
    first; values the file does not list after those it does, in their natural order."""
    from ioussl.plan.order import order_groups

    keys = list(keys)
    study_rank = {study: i for i, study in enumerate(orders)}
    group_rank: dict[str, dict[str, int]] = {}
    for study in {key.study for key in keys}:
        present = {value for key in keys if key.study == study for axis, value in key.values if axis == INTERVAL}
        group_rank[study] = {g: i for i, g in enumerate(order_groups(present, orders.get(study, StudyOrder()).groups))}

    # Each listed value's position, looked up rather than searched for: a sweep's report sorts thousands of keys.
    listed: dict[tuple[str, str], dict[Value, int]] = {}
    for study, order in orders.items():
        for axis, values in order.values.items():
            positions: dict[Value, int] = {}
            for i, value in enumerate(values):
                positions.setdefault(value, i)  # the first, as tuple.index finds it
            listed[(study, axis)] = positions

    def rank(key: GroupKey) -> tuple[Any, ...]:
        ranks: list[tuple[Any, ...]] = []
        for axis, value in key.values:
            if axis == INTERVAL:
                ranks.append((group_rank[key.study].get(value, 0),))
            elif value is None:
                ranks.append((-1,))
            else:
                positions = listed.get((key.study, axis), {})
                at = positions.get(value)
                ranks.append((at,) if at is not None else (len(positions), natural_order(value)))
        return (study_rank.get(key.study, len(study_rank)), key.study, *ranks, not key.baseline)

    return sorted(keys, key=rank)


def natural_order(value: Value) -> tuple[int, Any]:
    """A sort key: numbers before text before the rest, each in its own order (never compared across types)."""
    if isinstance(value, bool):
        return 2, str(value)
    if isinstance(value, int | float):
        return 0, value
    return (1, value) if isinstance(value, str) else (2, repr(value))


class Baselines:
    """Finds the baseline row a row is compared with: same study, and the same value on every axis the
    baseline has (its pretraining settings are none). Indexed once: a sweep's report has thousands of rows."""

    def __init__(self, keys: Iterable[GroupKey]) -> None:
        self._index: dict[tuple[str, frozenset[str], tuple[tuple[str, Value], ...]], GroupKey] = {}
        self._unset: dict[str, set[frozenset[str]]] = {}  # study -> the sets of axes its baselines lack
        for key in keys:
            if key.baseline:
                unset = frozenset(axis for axis, value in key.values if value is None)
                self._unset.setdefault(key.study, set()).add(unset)
                self._index[(key.study, unset, self._shared(key, unset))] = key

    def of(self, key: GroupKey) -> GroupKey | None:
        if key.baseline:
            return None
        for unset in self._unset.get(key.study, ()):
            found = self._index.get((key.study, unset, self._shared(key, unset)))
            if found is not None:
                return found
        return None

    @staticmethod
    def _shared(key: GroupKey, unset: frozenset[str]) -> tuple[tuple[str, Value], ...]:
        return tuple((axis, value) for axis, value in key.values if axis != INTERVAL and axis not in unset)
