"""Registry access: every query ioussl makes lives here.

Functions take a Session and never commit (the caller's unit of work does). Listings for reports and
renderers return frozen records, not ORM rows, so sessions do not leak; the services that change runs get
ORM rows (with their attempts loaded) to change in place.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

from sqlalchemy import Text, cast, func, insert, select, update
from sqlalchemy.orm import Session, aliased, selectinload

from ioussl.errors import ConfigError, NotFound
from ioussl.registry.models import (
    Attempt,
    Metric,
    Notification,
    Provenance,
    Result,
    Run,
    Study,
    utcnow,
)
from ioussl.status import ACTIVE, DEAD_PARENT, RunStatus, check_attempt_transition, check_transition

NODE_CHARS = 255  # attempts.node
NOT_ARCHIVED = Run.archived_at.is_(None)  # archived runs are hidden from listings, reports and submit
RESULT_COLUMNS = frozenset({
    "dsc", "dsc_3d", "per_case", "per_organ", "best_epoch", "checkpoint_path", "checkpoint_sha256", "test_dsc",
    "test_dsc_3d", "flare_dsc", "flare_nsd", "flare_part",
})


class RunRecord(NamedTuple):
    """A run as listings show it: its row, its latest attempt and its result (read-only).

    A named tuple rather than a frozen dataclass: ``list_runs`` builds one per run straight from a query row,
    and a frozen dataclass' ``__init__`` (one ``object.__setattr__`` per field) cost a third of reading a
    10,000-run sweep.
    """

    id: str
    study: str
    stage: str
    group: str
    i_min: float | None
    i_max: float | None
    random_crop: bool
    seed: int
    pretrain_seed: int | None
    parent_id: str | None
    status: RunStatus
    status_reason: str | None
    run_dir: str
    imported: bool
    job_id: str | None
    attempts: int
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    dsc: float | None
    dsc_3d: float | None
    # Held-out test cases' per-slice DSC and FLARE 2022's evaluation (None where not recorded).
    test_dsc: float | None = None
    flare_dsc: float | None = None
    flare_nsd: float | None = None
    flare_part: str | None = None  # "val" or "test": the cases FLARE scored
    point: Mapping[str, Any] = MappingProxyType({})  # runs.point: the swept settings reaching this run
    requeue_reasons: tuple[str, ...] = ()  # the latest attempt's requeues (preempted, time limit), in order
    world_size: int | None = None  # the latest attempt's processes (one per GPU), when the job said

    @property
    def elapsed_s(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.ended_at or utcnow()
        return max(0.0, (end - self.started_at).total_seconds())


def find_study(session: Session, name: str) -> Study:
    study = session.scalar(select(Study).where(Study.name == name))
    if study is None:
        known = session.scalars(select(Study.name).order_by(Study.name)).all()
        hint = f"; known studies: {', '.join(known)}" if known else "; the registry has no study yet"
        raise NotFound(f"unknown study {name!r}{hint}")
    return study


def list_studies(session: Session, name: str | None = None) -> list[Study]:
    """Every study (or the one named), by name."""
    query = select(Study).order_by(Study.name)
    if name is not None:
        query = query.where(Study.name == name)
    return list(session.scalars(query))


def only_study(session: Session, what: str = "report") -> Study:
    """The registry's one study; an error naming them when there are several, or none."""
    studies = list_studies(session)
    if not studies:
        raise NotFound("the registry has no study yet: plan one with ioussl plan grid STUDY.toml")
    if len(studies) > 1:
        names = ", ".join(s.name for s in studies)
        raise ConfigError(f"the registry holds several studies; name the one to {what} with --study ({names})")
    return studies[0]


def study_has_runs(session: Session, study: Study) -> bool:
    return session.scalar(select(Run.id).where(Run.study_id == study.id).limit(1)) is not None


def get_or_create_study(session: Session, name: str, spec_path: str | None, spec: dict[str, Any],
                        runs_dir: str, base_dir: str = ".", axes: list[str] | None = None) -> tuple[Study, bool]:
    study = session.scalar(select(Study).where(Study.name == name))
    if study is not None:
        return study, False
    study = Study(name=name, spec_path=spec_path, spec=spec, runs_dir=runs_dir, base_dir=base_dir,
                  axes=list(axes or []))
    session.add(study)
    session.flush()
    return study, True


def add_axes(study: Study, names: Sequence[str]) -> None:
    """A study planned again with more sweep axes keeps its old ones and appends the new (file order)."""
    new = [name for name in names if name not in (study.axes or [])]
    if new:
        study.axes = [*(study.axes or []), *new]


def set_notify(study: Study, notify: Any) -> None:
    """A study's ``[notify]`` settings (a webhook added to its cluster profile after it was planned)."""
    study.spec = {**(study.spec or {}), "notify": notify}


def set_overrides(study: Study, overrides: Any) -> None:
    """The ``plan grid -s key=value`` overrides of a study's latest plan, for its provenance."""
    study.spec = {**(study.spec or {}), "overrides": overrides}


def set_report(study: Study, report: Any) -> None:
    """A study's ``[report]`` settings (the headline metric), edited after it was planned."""
    study.spec = {**(study.spec or {}), "report": report}


def run_or_none(session: Session, run_id: str) -> Run | None:
    """A run by its exact id."""
    return session.get(Run, run_id)


def get_run(session: Session, run_id: str) -> Run:
    """A run by id or unique id prefix (at least 4 characters)."""
    run = session.get(Run, run_id)
    if run is not None:
        return run
    if len(run_id) >= 4:
        matches = session.scalars(select(Run).where(Run.id.startswith(run_id, autoescape=True)).limit(2)).all()
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise NotFound(f"run id prefix {run_id!r} is ambiguous")
    elif run_id:
        raise NotFound(f"unknown run {run_id!r}: a run id prefix needs at least 4 characters "
                       "(ioussl status lists the ids)")
    raise NotFound(f"unknown run {run_id!r}")


def existing_hashes(session: Session, study: Study) -> dict[str, str]:
    """run_hash -> run id for every run of the study."""
    rows = session.execute(select(Run.run_hash, Run.id).where(Run.study_id == study.id))
    return {run_hash: run_id for run_hash, run_id in rows}


def study_runs(session: Session, study: str) -> list[Run]:
    """Every run of a study but the archived, with attempts and parent loaded (submission plans from these)."""
    query = (
        select(Run)
        .join(Study, Run.study_id == Study.id)
        .where(Study.name == study, NOT_ARCHIVED)
        .options(selectinload(Run.attempts), selectinload(Run.parent))
    )
    return list(session.scalars(query))


def select_runs(session: Session, study: str | None = None, run_ids: Sequence[str] = (), group: str | None = None,
                statuses: Sequence[RunStatus] | None = None, *, archived: bool | None = False) -> list[Run]:
    """Runs by study, id (or unique prefix), group and status, with their attempts (cancel, retry).

    ``archived``: False (default) leaves archived runs out, True selects only them, None both.
    """
    query = select(Run).join(Study, Run.study_id == Study.id).options(selectinload(Run.attempts))
    if archived is not None:
        query = query.where(Run.archived_at.is_not(None) if archived else NOT_ARCHIVED)
    if study is not None:
        query = query.where(Study.name == study)
    if run_ids:
        query = query.where(Run.id.in_([get_run(session, r).id for r in run_ids]))
    if group is not None:
        query = query.where(Run.group == group)
    if statuses is not None:
        query = query.where(Run.status.in_(list(statuses)))
    return list(session.scalars(query))


def group_names(session: Session, study: str | None = None) -> list[str]:
    """The distinct report groups of a study (of every study when none is named)."""
    query = select(Run.group).join(Study, Run.study_id == Study.id).distinct()
    if study is not None:
        query = query.where(Study.name == study)
    return list(session.scalars(query))


def children_of(session: Session, run_id: str, statuses: Sequence[RunStatus]) -> list[Run]:
    """The fine-tunes of a pretrain that are in one of ``statuses``."""
    return list(session.scalars(select(Run).where(Run.parent_id == run_id, Run.status.in_(list(statuses)))))


def fetch_active(session: Session, study: str | None = None) -> list[Run]:
    """Runs the scheduler may hold a job for, and fine-tunes waiting on a pretrain that died (for sync)."""
    parent = aliased(Run)
    active = select(Run).where(Run.status.in_(list(ACTIVE)))
    orphaned = (
        select(Run)
        .join(parent, Run.parent_id == parent.id)
        .where(Run.status.in_([RunStatus.PLANNED, *ACTIVE]), parent.status.in_(list(DEAD_PARENT)))
    )
    if study is not None:
        active = active.join(Study, Run.study_id == Study.id).where(Study.name == study)
        orphaned = orphaned.join(Study, Run.study_id == Study.id).where(Study.name == study)
    options = (selectinload(Run.attempts), selectinload(Run.parent), selectinload(Run.study))
    runs = {run.id: run for run in session.scalars(active.options(*options))}
    runs.update({run.id: run for run in session.scalars(orphaned.options(*options))})
    return list(runs.values())


def waiting_for_submit(session: Session, study: str | None = None, group: str | None = None) -> list[str]:
    """Fine-tunes still PLANNED although their pretrain COMPLETED: nothing chained them (say, a local
    submit was interrupted), so only ``ioussl submit`` will start them."""
    parent = aliased(Run)
    query = (
        select(Run.id)
        .join(parent, Run.parent_id == parent.id)
        .where(Run.status == RunStatus.PLANNED, parent.status == RunStatus.COMPLETED, NOT_ARCHIVED)
        .order_by(Run.id)
    )
    if study is not None:
        query = query.join(Study, Run.study_id == Study.id).where(Study.name == study)
    if group is not None:
        query = query.where(Run.group == group)
    return list(session.scalars(query))


def open_intents(session: Session) -> list[Attempt]:
    """Attempts recorded before sbatch whose job id never arrived (a submit killed in between)."""
    return list(session.scalars(
        select(Attempt)
        .join(Run, Attempt.run_id == Run.id)
        .where(Attempt.job_id.is_(None), Attempt.status == RunStatus.SUBMITTING, Run.status == RunStatus.SUBMITTING)
    ))


def known_job_ids(session: Session) -> set[str]:
    return set(session.scalars(select(Attempt.job_id).where(Attempt.job_id.is_not(None))))


def add_attempt(session: Session, **fields: Any) -> Attempt:
    attempt = Attempt(**fields)
    session.add(attempt)
    return attempt


def add_run(session: Session, study: Study, **fields: Any) -> Run:
    run = Run(study_id=study.id, status=RunStatus.PLANNED, **fields)
    session.add(run)
    return run


def add_runs(session: Session, study: Study, rows: Sequence[dict[str, Any]]) -> None:
    """Insert planned runs in one executemany (a pretrain listed before its fine-tunes); a run recorded
    meanwhile by another process raises the unique constraint (AlreadyRecorded) and nothing is written."""
    if rows:
        now = utcnow()
        session.execute(insert(Run), [{"study_id": study.id, "status": RunStatus.PLANNED, "created_at": now,
                                       "updated_at": now, "imported": False, **row} for row in rows])


def unsubmitted_resources(session: Session, study: Study) -> dict[str, dict[str, Any]]:
    """Run id -> stored resources of the study's PLANNED runs (which a re-plan may still update)."""
    rows = session.execute(select(Run.id, Run.resources).where(Run.study_id == study.id,
                                                              Run.status == RunStatus.PLANNED))
    return {run_id: resources for run_id, resources in rows}


def set_resources(session: Session, resources: dict[str, dict[str, Any]]) -> None:
    """New resources for unsubmitted runs, by run id (one executemany)."""
    if resources:
        now = utcnow()
        session.execute(update(Run), [{"id": run_id, "resources": value, "updated_at": now}
                                      for run_id, value in resources.items()])


def set_status(session: Session, run: Run, new: RunStatus, reason: str | None = None) -> bool:
    """Move a run through the transition table; returns whether anything changed."""
    old = RunStatus(run.status)
    check_transition(old, new)
    if old == new and reason is None:
        return False
    run.status = new
    if reason is not None:
        run.status_reason = reason
    run.updated_at = utcnow()
    return old != new


def mark_imported(run: Run) -> None:
    """The run's result came from elsewhere (``ioussl import results``), not from a job."""
    run.imported = True


def set_attempt_status(attempt: Attempt, new: RunStatus, reason: str | None = None) -> None:
    """Move an attempt through its transition table (``status.ATTEMPT_ALLOWED``): an ended job stays ended."""
    check_attempt_transition(RunStatus(attempt.status), new)
    attempt.status = new
    if reason is not None:
        attempt.reason = reason


def set_attempt_job(attempt: Attempt, job_id: str, new: RunStatus, reason: str | None = None) -> None:
    """The job id of an attempt whose submission the scheduler took (an array task as "12_3")."""
    set_attempt_status(attempt, new, reason)
    attempt.job_id = job_id
    attempt.array_job_id = job_id.split("_")[0] if "_" in job_id else None


def record_misses(attempt: Attempt, misses: int, reason: str | None) -> None:
    """How many syncs in a row the scheduler did not list the attempt's job, and why (None keeps the reason)."""
    attempt.misses = misses
    if reason is not None:
        attempt.reason = reason


def record_job_report(attempt: Attempt, *, state: str, exit_code: str | None, node: str | None,
                      started_at: dt.datetime | None, ended_at: dt.datetime | None) -> None:
    """What the scheduler said of the attempt's job; a value it did not give keeps the recorded one."""
    attempt.scheduler_state = state
    if exit_code is not None:
        attempt.exit_code = exit_code
    attempt.node = (node or attempt.node or "")[:NODE_CHARS] or None
    attempt.started_at = started_at or attempt.started_at
    attempt.ended_at = ended_at or attempt.ended_at


def fill_attempt_times(attempt: Attempt, started_at: dt.datetime | None, ended_at: dt.datetime | None) -> None:
    """Times the job's own events give, where the scheduler gave none."""
    attempt.started_at = attempt.started_at or started_at
    attempt.ended_at = attempt.ended_at or ended_at


def record_result(session: Session, run: Run, columns: dict[str, Any], payload: dict[str, Any], *,
                  imported: bool = False, source: str | None = None) -> Result:
    """Store (or replace, for the same run) the result; the caller moves the status to COMPLETED.

    ``columns`` are the validated column values (resultcheck.check_result, or an import's checked CSV row);
    ``payload`` is kept whole for provenance and never read back into a column.
    """
    unknown = set(columns) - RESULT_COLUMNS
    if unknown:
        raise ValueError(f"not result columns: {sorted(unknown)}")
    result = run.result or Result(run_id=run.id)
    for name in RESULT_COLUMNS:
        setattr(result, name, columns.get(name))
    result.payload = payload
    result.imported = imported
    result.source = source
    if run.result is None:
        session.add(result)
        run.result = result
    return result


def record_metrics(session: Session, run_id: str, points: Iterable[tuple[str, int, int | None, float]]) -> int:
    """Insert (name, epoch, step, value) points not yet stored; returns how many were new."""
    have: set[tuple[str, int]] = {(name, epoch) for name, epoch in
                                   session.execute(select(Metric.name, Metric.epoch).where(Metric.run_id == run_id))}
    added = 0
    for name, epoch, step, value in points:
        if (name, epoch) in have:
            continue
        session.add(Metric(run_id=run_id, name=name, epoch=epoch, step=step, value=value))
        have.add((name, epoch))
        added += 1
    return added


def record_provenance(session: Session, run_id: str, info: dict[str, Any]) -> None:
    row = session.get(Provenance, run_id) or Provenance(run_id=run_id)
    row.git_commit = info.get("git_commit")
    row.git_dirty = info.get("git_dirty")
    row.packages = info.get("packages", {})
    row.host = info.get("host")
    row.device = info.get("device")
    session.merge(row)


def runs_of(studies: Iterable[str], stage: str | None = None):
    """The ids of the runs of ``studies`` (of ``stage``), as a subquery to filter by.

    Queries over a whole study filter by it rather than by a list of its run ids: a sweep's 10,000 ids are
    10,000 bound parameters, near SQLite's limit (32,766) and PostgreSQL's (65,535) for larger registries.
    """
    query = (select(Run.id).join(Study, Run.study_id == Study.id)
             .where(Study.name.in_(sorted(set(studies))), NOT_ARCHIVED))
    return query.where(Run.stage == stage) if stage is not None else query


def metric_series(session: Session, studies: Iterable[str], stage: str,
                  name: str) -> dict[str, list[tuple[int, float]]]:
    """Run id -> its (epoch, value) series of metric ``name``, for every run of ``stage`` in ``studies``."""
    rows = session.execute(
        select(Metric.run_id, Metric.epoch, Metric.value)
        .where(Metric.run_id.in_(runs_of(studies, stage)), Metric.name == name)
        .order_by(Metric.run_id, Metric.epoch)
    )
    series: dict[str, list[tuple[int, float]]] = {}
    for run_id, epoch, value in rows:
        series.setdefault(run_id, []).append((epoch, value))
    return series


def result_per_organ(session: Session, studies: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Fine-tune run id -> {"val": per_organ, "test": the test part's per_organ}: the recorded per-organ DSC
    dicts of ``studies``."""
    rows = session.execute(select(Result.run_id, Result.per_organ, Result.payload)
                           .where(Result.run_id.in_(runs_of(studies, "finetune"))))
    found: dict[str, dict[str, Any]] = {}
    for run_id, per_organ, payload in rows:
        test = payload.get("test") if isinstance(payload, dict) else None
        found[run_id] = {"val": per_organ, "test": test.get("per_organ") if isinstance(test, dict) else None}
    return found


def result_commits(session: Session, studies: Iterable[str]) -> dict[str, int]:
    """Short git commit (with '-dirty') -> number of runs of ``studies`` whose result that code produced."""
    rows = session.execute(
        select(Provenance.git_commit, Provenance.git_dirty).where(Provenance.run_id.in_(runs_of(studies)))
    )
    counts: dict[str, int] = {}
    for commit, dirty in rows:
        key = f"{(commit or 'unknown')[:10]}{'-dirty' if dirty else ''}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def study_status_counts(session: Session, study_id: int) -> dict[RunStatus, int]:
    """How many runs of the study (archived ones left out) are in each status."""
    rows = session.execute(select(Run.status, func.count()).where(Run.study_id == study_id, NOT_ARCHIVED)
                           .group_by(Run.status))
    return {RunStatus(status): n for status, n in rows}


def notification_keys(session: Session, study_id: int, keys: Iterable[str]) -> set[str]:
    """Which of ``keys`` the study has already queued (each event is queued once)."""
    wanted = list(set(keys))
    if not wanted:
        return set()
    query = select(Notification.key).where(Notification.study_id == study_id, Notification.key.in_(wanted))
    return set(session.scalars(query))


def add_notifications(session: Session, rows: Iterable[Mapping[str, Any]]) -> None:
    """Queue notifications (each key once per study: see ``notification_keys``), flushed so a later query
    of this unit of work sees them."""
    session.add_all([Notification(**fields) for fields in rows])
    session.flush()


def unsent_notifications(session: Session, study_id: int, *, claimed_before: dt.datetime, fresh_only: bool,
                         limit: int) -> list[Notification]:
    """Notifications to send, oldest first: never claimed, or claimed before ``claimed_before`` by a sync
    that never said how delivery went (it was killed); ``fresh_only``: only those never tried."""
    unconfirmed = (Notification.tries == 0) & Notification.sent_at.is_not(None) & (
        Notification.sent_at < claimed_before)
    query = select(Notification).where(Notification.study_id == study_id,
                                       Notification.sent_at.is_(None) | unconfirmed)
    if fresh_only:
        query = query.where(Notification.tries == 0)
    return list(session.scalars(query.order_by(Notification.id).limit(limit)))


def claim_notifications(rows: Iterable[Notification], now: dt.datetime) -> None:
    """Mark notifications as being sent (a concurrent sync leaves them alone until the outcome is recorded)."""
    for row in rows:
        row.sent_at = now


def record_delivery(session: Session, notification_id: int, error: str | None) -> int | None:
    """How one claimed notification's delivery went: sent, or released for the next sync with the error.
    Returns how often it was tried (None when the row is gone)."""
    row = session.get(Notification, notification_id)
    if row is None:
        return None
    row.tries = (row.tries or 0) + 1
    row.error = error
    row.sent_at = utcnow() if error is None else None
    return row.tries


def release_notification(session: Session, notification_id: int) -> None:
    """Give back a claimed notification that was not tried (the next sync sends it)."""
    row = session.get(Notification, notification_id)
    if row is not None:
        row.sent_at = None


def has_unsent_notifications(session: Session, study: str) -> bool:
    """Whether the study has a notification not delivered yet (checked before any write lock is taken)."""
    query = (select(Notification.id).join(Study, Notification.study_id == Study.id)
             .where(Study.name == study, Notification.sent_at.is_(None) | (Notification.tries == 0)).limit(1))
    return session.scalar(query) is not None


def study_runs_dirs(session: Session) -> dict[str, str]:
    """Study name -> runs directory, for every study (sync works study by study)."""
    return {name: runs_dir for name, runs_dir in session.execute(select(Study.name, Study.runs_dir))}


def _latest_attempts():
    """Per run its latest attempt's id (``last_id``) and attempt count (``n``), and an alias to join it by."""
    latest = (
        select(Attempt.run_id, func.max(Attempt.id).label("last_id"), func.count(Attempt.id).label("n"))
        .group_by(Attempt.run_id)
        .subquery()
    )
    return latest, aliased(Attempt)


def list_runs(session: Session, study: str | None = None, stage: str | None = None,
              statuses: Sequence[RunStatus] | None = None, group: str | None = None,
              archived: bool = False) -> list[RunRecord]:
    """Every matching run with its latest attempt and result, in one query; ``archived``: the archived runs
    instead of the others (which status, report and exports show)."""
    latest, last = _latest_attempts()
    # Plain columns, not ORM entities: 10,000 runs load in a fraction of the time (no config text, no
    # identity map), which keeps `status` and `report` under a second on a large registry.
    query = (
        select(
            Run.id, Study.name, Run.stage, Run.group, Run.i_min, Run.i_max, Run.random_crop, Run.seed,
            Run.pretrain_seed, Run.parent_id, Run.status, Run.status_reason, Run.run_dir, Run.imported,
            last.job_id, latest.c.n, last.started_at, last.ended_at, Result.dsc, Result.dsc_3d,
            Result.test_dsc, Result.flare_dsc, Result.flare_nsd, Result.flare_part, cast(Run.point, Text),
            cast(last.requeues, Text), last.world_size,
        )
        .join(Study, Run.study_id == Study.id)
        .outerjoin(latest, latest.c.run_id == Run.id)
        .outerjoin(last, last.id == latest.c.last_id)
        .outerjoin(Result, Result.run_id == Run.id)
        # NULLS FIRST spelled out: SQLite and PostgreSQL order NULLs differently by default.
        .order_by(Study.name, Run.group, Run.stage.desc(), Run.pretrain_seed.asc().nulls_first(), Run.seed, Run.id)
    )
    query = query.where(Run.archived_at.is_not(None) if archived else NOT_ARCHIVED)
    if study is not None:
        query = query.where(Study.name == study)
    if stage is not None:
        query = query.where(Run.stage == stage)
    if statuses:
        query = query.where(Run.status.in_(list(statuses)))
    if group is not None:
        query = query.where(Run.group == group)
    points = JsonTexts()
    session.flush()  # Core below does not autoflush: the caller's pending changes must be in what it reads
    # Core, not the ORM (no ORM row processing for 10,000 rows), fetched at once; the columns are selected in
    # RunRecord's field order, so a record is the row with its attempt count and point filled in. Status and
    # the booleans arrive converted by their column types (Enum, Boolean).
    rows = session.connection().execute(query).fetchall()
    requeues = JsonTexts()
    return [
        RunRecord._make((*row[:15], row[15] or 0, *row[16:24], points.load(row[24]),
                         _reasons(requeues, row[25]), row[26]))
        for row in rows
    ]


def _reasons(texts: JsonTexts, text: str | None) -> tuple[str, ...]:
    """The reasons of an attempt's requeues (``attempts.requeues``), in order."""
    entries = texts.load(text, default=[])
    return tuple(str(e.get("reason", "unknown")) for e in entries if isinstance(e, dict))


class JsonTexts:
    """JSON columns read as text and decoded once per distinct text (the runs of a sweep share few points).

    The decoded values are shared between rows: callers treat them as read-only.
    """

    def __init__(self) -> None:
        self._seen: dict[str | None, Any] = {}

    def load(self, text: str | None, default: Any = None) -> Any:
        if text not in self._seen:
            self._seen[text] = json.loads(text) if text is not None else None
        value = self._seen[text]
        return ({} if default is None else default) if value is None else value



# ---- exports (ioussl export, ioussl.api): plain columns, one query each, no ORM objects ----

EXPORT_RUN_COLUMNS = (
    "run_id", "study", "stage", "interval", "i_min", "i_max", "random_crop", "seed", "pretrain_seed", "parent",
    "point", "status", "status_reason", "imported", "resources", "attempts", "job_id", "run_dir", "dsc", "dsc_3d",
    "test_dsc", "test_dsc_3d", "flare_dsc", "flare_nsd", "flare_part", "per_organ", "best_epoch",
    "checkpoint_path", "checkpoint_sha256",
)


def export_runs(session: Session, studies: Sequence[str]) -> list[tuple[Any, ...]]:
    """Every run of ``studies`` with its result, latest job and attempt count: EXPORT_RUN_COLUMNS per row.

    ``point`` and ``per_organ`` come decoded (``{}`` when absent); ``resources`` as its JSON text (runs of one
    stage share it: the caller parses each text once).
    """
    latest, last = _latest_attempts()
    query = (
        select(
            Run.id, Study.name, Run.stage, Run.group, Run.i_min, Run.i_max, Run.random_crop, Run.seed,
            Run.pretrain_seed, Run.parent_id, cast(Run.point, Text), Run.status, Run.status_reason, Run.imported,
            cast(Run.resources, Text), latest.c.n, last.job_id, Run.run_dir, Result.dsc, Result.dsc_3d,
            Result.test_dsc, Result.test_dsc_3d, Result.flare_dsc, Result.flare_nsd, Result.flare_part,
            cast(Result.per_organ, Text), Result.best_epoch, Result.checkpoint_path, Result.checkpoint_sha256,
        )
        .join(Study, Run.study_id == Study.id)
        .outerjoin(latest, latest.c.run_id == Run.id)
        .outerjoin(last, last.id == latest.c.last_id)
        .outerjoin(Result, Result.run_id == Run.id)
        .where(Study.name.in_(list(studies)), NOT_ARCHIVED)
        .order_by(Study.name, Run.group, Run.stage.desc(), Run.pretrain_seed.asc().nulls_first(), Run.seed, Run.id)
    )
    texts = JsonTexts()
    point, organs = EXPORT_RUN_COLUMNS.index("point"), EXPORT_RUN_COLUMNS.index("per_organ")
    rows = []
    session.flush()  # as list_runs: Core does not autoflush
    for row in session.connection().execute(query):
        cells = list(row)
        cells[point], cells[organs] = texts.load(cells[point]), texts.load(cells[organs])
        rows.append(tuple(cells))
    return rows


def attempt_spans(session: Session, studies: Sequence[str]) -> list[tuple[str, dt.datetime, dt.datetime | None]]:
    """(run id, started, ended or None) of every attempt of ``studies`` that started (GPU time used)."""
    query = (
        select(Attempt.run_id, Attempt.started_at, Attempt.ended_at)
        .join(Run, Attempt.run_id == Run.id)
        .join(Study, Run.study_id == Study.id)
        .where(Study.name.in_(list(studies)), Attempt.started_at.is_not(None))
    )
    return [tuple(row) for row in session.execute(query)]  # type: ignore[misc]


def export_metrics(session: Session, studies: Sequence[str], run_ids: Sequence[str] = (),
                   names: Sequence[str] = (), stage: str | None = None) -> list[tuple[Any, ...]]:
    """Metric points (run id, name, epoch, step, value) of ``studies``, by run, name and epoch."""
    query = (
        select(Metric.run_id, Metric.name, Metric.epoch, Metric.step, Metric.value)
        .join(Run, Metric.run_id == Run.id)
        .join(Study, Run.study_id == Study.id)
        .where(Study.name.in_(list(studies)))
        .order_by(Metric.run_id, Metric.name, Metric.epoch)
    )
    if run_ids:
        query = query.where(Metric.run_id.in_(list(run_ids)))
    else:  # archived runs only when asked for by id
        query = query.where(NOT_ARCHIVED)
    if names:
        query = query.where(Metric.name.in_(list(names)))
    if stage is not None:
        query = query.where(Run.stage == stage)
    return [tuple(row) for row in session.execute(query)]


def run_configs(session: Session, studies: Iterable[str]) -> dict[str, str]:
    """Run id -> its canonical config (JSON text, as planned) for every run of ``studies``."""
    rows = session.execute(select(Run.id, Run.config).where(Run.id.in_(runs_of(studies))))
    return {run_id: config for run_id, config in rows}


def result_details(session: Session, studies: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Run id -> ``best_epoch`` (0-based), ``organs``: the recorded per-organ scores by kind ("val DSC",
    "test DSC", "FLARE DSC", "FLARE NSD"), and ``per_case`` ("val", "test": case -> organ -> DSC), for every
    run of ``studies`` with a result.

    Values are as recorded (the result JSON of a job): callers check them before showing or exporting them.
    """
    rows = session.execute(select(Result.run_id, Result.best_epoch, Result.per_organ, Result.per_case, Result.payload)
                           .where(Result.run_id.in_(runs_of(studies))))
    found: dict[str, dict[str, Any]] = {}
    for run_id, best_epoch, per_organ, per_case, payload in rows:
        payload = payload if isinstance(payload, dict) else {}
        test, flare = payload.get("test"), payload.get("flare")
        organs: dict[str, Any] = {"val DSC": per_organ, "test DSC": test.get("per_organ") if isinstance(test, dict)
                                  else None}
        flare_organs = flare.get("per_organ") if isinstance(flare, dict) else None
        if isinstance(flare_organs, dict):
            for key, label in (("dsc", "FLARE DSC"), ("nsd", "FLARE NSD")):
                organs[label] = {organ: scores.get(key) for organ, scores in flare_organs.items()
                                 if isinstance(scores, dict)}
        found[run_id] = {"best_epoch": best_epoch,
                         "organs": {kind: scores for kind, scores in organs.items() if isinstance(scores, dict)},
                         "per_case": {"val": per_case,
                                      "test": test.get("per_case") if isinstance(test, dict) else None}}
    return found


_CHUNK = 900  # bound parameters per query: under SQLite's limit


def result_payloads(session: Session, run_ids: Sequence[str]) -> Iterator[tuple[str, Any]]:
    """(run id, whole ``result.json`` payload) of the runs that have a result (the report's case scores)."""
    for start in range(0, len(run_ids), _CHUNK):
        rows = session.execute(
            select(Result.run_id, Result.payload).where(Result.run_id.in_(run_ids[start:start + _CHUNK]))
        )
        yield from ((run_id, payload) for run_id, payload in rows)


def pairing_known(session: Session, run_ids: Sequence[str]) -> set[str]:
    """The imported runs whose import said their pretraining is known (``pairing = known`` in the CSV)."""
    known: set[str] = set()
    for start in range(0, len(run_ids), _CHUNK):
        query = select(Result.run_id, Result.payload["pairing_known"]).where(
            Result.run_id.in_(run_ids[start:start + _CHUNK]))
        # SQLite's JSON extraction gives 1 for true, PostgreSQL's True
        known.update(run_id for run_id, flag in session.execute(query) if flag in (True, 1))
    return known


def result_devices(session: Session, run_ids: Sequence[str]) -> Iterator[Any]:
    """Each result's ``provenance.device`` (precision, TF32, compile), as recorded."""
    for start in range(0, len(run_ids), _CHUNK):
        query = select(Result.payload["provenance"]["device"]).where(Result.run_id.in_(run_ids[start:start + _CHUNK]))
        yield from session.execute(query).scalars()
