"""Webhook alerts: a run that failed, timed out, got lost or became INVALID, and a study that completed.

A cluster profile may name a webhook (``[notify] webhook = "https://..."``, checked at plan time and kept in
the study's spec). A sync that applies such a transition queues one ``notifications`` row per event, keyed
once per study (``run:<run>:attempt:<attempt>:FAILED``, ``study:COMPLETED``), in its own unit of work, and
claims the rows to send (``sent_at`` set, so a concurrent sync leaves them alone). Delivery happens after
that transaction has committed, with a short timeout: one JSON POST per event, Slack- and
Mattermost-compatible (``{"text": ...}``, the structured fields under ``"ioussl"``). A failure is recorded
(``tries``, ``error``), the claim released, and the next sync tries again; the first failure of a sync
leaves the rest for later. A network error is never an error of the sync: it comes back as a warning.

A claim whose sync was killed before it recorded the outcome (``tries`` still 0) is released after
``STALE_CLAIM_S``: an alert may then be sent twice, never lost.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from ioussl.errors import ConfigError
from ioussl.jobtext import check_webhook
from ioussl.registry import repo
from ioussl.registry.db import Registry
from ioussl.registry.errors import RegistryBusy
from ioussl.registry.models import Run, Study, utcnow
from ioussl.status import RunStatus

S = RunStatus
ALERT_STATES = frozenset({S.FAILED, S.TIMEOUT, S.LOST, S.INVALID})
COMPLETE_STATES = frozenset({S.COMPLETED, S.CANCELLED})  # a study is complete when every run is one of these
TIMEOUT_S = 5.0  # per POST: a sync must not hang on a webhook that does not answer
# The whole POST (connect, send, every read): a server that answers a byte at a time must not hold a command.
DEADLINE_S = 10.0
PER_SYNC = 20  # notifications sent by one sync at most (the rest by the next)
STALE_CLAIM_S = 600.0
MAX_TEXT = 1500
Transition = tuple[str, str, str, str | None]  # run, old, new, why (SyncOutcome.transitions)
Post = Callable[[str, dict[str, Any]], str | None]  # url, body -> None when delivered, else why not


def webhook_of(spec: Any) -> str | None:
    """The study's webhook (from its stored spec), or None; checked again, since it is read back from disk."""
    notify = spec.get("notify") if isinstance(spec, dict) else None
    url = notify.get("webhook") if isinstance(notify, dict) else None
    if url is None:
        return None
    try:
        return check_webhook(url, "stored [notify]")
    except ConfigError:
        return None


def queue(session: Session, study: str, transitions: Iterable[Transition]) -> int:
    """Queue one notification per alerting transition (and the study's completion), once each; returns how
    many were queued. Nothing without a webhook."""
    transitions = list(transitions)
    if not transitions:
        return 0
    row = repo.find_study(session, study)
    if webhook_of(row.spec) is None:
        return 0
    wanted: dict[str, tuple[str | None, str, dict[str, Any]]] = {}
    ended = False
    for run_id, _old, new, why in transitions:
        ended = ended or S(new).is_terminal()
        run = repo.run_or_none(session, run_id)
        if S(new) in ALERT_STATES and run is not None and run.study_id == row.id:
            attempt = run.attempts[-1] if run.attempts else None
            key = f"run:{run.id}:attempt:{attempt.id if attempt else 'none'}:{new}"
            wanted[key] = (run.id, str(new), run_payload(row, run, str(new), why))
    if ended:
        counts = repo.study_status_counts(session, row.id)
        if counts and set(counts) <= COMPLETE_STATES and counts.get(S.COMPLETED):
            wanted["study:COMPLETED"] = (None, "COMPLETED", study_payload(row, counts))
    known = repo.notification_keys(session, row.id, wanted)
    repo.add_notifications(session, [
        {"study_id": row.id, "run_id": run_id, "key": key, "event": event, "payload": payload}
        for key, (run_id, event, payload) in wanted.items() if key not in known
    ])
    return len(set(wanted) - known)


def run_payload(study: Study, run: Run, event: str, why: str | None) -> dict[str, Any]:
    attempt = run.attempts[-1] if run.attempts else None
    job = f"{attempt.executor} job {attempt.job_id}" if attempt and attempt.job_id else "no job"
    node = f" on {attempt.node}" if attempt and attempt.node else ""
    seeds = f"seed {run.seed}" + (f", pretrain seed {run.pretrain_seed}" if run.pretrain_seed is not None else "")
    text = (f"ioussl: run {run.id} {event}: {run.stage} {run.group} ({seeds}), study {study.name}, "
            f"attempt {len(run.attempts)}, {job}{node}" + (f": {why}" if why else ""))
    fields = {"event": event, "study": study.name, "run": run.id, "stage": run.stage, "group": run.group,
              "seed": run.seed, "pretrain_seed": run.pretrain_seed, "attempt": len(run.attempts),
              "executor": attempt.executor if attempt else None, "job_id": attempt.job_id if attempt else None,
              "node": attempt.node if attempt else None, "reason": why, "run_dir": run.run_dir}
    return {"text": slack_text(text), "ioussl": fields}


def study_payload(study: Study, counts: dict[RunStatus, int]) -> dict[str, Any]:
    done = counts.get(S.COMPLETED, 0)
    cancelled = counts.get(S.CANCELLED, 0)
    text = (f"ioussl: study {study.name} completed: {done} run(s) completed"
            + (f", {cancelled} cancelled" if cancelled else "") + "; `ioussl report` has its table")
    fields = {"event": "COMPLETED", "study": study.name, "runs": sum(counts.values()), "completed": done,
              "cancelled": cancelled}
    return {"text": slack_text(text), "ioussl": fields}


def slack_text(text: str) -> str:
    """One line of at most MAX_TEXT characters, with &, <, > escaped as Slack asks (Mattermost renders
    them the same), so a reason a job wrote cannot become a link or a mention."""
    flat = "".join(c if c.isprintable() else " " for c in text)
    flat = flat if len(flat) <= MAX_TEXT else flat[: MAX_TEXT - 3] + "..."
    return flat.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@dataclass(frozen=True)
class Delivery:
    """One claimed notification: where it goes and what is sent."""

    id: int
    key: str
    url: str
    payload: dict[str, Any]


def claim(session: Session, study: str, fresh_only: bool = False) -> list[Delivery]:
    """Claim the study's notifications to send now (inside the write lock; delivery follows the commit)."""
    row = repo.find_study(session, study)
    url = webhook_of(row.spec)
    if url is None:
        return []
    stale = utcnow() - dt.timedelta(seconds=STALE_CLAIM_S)
    rows = repo.unsent_notifications(session, row.id, claimed_before=stale, fresh_only=fresh_only, limit=PER_SYNC)
    repo.claim_notifications(rows, utcnow())
    return [Delivery(n.id, n.key, url, dict(n.payload or {})) for n in rows]


def send(registry: Registry, deliveries: Sequence[Delivery], post: Post | None = None) -> list[str]:
    """POST each claimed notification (outside any transaction), then record how each went; returns one
    warning line per failure. Stops at the first failure: the others stay for the next sync, untried."""
    if not deliveries:
        return []
    post = post or post_json
    outcomes: list[tuple[Delivery, str | None]] = []
    try:
        for delivery in deliveries:
            outcomes.append((delivery, post(delivery.url, delivery.payload)))
            if outcomes[-1][1] is not None:
                break
    finally:  # also on Ctrl-C: release what was not sent, so that the next sync sends it
        warnings = _record(registry, outcomes, deliveries[len(outcomes):])
    return warnings


def _record(registry: Registry, outcomes: list[tuple[Delivery, str | None]],
            untried: Sequence[Delivery]) -> list[str]:
    warnings = []
    try:
        with registry.session() as session:
            for delivery, error in outcomes:
                tries = repo.record_delivery(session, delivery.id, error)
                if error is not None and tries is not None:
                    warnings.append(f"webhook: alert {delivery.key} not delivered ({error}); "
                                    f"tried {tries} time(s), the next sync tries again")
            for delivery in untried:
                repo.release_notification(session, delivery.id)
    except RegistryBusy as exc:
        warnings.append(f"webhook: could not record the delivery of {len(outcomes)} alert(s): {exc}")
    return warnings


def post_json(url: str, payload: dict[str, Any], timeout: float = TIMEOUT_S,
              deadline: float = DEADLINE_S) -> str | None:
    """:func:`post_once` with a total deadline: the socket timeout bounds each read, not the whole answer, so
    the POST runs in a daemon thread that this command stops waiting for after ``deadline`` seconds."""
    import threading

    answer: list[str | None] = []
    worker = threading.Thread(target=lambda: answer.append(post_once(url, payload, timeout)), daemon=True,
                              name="ioussl-webhook")
    worker.start()
    worker.join(deadline)
    if not answer:
        return f"the webhook did not answer within {deadline:g} s"
    return answer[0]


def post_once(url: str, payload: dict[str, Any], timeout: float = TIMEOUT_S) -> str | None:
    """POST ``payload`` as JSON; None when the server answered 2xx, else why not in one line (never raises
    for anything the network or the server does; the URL is not repeated, it often holds a token).
    A redirect is a failure: a webhook answers, and urllib would resend the POST as a GET."""
    import urllib.error
    import urllib.request  # here, not at the top: it imports ssl, which `ioussl status` need not load
    from http.client import HTTPException

    from ioussl import __version__

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            return None

    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": f"ioussl/{__version__}"})
    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=timeout) as response:
            response.read(4096)
            status = response.status
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} {exc.reason}"[:200]
    except urllib.error.URLError as exc:
        return f"cannot reach the webhook: {exc.reason}"[:200]
    except (OSError, HTTPException, ValueError) as exc:  # timeouts, resets, a malformed answer
        return f"webhook failed: {type(exc).__name__}: {exc}"[:200]
    return None if 200 <= status < 300 else f"HTTP {status}"
