"""Archiving runs: hidden from status, report and submit, kept in the registry, restorable.

A run is archived by setting ``runs.archived_at`` (schema v3); nothing else about it changes, so its attempts,
result and metrics come back with it. Listings leave archived runs out through ``repo.NOT_ARCHIVED``.
Functions take a Session and never commit (the caller's unit of work does).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from ioussl.registry.models import Run, Study, utcnow

CHUNK = 5000


def with_fine_tunes(session: Session, runs: Sequence[Run]) -> list[Run]:
    """``runs`` and the not-yet-archived fine-tunes of the pretrains among them (a fine-tune is meaningless
    without its encoder, so it follows its pretrain into the archive)."""
    chosen = {run.id: run for run in runs}
    pretrains = [run.id for run in runs if run.stage == "pretrain"]
    if pretrains:
        children = select(Run).where(Run.parent_id.in_(pretrains), Run.archived_at.is_(None))
        for child in session.scalars(children):
            chosen.setdefault(child.id, child)
    return list(chosen.values())


def with_pretrains(session: Session, runs: Sequence[Run]) -> list[Run]:
    """``runs`` and their archived pretrains (a restored fine-tune needs its pretrain visible again)."""
    chosen = {run.id: run for run in runs}
    for run in runs:
        parent = run.parent
        if parent is not None and parent.archived_at is not None:
            chosen.setdefault(parent.id, parent)
    return list(chosen.values())


def archive(runs: Iterable[Run]) -> None:
    now = utcnow()
    for run in runs:
        run.archived_at = now


def restore(runs: Iterable[Run]) -> None:
    for run in runs:
        run.archived_at = None


def stale_runs(session: Session, study: Study, wanted_hashes: set[str]) -> list[Run]:
    """The study's visible runs whose identity the study file no longer plans (for ``plan grid --prune``).

    Identities are compared on two plain columns; only the stale runs are loaded as rows (a 10,000-run sweep
    planned again reads no configs)."""
    rows = session.execute(select(Run.id, Run.run_hash).where(Run.study_id == study.id, Run.archived_at.is_(None)))
    stale = [run_id for run_id, run_hash in rows if run_hash not in wanted_hashes]
    chunks = (stale[i:i + CHUNK] for i in range(0, len(stale), CHUNK))  # under every database's parameter limit
    return [run for chunk in chunks for run in session.scalars(select(Run).where(Run.id.in_(chunk)))]


def archived_hashes(session: Session, study: Study) -> dict[str, Run]:
    """run_hash -> archived run of the study (planned again, they are restored)."""
    query = select(Run).where(Run.study_id == study.id, Run.archived_at.is_not(None))
    return {run.run_hash: run for run in session.scalars(query)}
