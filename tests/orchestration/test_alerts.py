"""Webhook alerts against a real HTTP server on 127.0.0.1 (http.server in a thread), on SQLite and PostgreSQL.

The scheduler is a fake (job states change when a test says so); the registry, the sync, the queueing
and the HTTP delivery are the real ones.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import socket
import threading
from pathlib import Path

import pytest
from registryfix import dump, write_result
from sqlalchemy import select
from studyfiles import tiny_study
from typer.testing import CliRunner

from ioussl.backends.base import JobInfo, QueryResult
from ioussl.backends.slurm import SlurmBackend
from ioussl.errors import ConfigError
from ioussl.plan.service import plan_grid
from ioussl.registry import open_registry
from ioussl.registry.models import Notification, Run, Study
from ioussl.submit import service as jobservice
from ioussl.track import alerts

STUDY = tiny_study("alerting", pretrain_seeds=(1, 2), finetune_seeds=(1,), cluster="site.toml")


class Hook:
    """A webhook receiver: records every POST (path, content type, JSON body); can be stopped and restarted
    on the same port."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.posts: list[dict] = []
        self.status = 200
        self.server: http.server.HTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/T000/B000/secret"

    def start(self) -> None:
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.posts.append({"path": self.path, "type": self.headers["Content-Type"],
                                   "body": json.loads(body)})
                self.send_response(hook.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()
        self.server = None

    def events(self) -> list[str]:
        return [post["body"]["ioussl"]["event"] for post in self.posts]


class FakeCluster(SlurmBackend):
    """Answers like SLURM; a job's state changes only when the test sets it. SLURM's own states,
    dependency syntax and log paths come from the SLURM backend."""

    def __init__(self) -> None:
        super().__init__(Path("_submitit"))
        self.jobs: dict[str, JobInfo] = {}
        self.next_id = 500

    def submit(self, unit, calls, dependency):
        base = str(self.next_id)
        self.next_id += 1
        ids = [base] if len(calls) == 1 else [f"{base}_{i}" for i in range(len(calls))]
        for job_id in ids:
            self.jobs[job_id] = JobInfo(job_id, "PENDING", "PENDING", unit.job_name, reason="Dependency")
        return ids

    def query(self, job_ids):
        return QueryResult({j: self.jobs[j] for j in job_ids if j in self.jobs}, "fake", 1)

    def find_by_name(self, names):
        return {}

    def job_stored(self, job_id, job_name):
        return True

    def release(self, job_ids):
        pass

    def cancel(self, job_ids):
        for job_id in job_ids:
            self.set(job_id, "CANCELLED")

    def set(self, job_id: str, state: str, exit_code: int = 0) -> None:
        self.jobs[job_id] = dataclasses.replace(self.jobs[job_id], state=state, raw_state=state,
                                                exit_code=exit_code, reason=None)


@pytest.fixture
def hook():
    receiver = Hook()
    receiver.start()
    yield receiver
    if receiver.server is not None:
        receiver.stop()


def _plan(tmp_path: Path, db: str, webhook: str | None, study: str = STUDY) -> None:
    notify = f'\n[notify]\nwebhook = "{webhook}"\n' if webhook else ""
    (tmp_path / "site.toml").write_text('[slurm]\npartition = "gpu"\n' + notify)
    (tmp_path / "study.toml").write_text(study)
    plan_grid(tmp_path / "study.toml", db, check_data=False)


def _sync(db: str, cluster: FakeCluster, tmp_path: Path):
    with jobservice.opened(db) as registry:
        return jobservice.prepare(registry, "alerting", jobservice.Backends(tmp_path / "runs" / "_submitit", cluster))


def _rows(db: str) -> tuple[dict[str, Run], list[Notification]]:
    registry = open_registry(db, create=False)
    try:
        with registry.session(write=False) as session:
            runs = {run.id: run for run in session.scalars(select(Run))}
            for run in runs.values():
                _ = run.attempts, run.study
            return runs, list(session.scalars(select(Notification).order_by(Notification.id)))
    finally:
        registry.dispose()


def _job(runs: dict[str, Run], stage: str, seed: int) -> tuple[Run, str]:
    run = next(r for r in runs.values() if r.stage == stage and (r.seed if stage == "pretrain" else r.pretrain_seed)
               == seed)
    return run, run.attempts[-1].job_id


def test_one_post_per_event_across_syncs_and_delivery_after_the_server_comes_back(registry_db, tmp_path, hook):
    _plan(tmp_path, registry_db, hook.url)
    cluster = FakeCluster()
    jobservice.submit(registry_db, "alerting", backend=cluster, factory=lambda run_dir, encoder: ("job", run_dir))
    runs, _ = _rows(registry_db)
    first, first_job = _job(runs, "pretrain", 1)
    second, second_job = _job(runs, "pretrain", 2)

    cluster.set(first_job, "FAILED", exit_code=1)
    for _ in range(3):
        assert _sync(registry_db, cluster, tmp_path).errors == []
    assert hook.events() == ["FAILED"]  # the blocked fine-tune is no alert of its own
    post = hook.posts[0]
    assert post["path"] == "/hooks/T000/B000/secret" and post["type"] == "application/json"
    fields = post["body"]["ioussl"]
    assert fields["run"] == first.id and fields["study"] == "alerting" and fields["job_id"] == first_job
    assert post["body"]["text"].startswith(f"ioussl: run {first.id} FAILED: pretrain [0.3, 0.6]")
    _, rows = _rows(registry_db)
    attempt = first.attempts[-1].id
    assert [(n.key, n.event, n.tries, n.error) for n in rows] == [(f"run:{first.id}:attempt:{attempt}:FAILED",
                                                                  "FAILED", 1, None)]
    assert rows[0].sent_at is not None and rows[0].run_id == first.id

    hook.stop()  # the receiver is down: the sync still succeeds, the failure is recorded
    cluster.set(second_job, "TIMEOUT")
    outcome = _sync(registry_db, cluster, tmp_path)
    assert [t[2] for t in outcome.transitions if t[0] == second.id] == ["TIMEOUT"]
    assert len(outcome.errors) == 1 and outcome.errors[0].startswith(
        f"webhook: alert run:{second.id}:attempt:{second.attempts[-1].id}:TIMEOUT not delivered (cannot reach")
    runs, rows = _rows(registry_db)
    assert runs[second.id].status == "TIMEOUT"
    late = rows[1]
    assert (late.event, late.tries, late.sent_at) == ("TIMEOUT", 1, None) and "cannot reach the webhook" in late.error

    hook.start()  # back: the next sync delivers it (no run is active any more: the retry path)
    assert _sync(registry_db, cluster, tmp_path).errors == []
    assert _sync(registry_db, cluster, tmp_path).errors == []
    assert hook.events() == ["FAILED", "TIMEOUT"]
    _, rows = _rows(registry_db)
    assert [(n.tries, n.error) for n in rows] == [(1, None), (2, None)] and all(n.sent_at for n in rows)


def test_a_completed_study_is_one_alert(registry_db, tmp_path, hook):
    _plan(tmp_path, registry_db, hook.url, tiny_study("alerting", finetune_seeds=(1,), cluster="site.toml"))
    cluster = FakeCluster()
    jobservice.submit(registry_db, "alerting", backend=cluster, factory=lambda run_dir, encoder: ("job", run_dir))
    runs, _ = _rows(registry_db)
    pretrain, pretrain_job = _job(runs, "pretrain", 1)
    finetune, finetune_job = _job(runs, "finetune", 1)
    write_result(pretrain)
    cluster.set(pretrain_job, "COMPLETED")
    _sync(registry_db, cluster, tmp_path)
    assert hook.posts == []  # one run done is no event
    write_result(finetune)
    cluster.set(finetune_job, "COMPLETED")
    for _ in range(3):
        _sync(registry_db, cluster, tmp_path)
    assert hook.events() == ["COMPLETED"]
    assert hook.posts[0]["body"]["ioussl"] == {"event": "COMPLETED", "study": "alerting", "runs": 2, "completed": 2,
                                               "cancelled": 0}
    _, rows = _rows(registry_db)
    assert [(n.key, n.run_id) for n in rows] == [("study:COMPLETED", None)]


def test_no_webhook_no_notifications(tmp_path, hook):
    db = str(tmp_path / "r.db")
    _plan(tmp_path, db, None)
    cluster = FakeCluster()
    jobservice.submit(db, "alerting", backend=cluster, factory=lambda run_dir, encoder: ("job", run_dir))
    runs, _ = _rows(db)
    cluster.set(_job(runs, "pretrain", 1)[1], "FAILED", exit_code=1)
    _sync(db, cluster, tmp_path)
    assert hook.posts == [] and _rows(db)[1] == []


def test_a_webhook_added_to_the_profile_reaches_the_planned_study(tmp_path, hook):
    db = str(tmp_path / "r.db")
    _plan(tmp_path, db, None)
    _plan(tmp_path, db, hook.url)  # planned again after the profile gained [notify]
    registry = open_registry(db, create=False)
    with registry.session(write=False) as session:
        assert alerts.webhook_of(session.scalar(select(Study)).spec) == hook.url
    registry.dispose()


def test_a_server_error_is_recorded_and_retried(tmp_path, hook):
    db = str(tmp_path / "r.db")
    _plan(tmp_path, db, hook.url)
    cluster = FakeCluster()
    jobservice.submit(db, "alerting", backend=cluster, factory=lambda run_dir, encoder: ("job", run_dir))
    runs, _ = _rows(db)
    hook.status = 500
    cluster.set(_job(runs, "pretrain", 1)[1], "FAILED", exit_code=1)
    outcome = _sync(db, cluster, tmp_path)
    assert "not delivered (HTTP 500" in outcome.errors[0]
    hook.status = 200
    _sync(db, cluster, tmp_path)
    assert hook.events() == ["FAILED", "FAILED"]  # the refused POST, then the one that went through
    assert [(n.tries, n.error) for n in _rows(db)[1]] == [(2, None)]


@pytest.mark.parametrize(
    "url",
    ["ftp://example.org/hook", "file:///etc/passwd", "javascript:alert(1)", "https://", "hooks.slack.com/x",
     "https://exa mple.org/hook", "https://example.org/hook\n", "https://example.org:99999/", "", 42,
     "https://example.org/\x1b[2J"],
)
def test_bad_webhooks_are_refused(url):
    with pytest.raises(ConfigError, match=r"^here: webhook "):
        alerts.check_webhook(url, "here")


def test_good_webhooks_pass():
    for url in ("https://hooks.slack.com/services/T0/B0/abc", "http://127.0.0.1:8080/hook",
                "https://mattermost.example.org/hooks/xyz"):
        assert alerts.check_webhook(url, "here") == url


def test_slack_text_is_one_escaped_line():
    assert alerts.slack_text("a <@here> & b\nc") == "a &lt;@here&gt; &amp; b c"
    assert len(alerts.slack_text("x" * 5000)) == alerts.MAX_TEXT


@pytest.mark.parametrize("webhook", ["ftp://example.org/hook", "https://example.org/a b"])
def test_plan_with_a_bad_webhook_is_one_line_and_writes_nothing(tmp_path, webhook):
    from ioussl.cli import app

    db = str(tmp_path / "r.db")
    (tmp_path / "site.toml").write_text(f'[slurm]\npartition = "gpu"\n[notify]\nwebhook = "{webhook}"\n')
    (tmp_path / "study.toml").write_text(STUDY)
    result = CliRunner().invoke(app, ["plan", "grid", str(tmp_path / "study.toml"), "--db", db, "--no-check-data"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {tmp_path / 'site.toml'} [notify]")
    assert not Path(db).exists()
    _plan(tmp_path, db, None)  # an existing registry is not touched either
    before = dump(db)
    (tmp_path / "site.toml").write_text(f'[slurm]\npartition = "gpu"\n[notify]\nwebhook = "{webhook}"\n')
    again = CliRunner().invoke(app, ["plan", "grid", str(tmp_path / "study.toml"), "--db", db, "--no-check-data"])
    assert again.exit_code == 1 and dump(db) == before


def test_unknown_notify_key_is_refused(tmp_path):
    (tmp_path / "site.toml").write_text('[notify]\nwebhok = "https://example.org/x"\n')
    (tmp_path / "study.toml").write_text(STUDY)
    with pytest.raises(ConfigError, match=r"\[notify\]: unknown key\(s\) webhok; valid keys: webhook"):
        plan_grid(tmp_path / "study.toml", str(tmp_path / "r.db"), check_data=False)


def test_post_json_never_raises_and_does_not_follow_redirects(hook):
    hook.status = 302
    assert alerts.post_json(hook.url, {"text": "x"}) == "HTTP 302 Found"
    hook.stop()
    assert alerts.post_json(hook.url, {"text": "x"}, timeout=1).startswith("cannot reach the webhook")
