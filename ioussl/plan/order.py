"""The one order of a study's groups, shared by status, submit and report: the baseline, the file's, the rest."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ioussl.plan.expand import BASELINE_GROUP
from ioussl.plan.study import Interval

if TYPE_CHECKING:
    from ioussl.registry.repo import RunRecord


def study_group_order(spec: Mapping[str, Any]) -> list[str]:
    """The study's groups as its file lists them (``studies.spec`` intervals), for :func:`order_groups`."""
    return [Interval(**interval).label for interval in spec.get("intervals", [])]


def order_groups(groups: Iterable[str], group_order: Sequence[str]) -> list[str]:
    """The one group order of status and report: the baseline, then the study's order, then the rest."""
    present = set(groups)
    head = [BASELINE_GROUP] if BASELINE_GROUP in present else []
    known = [g for g in dict.fromkeys(group_order) if g in present and g != BASELINE_GROUP]
    rest = sorted(present - set(head) - set(known))
    return head + known + rest


def in_group_order(records: Sequence[RunRecord], orders: Mapping[str, Sequence[str]]) -> list[RunRecord]:
    """Records sorted by study, then group in :func:`order_groups` order; stable within a group.

    ``orders`` maps a study name to its :func:`study_group_order`.
    """
    rank: dict[tuple[str, str], int] = {}
    for study in {record.study for record in records}:
        names = order_groups({r.group for r in records if r.study == study}, orders.get(study, ()))
        rank.update({(study, name): i for i, name in enumerate(names)})
    return sorted(records, key=lambda record: (record.study, rank[(record.study, record.group)]))
