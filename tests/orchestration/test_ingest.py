"""A valid result.json v2 reaches its columns on each backend: test and FLARE sections, extras kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from registryfix import valid_result
from sqlalchemy import select

from ioussl.registry import open_registry, repo
from ioussl.registry.models import Result, Run
from ioussl.runfiles import RunFileError
from ioussl.status import RunStatus
from ioussl.track import resultcheck

FLARE = {
    "part": "test", "dsc": 0.81, "nsd": 0.77,
    "per_organ": {"liver": {"dsc": 0.95, "nsd": 0.9}, "pancreas": {"dsc": None, "nsd": None}},
    "per_case": {"c1": {"liver": {"dsc": 0.95, "nsd": 0.9}}},
}
TEST = {"dsc": 0.79, "dsc_3d": 0.75, "per_case": {"c9": {"liver": 0.9}}, "per_organ": {"liver": 0.9}, "slices": 40}


def test_a_full_result_fills_every_column_on_each_backend(registry_db, repo_root, tmp_path):
    from ioussl.plan.service import plan_grid
    from ioussl.track.sync import sync

    plan_grid(repo_root / "jobs" / "tiny.toml", registry_db, check_data=False, base_dir=str(tmp_path / "jobs"))
    registry = open_registry(registry_db)
    with registry.session() as session:
        run = next(r for r in session.scalars(select(Run)) if r.stage == "finetune" and r.parent_id is None)
        repo.set_status(session, run, RunStatus.SUBMITTING)
        repo.add_attempt(session, run_id=run.id, executor="local", job_id="999999999", status=RunStatus.PENDING)
        repo.set_status(session, run, RunStatus.PENDING)
        payload = valid_result(run, dsc=0.8, dsc_3d=0.7, test=TEST, flare=FLARE, note={"free": "text"})
        Path(run.run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run.run_dir) / "result.json").write_text(json.dumps(payload))
        run_id = run.id
    with registry.session() as session:
        outcome = sync(session)
    assert [(t[0], t[2]) for t in outcome.transitions] == [(run_id, "COMPLETED")]
    with registry.session(write=False) as session:
        row = session.get(Result, run_id)
        assert (row.dsc, row.dsc_3d, row.test_dsc, row.test_dsc_3d) == (0.8, 0.7, 0.79, 0.75)
        assert (row.flare_dsc, row.flare_nsd, row.flare_part) == (0.81, 0.77, "test")
        assert row.payload["note"] == {"free": "text"} and row.best_epoch == 2
        assert row.checkpoint_sha256 == payload["checkpoint_sha256"]
    registry.dispose()


def _payload(**changes):  # type: ignore[no-untyped-def]
    base = {
        "stage": "pretrain", "run_hash": "a" * 64, "config_hash": "b" * 64, "checkpoint": "/x/encoder.pt",
        "checkpoint_sha256": "c" * 64, "epochs": 100, "steps": 1000, "finished_at": 1.7e9, "provenance": {},
        "final_loss": -0.9, "final_collapse": 0.6, "final_fallback_rate": 0.01, "steps_per_epoch": 10,
    }
    return {**base, **changes}


def test_a_pretrain_result_has_no_dsc_columns():
    columns = resultcheck.check_result(_payload(), stage="pretrain", config_hashes={"b" * 64})
    assert columns == {"checkpoint_path": "/x/encoder.pt", "checkpoint_sha256": "c" * 64}


@pytest.mark.parametrize(
    "changes, message",
    [({"final_fallback_rate": 1.5}, "final_fallback_rate 1.5 is outside"), ({"steps_per_epoch": 0}, r"outside \[1"),
     ({"final_loss": "low"}, "final_loss must be a number"), ({"provenance": None}, "provenance must be an object"),
     ({"epochs": True}, "epochs must be an integer, got True")],
)
def test_a_bad_pretrain_result_is_refused(changes, message):
    with pytest.raises(RunFileError, match=message):
        resultcheck.check_result(_payload(**changes), stage="pretrain", config_hashes={"b" * 64})
