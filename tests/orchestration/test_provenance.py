"""Provenance travels from the job's result.json into the registry and the report's footer."""

from __future__ import annotations

import json

from registryfix import write_result

from ioussl.plan.service import plan_grid
from ioussl.registry import open_registry, repo
from ioussl.registry.models import Provenance, Run
from ioussl.report.service import report_study
from ioussl.submit.entrypoint import git_state
from ioussl.track.ingest import ingest


def test_git_state_names_this_checkout(repo_root, tmp_path, monkeypatch):
    import shutil
    import subprocess

    if not (repo_root / ".git").exists() or shutil.which("git") is None:
        assert git_state() == {"git_commit": None, "git_dirty": None}
        return

    def git(where, *args: str) -> str:  # type: ignore[no-untyped-def]
        command = ["git", "-C", str(where), "-c", "user.name=t", "-c", "user.email=t@t", *args]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()

    # Run from inside another repository: the state is the ioussl checkout's, not the working directory's.
    git(tmp_path, "init", "-q")
    (tmp_path / "f").write_text("x")
    git(tmp_path, "add", "f")
    git(tmp_path, "commit", "-qm", "other")
    monkeypatch.chdir(tmp_path)
    state = git_state()
    assert state["git_commit"] == git(repo_root, "rev-parse", "HEAD") != git(tmp_path, "rev-parse", "HEAD")
    assert state["git_dirty"] is bool(git(repo_root, "status", "--porcelain", "--untracked-files=no"))
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))  # git missing: the versions carry provenance alone
    assert git_state() == {"git_commit": None, "git_dirty": None}


def test_ingested_result_records_provenance_and_the_report_names_the_commit(repo_root, db, tmp_path):
    plan_grid(repo_root / "jobs" / "tiny.toml", db, check_data=False, base_dir=str(tmp_path / "jobs"))
    registry = open_registry(db, create=False)
    with registry.session() as session:
        run = next(r for r in session.query(Run) if r.stage == "finetune" and r.parent_id is None)
        write_result(run, dsc=0.5, dsc_3d=0.4, provenance={
            "git_commit": "abcdef1234567890", "git_dirty": True, "python": "3.11.7",
            "versions": {"torch": "2.13.0"}, "host": "node7", "device": {"device_name": "H100"},
        })
        assert ingest(session, run)
        run_id = run.id
    with registry.session() as session:
        row = session.get(Provenance, run_id)
        assert (row.git_commit, row.git_dirty, row.host, row.device) == ("abcdef1234567890", True, "node7", "H100")
        assert row.packages == {"python": "3.11.7", "torch": "2.13.0"}
        assert repo.result_commits(session, ["tiny"]) == {"abcdef1234-dirty": 1}
        assert repo.result_commits(session, ["another study"]) == {}
    footer = report_study(db, "tiny").report.footer
    assert "abcdef1234-dirty (1 run(s))" in footer[1]


def test_event_times_belong_to_the_attempt(tmp_path):
    import datetime as dt

    from ioussl.track.ingest import event_times

    submitted = dt.datetime(2026, 1, 1, 12, 0, 0)
    t0 = submitted.replace(tzinfo=dt.UTC).timestamp()
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in [
        {"t": t0 - 3600, "event": "started"}, {"t": t0 - 3000, "event": "failed"},  # an earlier attempt
        {"t": t0 + 10, "event": "started"}, {"t": t0 + 70, "event": "finished"},
    ]))
    start, end = event_times(tmp_path, since=submitted)
    assert (start - submitted).total_seconds() == 10 and (end - start).total_seconds() == 60
    assert event_times(tmp_path / "nowhere", since=submitted) == (None, None)
