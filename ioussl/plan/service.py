"""Services the CLI calls: one function per command, one unit of work each."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ioussl.errors import ConfigError
from ioussl.plan import expand as planning
from ioussl.plan.expand import PlannedRun
from ioussl.plan.study import StudySpec, load_study, spec_summary
from ioussl.registry import archive as archiving
from ioussl.registry import opened, repo
from ioussl.registry.db import MissingRegistry
from ioussl.registry.errors import AlreadyRecorded
from ioussl.status import ACTIVE

if TYPE_CHECKING:
    from ioussl.plan.power import Detectable


@dataclass
class PlanOutcome:
    study: str
    new: list[PlannedRun] = field(default_factory=list)
    existing: list[PlannedRun] = field(default_factory=list)
    resources_updated: int = 0
    dry_run: bool = False
    warnings: list[str] = field(default_factory=list)
    axes: dict[str, list[object]] = field(default_factory=dict)  # swept setting -> its values (file order)
    gpu_hours_per_run: dict[str, float] = field(default_factory=dict)  # stage -> GPU-hours one run requests
    detectable: Detectable | None = None  # dry run: the smallest Δ its seeds detect at 80% power
    power_note: str = ""  # dry run without a spread to compute it from: how to give one
    stale: list[str] = field(default_factory=list)  # recorded runs the study file no longer plans (not pruned)
    pruned: list[str] = field(default_factory=list)  # of those, archived by --prune
    restored: list[str] = field(default_factory=list)  # archived runs the study file plans again: visible again
    overrides: list[str] = field(default_factory=list)  # -s key=value given on the command line
    prune: bool = False  # archive the recorded runs the study file no longer plans (--prune)

    def counts(self, runs: list[PlannedRun]) -> dict[str, int]:
        """Runs per stage (pretrain, finetune) among ``runs``."""
        return {stage: sum(run.stage == stage for run in runs) for stage in ("pretrain", "finetune")}

    def gpu_hours(self, runs: list[PlannedRun]) -> float:
        """GPU-hours ``runs`` request: each stage's time limit x GPUs."""
        return sum(n * self.gpu_hours_per_run.get(stage, 0.0) for stage, n in self.counts(runs).items())


def plan_grid(study_file: str | Path, db: str | None, *, dry_run: bool = False, check_data: bool = True,
              base_dir: str | None = None, max_runs: int | None = None, sd: Sequence[float] | None = None,
              sd_from: str | None = None, prune: bool = False, overrides: Sequence[str] = ()) -> PlanOutcome:
    """Validate the study, refuse it above the size cap, expand its grid, add the runs not yet recorded.

    Race-free: the runs are written under the registry's write lock, so planners running at once create
    one study and no duplicate runs; should another process still have written a run first (a unique
    constraint fires), the plan is read again and reports those runs as already planned.
    """
    spec = load_study(study_file, base_dir=base_dir, overrides=overrides)
    planning.check_plan_size(spec, max_runs)
    planned = planning.expand_grid(spec)
    planning.check_split_files(spec)
    warnings = (planning.check_data(spec) if check_data else []) + planning.placeholder_warnings(spec)
    if dry_run:
        outcome = _dry_run(db, spec, planned, warnings, prune)
        _with_power(outcome, spec, planned, db, sd, sd_from)
        return outcome
    with opened(db, create=True) as registry:
        for last_try in (False, True):
            outcome = dataclasses.replace(_outcome(spec, warnings), prune=prune)
            try:
                with registry.session() as session:
                    return register_runs(session, spec, planned, outcome)
            except AlreadyRecorded:
                if last_try:
                    raise
    raise AssertionError("unreachable")


def _dry_run(db: str | None, spec: StudySpec, planned: list[PlannedRun], warnings: list[str],
             prune: bool = False) -> PlanOutcome:
    """What a plan would add; nothing is written (and no registry is created)."""
    outcome = dataclasses.replace(_outcome(spec, warnings), dry_run=True, prune=prune)
    with ExitStack() as stack:
        try:
            registry = stack.enter_context(opened(db, create=False))
        except MissingRegistry:  # against no registry: everything is new, and nothing is created
            registry = stack.enter_context(opened("sqlite://", create=True))
        with registry.session(write=False) as session:
            register_runs(session, spec, planned, outcome)
            session.rollback()
    return outcome


def _with_power(outcome: PlanOutcome, spec: StudySpec, planned: list[PlannedRun], db: str | None,
                sd: Sequence[float] | None, sd_from: str | None) -> None:
    """The detectable Δ of the planned seeds, from ``sd`` (a pretraining mean's SD [, a baseline run's]),
    else the spreads of study ``sd_from`` in the registry, else the study file's [report] sd/baseline_sd."""
    from ioussl.plan import power

    if sd:
        if len(sd) > 2 or not all(0 < value < 1 for value in sd):
            raise ConfigError(f"--sd takes one or two standard deviations in (0, 1), got {list(sd)}")
        spreads, source = (sd[0], sd[-1]), "given"
    elif sd_from:
        with opened(db) as registry, registry.session(write=False) as session:
            repo.find_study(session, sd_from)
            found = power.spreads_from(repo.list_runs(session, study=sd_from, stage="finetune"))
        if found is None:
            raise ConfigError(f"study {sd_from!r} has too few scored runs for a spread (2 pretrainings per setting "
                              "and 2 baseline runs at least)")
        spreads, source = found[:2], f"study {sd_from}: {found[2]} pretrainings, {found[3]} baseline runs"
    elif "sd" in spec.report:
        spreads, source = (spec.report["sd"], spec.report.get("baseline_sd", spec.report["sd"])), "[report] sd"
    else:
        outcome.power_note = ("detectable Δ: give the spread with --sd SD[,BASELINE_SD], --sd-from STUDY or "
                              "[report] sd in the study file")
        return
    settings = len({(run.group, json.dumps(dict(run.point), sort_keys=True, default=str)) for run in planned
                    if run.stage == "pretrain"})
    outcome.detectable = power.detectable(spreads[0], spreads[1], len(spec.pretrain_seeds),
                                          len(spec.baseline_seeds), settings, source)


def _outcome(spec: StudySpec, warnings: list[str]) -> PlanOutcome:
    from ioussl.resources import resources_for_run

    hours = {stage: resources_for_run(stored, where=f"[resources.{stage}]").gpu_hours()
             for stage, stored in spec.resources.items()}
    return PlanOutcome(study=spec.name, warnings=warnings, axes=spec.sweep.values(), gpu_hours_per_run=hours,
                       overrides=list(spec.overrides))


def register_runs(session, spec: StudySpec, planned: list[PlannedRun], outcome: PlanOutcome) -> PlanOutcome:
    """Record the study (and its sweep axes) and insert its runs not yet recorded, in one statement.

    Resources are not part of a run's identity: a cluster profile edited after planning (say, the account
    filled in) reaches every run that has not been submitted yet.
    """
    summary = spec_summary(spec)
    study, created = repo.get_or_create_study(
        session, spec.name, str(spec.path) if spec.path else None, summary,
        str(spec.resolve(spec.runs_dir)), str(spec.base_dir), axes=list(spec.sweep.names),
    )
    if not created and (study.spec or {}).get("notify") != summary["notify"]:
        repo.set_notify(study, summary["notify"])  # a webhook added to the profile later
    if not created and (study.spec or {}).get("report") != summary.get("report"):
        repo.set_report(study, summary.get("report"))  # [report] edited after planning
    if not created and (study.spec or {}).get("overrides") != summary.get("overrides"):
        repo.set_overrides(study, summary.get("overrides"))  # this plan's -s, for provenance
    repo.add_axes(study, spec.sweep.names)
    known = repo.existing_hashes(session, study)
    outcome.existing = [run for run in planned if run.run_hash in known]
    outcome.new = [run for run in planned if run.run_hash not in known]
    unsubmitted = repo.unsubmitted_resources(session, study) if outcome.existing else {}
    stale = {known[run.run_hash]: run.resources for run in outcome.existing
             if known[run.run_hash] in unsubmitted and unsubmitted[known[run.run_hash]] != run.resources}
    repo.set_resources(session, stale)
    outcome.resources_updated = len(stale)
    repo.add_runs(session, study, [_run_row(spec, run) for run in outcome.new])
    if not created:
        _reconcile(session, study, planned, outcome, outcome.prune)
    return outcome


def _reconcile(session, study, planned: list[PlannedRun], outcome: PlanOutcome, prune: bool) -> None:
    """Runs planned again that were archived come back; recorded runs the file no longer plans are listed
    (``stale``), and with ``prune`` archived (hidden, kept, restorable), except active ones."""
    wanted = {run.run_hash for run in planned}
    archived = archiving.archived_hashes(session, study)
    back = [archived[run_hash] for run_hash in wanted if run_hash in archived]
    archiving.restore(back)
    outcome.restored = sorted(run.id for run in back)
    stale = archiving.stale_runs(session, study, wanted)
    if prune:
        active = [run for run in stale if run.status in ACTIVE]
        archiving.archive([run for run in stale if run.status not in ACTIVE])
        outcome.pruned = sorted(run.id for run in stale if run.status not in ACTIVE)
        stale = active
        if active:
            outcome.warnings.append(f"{len(active)} run(s) no longer in the study file are still active and were "
                                    "not archived: cancel them, then plan again with --prune")
    outcome.stale = sorted(run.id for run in stale)


def _run_row(spec: StudySpec, run: PlannedRun) -> dict[str, object]:
    return {
        "id": run.key, "stage": run.stage, "group": run.group,
        "i_min": run.interval.i_min if run.interval else None, "i_max": run.interval.i_max if run.interval else None,
        "random_crop": bool(run.interval and run.interval.random_crop), "seed": run.seed,
        "pretrain_seed": run.pretrain_seed, "parent_id": run.parent_key, "config": run.config.to_json(),
        "run_hash": run.run_hash, "resources": run.resources, "point": dict(run.point),
        "run_dir": str(planning.run_dir_for(spec, run)),
    }
