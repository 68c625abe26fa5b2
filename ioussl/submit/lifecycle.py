"""``ioussl reset`` and ``ioussl archive``: put runs back to PLANNED, or out of sight, without losing anything.

- reset: a run that ended without a result (failed, timed out, cancelled, blocked, lost, invalid, interrupted)
  goes back to PLANNED; its attempts stay in the registry as history (``ioussl status --json`` counts them),
  and the next ``ioussl submit`` starts it as a new attempt. A completed run is never rewritten, an active one
  must be cancelled first. An INVALID run's rejected result.json is set aside, as ``retry`` does.
- archive: runs leave status, report and submit (``runs.archived_at``), keeping attempts, results and metrics;
  ``--restore`` brings them back. A pretrain takes its fine-tunes with it; a restored fine-tune brings back
  its pretrain. Active runs are refused: cancel them first.

Both select runs like ``cancel`` (study, run ids, group, states) and, with ``dry_run``, only say what they would
do: the CLI shows that selection and asks before it acts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ioussl.errors import ConfigError, NotFound
from ioussl.registry import archive as archiving
from ioussl.registry import opened, repo
from ioussl.registry.models import Run
from ioussl.status import ACTIVE, RunStatus, is_retryable
from ioussl.submit import submission

S = RunStatus


@dataclass
class Selection:
    """What a reset or an archive chose (``run_ids``) and what it left alone, and why (``refused``)."""

    verb: str
    dry_run: bool
    run_ids: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # run id, why not
    studies: list[str] = field(default_factory=list)


def reset(db: str | None, study: str | None = None, run_ids: Sequence[str] = (), group: str | None = None,
          statuses: Sequence[RunStatus] | None = None, *, dry_run: bool = False) -> Selection:
    """Back to PLANNED, keeping the old attempts; blocked fine-tunes of a reset pretrain follow it.

    Raises:
        ConfigError: nothing named to reset.
        NotFound: nothing matched that can be reset (the message says what did match).
    """
    _require_selector("reset", study, run_ids, group)
    outcome = Selection("reset", dry_run)
    with opened(db) as registry, registry.session(write=not dry_run) as session:
        chosen: dict[str, Run] = {}
        for run in repo.select_runs(session, study, run_ids, group, statuses):
            why = _why_not_reset(S(run.status))
            if why:
                outcome.refused.append((run.id, why))
                continue
            chosen[run.id] = run
            if run.stage == "pretrain":
                for child in repo.children_of(session, run.id, (S.BLOCKED,)):
                    chosen.setdefault(child.id, child)
        if not chosen:
            raise NotFound(_nothing("reset", study, outcome.refused))
        for run in chosen.values():
            if dry_run:
                continue
            if run.status == S.INVALID:
                submission.set_aside_result(run)
            kept = len(run.attempts)
            repo.set_status(session, run, S.PLANNED, reason=f"reset by a user ({kept} earlier attempt(s) kept)")
        outcome.run_ids = sorted(chosen)
        outcome.studies = sorted({run.study.name for run in chosen.values()})
    return outcome


def archive(db: str | None, study: str | None = None, run_ids: Sequence[str] = (), group: str | None = None,
            statuses: Sequence[RunStatus] | None = None, *, restore: bool = False,
            dry_run: bool = False) -> Selection:
    """Hide runs from status, report and submit (kept, restorable); ``restore`` brings archived ones back.

    Raises:
        ConfigError: nothing named to archive.
        NotFound: nothing matched (the message says what did match).
    """
    verb = "restore" if restore else "archive"
    _require_selector(verb, study, run_ids, group)
    outcome = Selection(verb, dry_run)
    with opened(db) as registry, registry.session(write=not dry_run) as session:
        matched = repo.select_runs(session, study, run_ids, group, statuses, archived=restore)
        if restore:
            chosen = archiving.with_pretrains(session, matched)
        else:
            active = [run for run in matched if run.status in ACTIVE]
            outcome.refused = [(run.id, f"{run.status.lower()}: cancel it first") for run in active]
            chosen = archiving.with_fine_tunes(session, [run for run in matched if run.status not in ACTIVE])
            busy = [run for run in chosen if run.status in ACTIVE]  # a fine-tune still running
            outcome.refused += [(run.id, f"{run.status.lower()} fine-tune of an archived pretrain: cancel it "
                                         "first") for run in busy]
            if busy:
                chosen = []
        if not chosen:
            where = " archived" if restore else ""
            raise NotFound(_nothing(verb, study, outcome.refused, f"no{where} run matches"))
        if not dry_run:
            (archiving.restore if restore else archiving.archive)(chosen)
        outcome.run_ids = sorted(run.id for run in chosen)
        outcome.studies = sorted({run.study.name for run in chosen})
    return outcome


def _why_not_reset(status: RunStatus) -> str | None:
    if status == S.COMPLETED:
        return "completed: a result is never rewritten (archive it, or plan a new seed)"
    if status in ACTIVE:
        return f"{status.lower()}: cancel it first"
    if status == S.PLANNED:
        return "already planned"
    return None if is_retryable(status) else f"{status.lower()} cannot be reset"


def _require_selector(verb: str, study: str | None, run_ids: Sequence[str], group: str | None) -> None:
    if study is None and not run_ids and group is None:
        raise ConfigError(f"say what to {verb}: --study, --run or --interval (and --state to narrow)")


def _nothing(verb: str, study: str | None, refused: list[tuple[str, str]], found: str = "no run matches") -> str:
    where = f" in study {study!r}" if study else ""
    if not refused:
        return f"nothing to {verb}{where}: {found}"
    reasons: dict[str, int] = {}
    for _, why in refused:
        reasons[why] = reasons.get(why, 0) + 1
    listed = "; ".join(f"{n} {why}" for why, n in reasons.items())
    return f"nothing to {verb}{where}: {listed}"
