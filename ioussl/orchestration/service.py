"""Services the CLI calls: one function per command, one unit of work each."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ioussl.orchestration import planning
from ioussl.orchestration.planning import PlannedRun
from ioussl.orchestration.registry import open_registry
from ioussl.orchestration.registry import repo
from ioussl.orchestration.registry.models import Run
from ioussl.orchestration.status import RunStatus
from ioussl.orchestration.study import StudySpec, load_study, spec_summary


@dataclass
class PlanOutcome:
    study: str
    new: list[PlannedRun] = field(default_factory=list)
    existing: list[PlannedRun] = field(default_factory=list)
    resources_updated: int = 0
    dry_run: bool = False


def plan_grid(study_file: str | Path, db: str | None, *, dry_run: bool = False, check_data: bool = True,
              base_dir: str | None = None) -> PlanOutcome:
    """Validate the study, expand its grid, and add the runs not yet in the registry."""
    spec = load_study(study_file, base_dir=base_dir)
    planned = planning.expand_grid(spec)
    if check_data:
        planning.check_data(spec)
    outcome = PlanOutcome(study=spec.name, dry_run=dry_run)
    registry = open_registry(db, create=not dry_run)
    try:
        with registry.session() as session:
            outcome = _register(session, spec, planned, outcome)
            if dry_run:
                session.rollback()
    finally:
        registry.dispose()
    return outcome


def _register(session, spec: StudySpec, planned: list[PlannedRun], outcome: PlanOutcome) -> PlanOutcome:
    study, _ = repo.get_or_create_study(
        session, spec.name, str(spec.path) if spec.path else None, spec_summary(spec),
        str(spec.resolve(spec.runs_dir)),
    )
    known = repo.existing_hashes(session, study)
    for run in planned:
        if run.config_hash in known:
            outcome.existing.append(run)
            row = session.get(Run, known[run.config_hash])
            # Resources are not part of a run's identity: a cluster profile edited after planning (say, the
            # account filled in) reaches every run that has not been submitted yet.
            if row is not None and row.status == RunStatus.PLANNED and row.resources != run.resources:
                row.resources = run.resources
                outcome.resources_updated += 1
            continue
        repo.add_run(
            session, study, id=run.key, stage=run.stage, group=run.group,
            i_min=run.interval.i_min if run.interval else None,
            i_max=run.interval.i_max if run.interval else None,
            random_crop=bool(run.interval and run.interval.random_crop), seed=run.seed,
            pretrain_seed=run.pretrain_seed, parent_id=run.parent_key, config=run.config.to_json(),
            config_hash=run.config_hash, resources=run.resources,
            run_dir=str(planning.run_dir_for(spec, run)),
        )
        session.flush()
        outcome.new.append(run)
    return outcome


def status_rows(db: str | None, study: str | None = None, stage: str | None = None,
                statuses: list[RunStatus] | None = None, group: str | None = None) -> list[repo.RunRecord]:
    registry = open_registry(db, create=False)
    try:
        with registry.session() as session:
            if study is not None:
                repo.find_study(session, study)
            return repo.list_runs(session, study=study, stage=stage, statuses=statuses, group=group)
    finally:
        registry.dispose()


def report_study(db: str | None, study: str | None, ddof: int = 0):  # type: ignore[no-untyped-def]
    """Table 4.2 for one study (the only one, if the registry holds just one)."""
    from ioussl.orchestration.report import build_report
    from ioussl.orchestration.study import Interval

    registry = open_registry(db, create=False)
    try:
        with registry.session() as session:
            row = repo.find_study(session, study) if study else _only_study(session)
            order = [Interval(**i).label for i in row.spec.get("intervals", [])]
            records = repo.list_runs(session, study=row.name)
    finally:
        registry.dispose()
    return build_report(records, row.name, ddof=ddof, group_order=order)


def _only_study(session):  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from ioussl.errors import ConfigError, NotFound
    from ioussl.orchestration.registry.models import Study

    studies = session.scalars(select(Study).order_by(Study.name)).all()
    if not studies:
        raise NotFound("the registry has no study yet: plan one with ioussl plan grid STUDY.toml")
    if len(studies) > 1:
        raise ConfigError(f"the registry holds several studies; pick one with --study ({', '.join(s.name for s in studies)})")
    return studies[0]
