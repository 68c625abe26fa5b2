"""Services the CLI calls: one function per command, one unit of work each."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from ioussl.errors import DataError
from ioussl.orchestration import planning
from ioussl.orchestration.planning import PlannedRun
from ioussl.orchestration.registry import open_registry, repo
from ioussl.orchestration.registry.db import MissingRegistry
from ioussl.orchestration.registry.models import Run, Study
from ioussl.orchestration.report import Report, in_group_order, order_groups, study_group_order
from ioussl.orchestration.status import RunStatus
from ioussl.orchestration.study import StudySpec, load_study, spec_summary


@dataclass
class PlanOutcome:
    study: str
    new: list[PlannedRun] = field(default_factory=list)
    existing: list[PlannedRun] = field(default_factory=list)
    resources_updated: int = 0
    dry_run: bool = False
    warnings: list[str] = field(default_factory=list)


def plan_grid(study_file: str | Path, db: str | None, *, dry_run: bool = False, check_data: bool = True,
              base_dir: str | None = None) -> PlanOutcome:
    """Validate the study, expand its grid, and add the runs not yet in the registry."""
    spec = load_study(study_file, base_dir=base_dir)
    planned = planning.expand_grid(spec)
    warnings = (planning.check_data(spec) if check_data else []) + planning.placeholder_warnings(spec)
    outcome = PlanOutcome(study=spec.name, dry_run=dry_run, warnings=warnings)
    registry = _open_for_plan(db, dry_run)
    try:
        with registry.session() as session:
            outcome = register_runs(session, spec, planned, outcome)
            if dry_run:
                session.rollback()
    finally:
        registry.dispose()
    return outcome


def _open_for_plan(db: str | None, dry_run: bool):  # type: ignore[no-untyped-def]
    if not dry_run:
        return open_registry(db, create=True)
    try:
        return open_registry(db, create=False)
    except MissingRegistry:  # a dry run against no registry: everything is new, and nothing is created
        return open_registry("sqlite://", create=True)


def register_runs(session, spec: StudySpec, planned: list[PlannedRun], outcome: PlanOutcome) -> PlanOutcome:
    study, _ = repo.get_or_create_study(
        session, spec.name, str(spec.path) if spec.path else None, spec_summary(spec),
        str(spec.resolve(spec.runs_dir)), str(spec.base_dir),
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
            records = repo.list_runs(session, study=study, stage=stage, statuses=statuses, group=group)
            orders = {row.name: study_group_order(row.spec) for row in session.scalars(select(Study))}
            return in_group_order(records, orders)
    finally:
        registry.dispose()


@dataclass
class ReportOutcome:
    report: Report
    plots: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one line per figure not drawn, and why


def report_study(db: str | None, study: str | None, ddof: int = 0, plot_dir: Path | None = None,
                 pairs_json: Path | None = None) -> ReportOutcome:
    """Table 4.2 for one study (the only one, if the registry holds just one), optionally with figures."""
    from ioussl.orchestration.report import build_report

    registry = open_registry(db, create=False)
    try:
        with registry.session() as session:
            row = repo.find_study(session, study) if study else _only_study(session)
            order = study_group_order(row.spec)
            records = repo.list_runs(session, study=row.name)
            footer = provenance_footer(session, records, registry.location)
            curves = _collapse_curves(session, records, order) if plot_dir else {}
    finally:
        registry.dispose()
    report = build_report(records, row.name, ddof=ddof, group_order=order)
    report = dataclasses.replace(report, footer=footer)
    outcome = ReportOutcome(report)
    if plot_dir:
        _write_plots(outcome, curves, records, plot_dir, pairs_json)
    return outcome


def provenance_footer(session, records: list[repo.RunRecord], location: str) -> tuple[str, ...]:  # type: ignore[no-untyped-def]
    """Which code produced the numbers, and a fingerprint of the registry rows they come from."""
    fingerprint = hashlib.sha256(
        "\n".join(f"{r.id}:{r.status.value}:{r.dsc!r}:{r.dsc_3d!r}" for r in sorted(records, key=lambda r: r.id))
        .encode()
    ).hexdigest()[:16]
    commits = repo.result_commits(session, [r.id for r in records])
    code = ", ".join(f"{commit} ({n} run(s))" for commit, n in sorted(commits.items())) or "none recorded"
    imported = sum(r.imported and r.stage == "finetune" for r in records)
    lines = [f"registry {location}, fingerprint {fingerprint} over {len(records)} run(s)",
             f"code of the recorded results: {code}"]
    if imported:
        lines.append(f"{imported} fine-tune result(s) imported from outside ioussl (see ioussl status --json)")
    return tuple(lines)


Curves = dict[str, list[list[tuple[int, float]]]]  # group -> one (epoch, value) series per pretrain


def _collapse_curves(session, records: list[repo.RunRecord], order: list[str]) -> Curves:  # type: ignore[no-untyped-def]
    pretrains = [r for r in records if r.stage == "pretrain"]
    series = repo.metric_series(session, [r.id for r in pretrains], "collapse")
    curves: Curves = {}
    for record in pretrains:
        if record.id in series:
            curves.setdefault(record.group, []).append(series[record.id])
    return {group: curves[group] for group in order_groups(curves, order)}


def _write_plots(outcome: ReportOutcome, curves: Curves, records: list[repo.RunRecord], plot_dir: Path,
                 pairs_json: Path | None) -> None:
    from ioussl.orchestration import plots

    if any(row.values for row in outcome.report.rows):
        outcome.plots.append(plots.plot_dsc(outcome.report, plot_dir / "dsc_per_group.png"))
    if curves:
        outcome.plots.append(plots.plot_collapse(curves, plot_dir / "collapse_per_epoch.png"))
    else:
        outcome.skipped.append(f"collapse plot skipped: {_no_collapse_reason(records)}")
    if pairs_json is not None:
        outcome.plots.append(plots.plot_pairs(plots.read_pairs(pairs_json), plot_dir / "pair_semantics.png"))
    if not outcome.plots:
        raise DataError("nothing to plot yet: no DSC, no collapse series and no pair analysis")


def _no_collapse_reason(records: list[repo.RunRecord]) -> str:
    pretrains = [r for r in records if r.stage == "pretrain"]
    imported = sum(r.imported for r in pretrains)
    if not pretrains:
        return "the study has no pretraining runs"
    if imported == len(pretrains):
        return (f"its {imported} pretrain(s) are imported results (ioussl import results), which carry no "
                "per-epoch collapse series")
    return f"none of its {len(pretrains)} pretrain(s) has recorded a collapse value yet"


def _only_study(session):  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from ioussl.errors import ConfigError, NotFound
    from ioussl.orchestration.registry.models import Study

    studies = session.scalars(select(Study).order_by(Study.name)).all()
    if not studies:
        raise NotFound("the registry has no study yet: plan one with ioussl plan grid STUDY.toml")
    if len(studies) > 1:
        names = ", ".join(s.name for s in studies)
        raise ConfigError(f"the registry holds several studies; pick one with --study ({names})")
    return studies[0]
