"""Planning into the registry: idempotent, dry-run writes nothing, bad data leaves the registry untouched."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ioussl.errors import DataError
from ioussl.plan.service import plan_grid
from ioussl.registry import open_registry
from ioussl.registry.models import Run
from ioussl.status import RunStatus
from ioussl.track.listing import status_rows


def count_runs(db: str) -> int:
    registry = open_registry(db, create=False)
    with registry.session() as session:
        return session.scalar(select(func.count()).select_from(Run))


def test_plan_thesis_twice_adds_nothing_the_second_time(repo_root, db):
    first = plan_grid(repo_root / "jobs" / "thesis.toml", db, check_data=False)
    assert len(first.new) == 34 and first.existing == []
    second = plan_grid(repo_root / "jobs" / "thesis.toml", db, check_data=False)
    assert second.new == [] and len(second.existing) == 34
    assert count_runs(db) == 34


def test_planned_runs_carry_parent_links_and_groups(repo_root, db):
    plan_grid(repo_root / "jobs" / "thesis.toml", db, check_data=False)
    records = status_rows(db, study="thesis")
    by_id = {r.id: r for r in records}
    assert all(r.status == RunStatus.PLANNED for r in records)
    for record in records:
        if record.stage == "finetune" and record.group != "no pretraining":
            parent = by_id[record.parent_id]
            assert parent.stage == "pretrain" and parent.group == record.group
            assert record.pretrain_seed == parent.seed
            assert (record.i_min, record.i_max) == (parent.i_min, parent.i_max)


def test_dry_run_writes_nothing(repo_root, db):
    outcome = plan_grid(repo_root / "jobs" / "thesis.toml", db, dry_run=True, check_data=False)
    assert outcome.dry_run and len(outcome.new) == 34
    assert not Path(db).exists()
    plan_grid(repo_root / "jobs" / "tiny.toml", db, check_data=False)
    again = plan_grid(repo_root / "jobs" / "thesis.toml", db, dry_run=True, check_data=False)
    assert len(again.new) == 34
    assert count_runs(db) == 3  # only the tiny study's runs


def test_missing_data_path_is_refused_before_writing(repo_root, db, tmp_path):
    study = tmp_path / "thesis.toml"
    shutil.copy(repo_root / "jobs" / "thesis.toml", study)
    shutil.copytree(repo_root / "jobs" / "clusters", tmp_path / "clusters")
    with pytest.raises(DataError, match="data store not found"):
        plan_grid(study, db)
    assert not Path(db).exists()


def test_edited_cluster_profile_reaches_unsubmitted_runs(repo_root, db, tmp_path):
    shutil.copy(repo_root / "jobs" / "thesis.toml", tmp_path / "thesis.toml")
    (tmp_path / "clusters").mkdir()
    profile = tmp_path / "clusters" / "plgrid-v100.toml"
    profile.write_text('[slurm]\npartition = "a"\n')
    plan_grid(tmp_path / "thesis.toml", db, check_data=False)
    profile.write_text('[slurm]\npartition = "a"\naccount = "grant-42"\n')
    again = plan_grid(tmp_path / "thesis.toml", db, check_data=False)
    assert again.new == [] and again.resources_updated == 34
    registry = open_registry(db, create=False)
    with registry.session() as session:
        accounts = {run.resources["slurm"].get("account") for run in session.scalars(select(Run))}
    assert accounts == {"grant-42"}


@pytest.mark.parametrize("study", ["thesis.toml", "demo.toml", "tiny.toml"])
def test_run_count_is_the_size_of_the_expansion(repo_root, study):
    from ioussl.plan import expand as planning
    from ioussl.plan.study import load_study

    spec = load_study(repo_root / "jobs" / study)
    assert planning.run_count(spec) == len(planning.expand_grid(spec))


def test_a_plan_above_the_cap_is_refused_before_expansion(repo_root, db, monkeypatch):
    from ioussl.errors import ConfigError
    from ioussl.plan import expand as planning

    def never(spec):  # type: ignore[no-untyped-def]
        raise AssertionError("expanded a study above the cap")

    monkeypatch.setattr(planning, "expand_grid", never)
    with pytest.raises(ConfigError, match="expands to 34 runs, more than the cap of 33.*--max-runs"):
        plan_grid(repo_root / "jobs" / "thesis.toml", db, check_data=False, max_runs=33)
    assert not Path(db).exists()
    monkeypatch.undo()
    assert len(plan_grid(repo_root / "jobs" / "thesis.toml", db, check_data=False, max_runs=34).new) == 34


def test_planned_runs_record_their_point_and_the_study_its_axes(repo_root, db):
    registry = open_registry(db, create=True)
    registry.dispose()
    plan_grid(repo_root / "jobs" / "tiny.toml", db, check_data=False)
    registry = open_registry(db, create=False)
    with registry.session(write=False) as session:
        runs = session.scalars(select(Run)).all()
        assert {tuple(r.point.items()) for r in runs} == {()}
        assert runs[0].study.axes == []
        assert all(len(r.run_hash) == 64 for r in runs)
    registry.dispose()
