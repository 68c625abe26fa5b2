"""The runs `ioussl status` lists, in the one group order of status and report."""

from __future__ import annotations

from ioussl.plan.order import in_group_order, study_group_order
from ioussl.registry import repo, unit_of_work
from ioussl.status import RunStatus


def status_rows(db: str | None, study: str | None = None, stage: str | None = None,
                statuses: list[RunStatus] | None = None, group: str | None = None) -> list[repo.RunRecord]:
    with unit_of_work(db, write=False) as session:
        return status_records(session, study, stage, statuses, group)


def status_records(session, study: str | None = None, stage: str | None = None,
                   statuses: list[RunStatus] | None = None, group: str | None = None) -> list[repo.RunRecord]:
    """The runs ``status`` lists, in report group order (inside the caller's unit of work)."""
    if study is not None:
        repo.find_study(session, study)
    records = repo.list_runs(session, study=study, stage=stage, statuses=statuses, group=group)
    orders = {row.name: study_group_order(row.spec) for row in repo.list_studies(session)}
    return in_group_order(records, orders)
