"""Schema migrations: today's v1 registry.db.example (a fixture) upgrades with every row and the same
Table 4.2; a v1 registry on PostgreSQL too; the migrations reach exactly the models; a failed upgrade
changes nothing; old registries are refused by every other command with the command to run."""

from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from registryfix import dump, location
from sqlalchemy import MetaData, create_engine, select, text
from typer.testing import CliRunner

from ioussl.cli import app
from ioussl.errors import RegistryError
from ioussl.registry import migrate, open_registry, schema
from ioussl.registry.db import parse_target
from ioussl.registry.errors import OldSchema
from ioussl.registry.models import SCHEMA_VERSION, Base

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
V1 = FIXTURES / "registry-v1.db"
V1_TABLES = ("schema_info", "studies", "runs", "attempts", "results", "metrics", "provenance")
RENAMED = {("runs", "config_hash"): "run_hash"}


@pytest.fixture
def v1_copy(tmp_path) -> str:
    copy = tmp_path / "registry.db"
    shutil.copy(V1, copy)
    return str(copy)


def v1_rows(db: str) -> dict[str, list[dict]]:
    """Every row of the v1 tables, as column -> value (v1 column names)."""
    engine = create_engine(parse_target(db).url)
    try:
        with engine.connect() as conn:
            meta = MetaData()
            meta.reflect(conn, only=list(V1_TABLES))
            return {name: [dict(row._mapping) for row in conn.execute(select(meta.tables[name]))]
                    for name in V1_TABLES}
    finally:
        engine.dispose()


def assert_rows_survived(before: dict[str, list[dict]], db: str) -> None:
    after = v1_rows(db)
    for table, rows in before.items():
        if table == "schema_info":
            assert after[table] == [{"key": "version", "value": str(SCHEMA_VERSION)}]
            continue
        projected = [
            {column: row[RENAMED.get((table, column), column)] for column in rows[0]} for row in after[table]
        ] if rows else after[table]
        key = lambda r: repr(sorted(r.items()))  # noqa: E731
        assert sorted(projected, key=key) == sorted(rows, key=key), table


def report(db: str, fmt: str) -> str:
    result = CliRunner().invoke(app, ["report", "--table", "--db", db, "--format", fmt])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_the_v1_example_upgrades_with_every_row_and_the_same_table_4_2(v1_copy):
    before = v1_rows(v1_copy)
    assert sum(map(len, before.values())) > 90  # 34 runs, 34 attempts, 24 results, ...
    result = CliRunner().invoke(app, ["db", "upgrade", "--db", v1_copy])
    assert result.exit_code == 0, result.output
    assert "backed up" in result.stdout and "from schema version 1 to 4" in result.stdout
    assert_rows_survived(before, v1_copy)
    assert report(v1_copy, "csv") == (FIXTURES / "registry-v1.report.csv").read_text()
    fingerprint = re.search(r"fingerprint \w+ over \d+ run\(s\)", (FIXTURES / "registry-v1.report.md").read_text())
    assert fingerprint and fingerprint.group(0) in report(v1_copy, "markdown")


def test_the_backup_is_the_v1_registry_beside_it(v1_copy):
    outcome = migrate.upgrade(v1_copy)
    assert outcome.backup is not None and outcome.backup.parent == Path(v1_copy).parent
    assert outcome.backup.name.startswith("registry.db.v1-")
    with sqlite3.connect(outcome.backup) as conn:
        assert conn.execute("SELECT value FROM schema_info").fetchone() == ("1",)
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (34,)
    again = migrate.upgrade(v1_copy)
    assert not again.changed and again.backup is None


@pytest.mark.parametrize(
    "args",
    [
        ["status"], ["status", "--no-sync"], ["report", "--table"], ["submit", "--dry-run"],
        ["cancel", "--study", "thesis"], ["retry", "--study", "thesis"],
    ],
)
def test_every_other_command_refuses_an_old_registry_naming_the_upgrade(v1_copy, args):
    before = dump(v1_copy)
    result = CliRunner().invoke(app, [*args, "--db", v1_copy])
    assert result.exit_code == 1 and result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: registry ")
    assert f"ioussl db upgrade --db {v1_copy}" in lines[0]
    assert dump(v1_copy) == before


def test_plan_refuses_an_old_registry(v1_copy, repo_root):
    before = dump(v1_copy)
    with pytest.raises(OldSchema):
        from ioussl.plan.service import plan_grid

        plan_grid(repo_root / "jobs" / "tiny.toml", v1_copy, check_data=False)
    assert dump(v1_copy) == before


def test_db_current_says_what_the_registry_holds(v1_copy):
    result = CliRunner().invoke(app, ["db", "current", "--db", v1_copy])
    assert result.exit_code == 0
    assert "schema version 1 (revision none: pre-Alembic v1); this ioussl: 4; run `ioussl db upgrade`" in result.stdout
    migrate.upgrade(v1_copy)
    result = CliRunner().invoke(app, ["db", "current", "--db", v1_copy])
    assert "schema version 4 (revision 0004)" in result.stdout and "up to date" in result.stdout


def test_a_failed_upgrade_changes_nothing(v1_copy, monkeypatch):
    before = dump(v1_copy)
    real = migrate._run_revisions

    def fail_after_migrating(conn, stamp_v1):
        real(conn, stamp_v1)  # every revision ran (DDL included) ...
        raise RegistryError("simulated failure at the end of the upgrade")  # ... then it fails

    monkeypatch.setattr(migrate, "_run_revisions", fail_after_migrating)
    with pytest.raises(RegistryError, match="simulated failure"):
        migrate.upgrade(v1_copy)
    assert dump(v1_copy) == before  # the DDL was rolled back with the rest
    assert list(Path(v1_copy).parent.glob("*.bak")) == []  # and no backup of an unchanged registry is left
    with pytest.raises(OldSchema):
        open_registry(v1_copy)


def test_newer_damaged_and_missing_registries_are_not_upgraded(v1_copy, tmp_path):
    with sqlite3.connect(v1_copy) as conn:
        conn.execute("UPDATE schema_info SET value = '7'")
    with pytest.raises(RegistryError, match="newer than this ioussl"):
        migrate.upgrade(v1_copy)
    damaged = tmp_path / "damaged.db"
    shutil.copy(V1, damaged)
    with sqlite3.connect(damaged) as conn:
        conn.execute("DROP TABLE metrics")
    with pytest.raises(RegistryError, match="damaged \\(missing: metrics\\)"):
        migrate.upgrade(str(damaged))
    with pytest.raises(RegistryError, match="no registry at"):
        migrate.upgrade(str(tmp_path / "none.db"))


def build_v1(db: str) -> None:
    """A v1 registry through revision 0001 (what ioussl 0.1 created), on any backend."""
    from alembic import command
    from alembic.config import Config

    engine = create_engine(parse_target(db).url)
    try:
        with engine.begin() as conn:
            config = Config()
            config.set_main_option("script_location", str(schema.MIGRATIONS))
            config.attributes["connection"] = conn
            command.upgrade(config, "0001")
            conn.execute(text("DROP TABLE alembic_version"))  # v1 had no Alembic
    finally:
        engine.dispose()


def copy_v1_rows(rows: dict[str, list[dict]], db: str) -> None:
    engine = create_engine(parse_target(db).url)
    try:
        with engine.begin() as conn:
            meta = MetaData()
            meta.reflect(conn, only=list(V1_TABLES))
            for table in V1_TABLES[1:]:
                ordered = sorted(rows[table], key=lambda r: r.get("parent_id") is not None)  # parents first
                if ordered:
                    conn.execute(meta.tables[table].insert(), ordered)
    finally:
        engine.dispose()


def richer_rows(rows: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The example's rows plus a metric and a provenance row, and an attempt with every column set."""
    import datetime as dt

    run = rows["runs"][0]["id"]
    now = dt.datetime(2026, 1, 2, 3, 4, 5)
    extra = dict(rows)
    extra["metrics"] = [{"id": 1, "run_id": run, "name": "loss", "epoch": 0, "step": 10, "value": 0.5}]
    extra["provenance"] = [{"run_id": run, "git_commit": "a" * 40, "git_dirty": False, "packages": {"torch": "2"},
                            "host": "node1", "device": "H100", "recorded_at": now}]
    extra["attempts"] = rows["attempts"] + [{
        "id": 999, "run_id": run, "executor": "slurm", "job_id": "12_3", "array_job_id": "12", "array_index": 3,
        "status": "FAILED", "scheduler_state": "FAILED", "exit_code": "1:0", "node": "n1", "depends_on": "11",
        "job_name": f"ioussl-{run}", "misses": 2, "reason": "exit code 1", "submitted_at": now,
        "started_at": now, "ended_at": now,
    }]
    return extra


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_v1_registry_upgrades_on_both_backends_with_every_row(backend, tmp_path):
    import contextlib

    with contextlib.ExitStack() as stack:
        db = location(backend, tmp_path, stack)
        build_v1(db)
        rows = richer_rows(v1_rows(str(V1)))
        copy_v1_rows(rows, db)
        before = v1_rows(db)
        with pytest.raises(OldSchema):
            open_registry(db)
        outcome = migrate.upgrade(db)
        assert outcome.changed and (outcome.backup is not None) == (backend == "sqlite")
        assert_rows_survived(before, db)
        assert report(db, "csv") == (FIXTURES / "registry-v1.report.csv").read_text()
        assert _differences(db) == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_new_registry_matches_the_models(backend, tmp_path):
    import contextlib

    with contextlib.ExitStack() as stack:
        db = location(backend, tmp_path, stack)
        open_registry(db).dispose()
        assert _differences(db) == []


def _differences(db: str) -> list:
    """Alembic's comparison of the database with the models (what `alembic revision --autogenerate` sees)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = create_engine(parse_target(db).url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": _same_type})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def _same_type(context, inspected_column, metadata_column, inspected_type, metadata_type):  # type: ignore[no-untyped-def]
    """SQLite keeps 64-bit integers whatever the declared type; JSON is JSON; statuses are VARCHAR(16)."""
    names = {type(inspected_type).__name__.upper(), type(metadata_type).__name__.upper()}
    if context.dialect.name == "sqlite" and names <= {"INTEGER", "BIGINTEGER", "BIGINT"}:
        return False
    if names <= {"ENUM", "VARCHAR", "STRING"} and getattr(inspected_type, "length", None) == 16:
        return False
    return None


def test_head_is_the_last_revision_and_a_new_registry_is_stamped_with_it(registry_db):
    from alembic.migration import MigrationContext

    assert schema.script_directory().get_current_head() == schema.HEAD
    registry = open_registry(registry_db)
    with registry.connection(write=False) as conn:
        assert MigrationContext.configure(conn).get_current_revision() == schema.HEAD
    registry.dispose()


def test_v3_adds_archived_at_empty_so_that_no_run_is_hidden_by_the_upgrade(v1_copy):
    migrate.upgrade(v1_copy, backup=False)
    with sqlite3.connect(v1_copy) as conn:
        archived = conn.execute("SELECT COUNT(*), COUNT(archived_at) FROM runs").fetchone()
    assert archived[0] > 0 and archived[1] == 0
    result = CliRunner().invoke(app, ["status", "--db", v1_copy, "--no-sync", "--json"])
    assert result.exit_code == 0 and len(__import__("json").loads(result.stdout)) == archived[0]


def test_an_unknown_migration_revision_is_named_in_one_line(tmp_path):
    registry_db = str(tmp_path / "registry.db")
    open_registry(registry_db).dispose()
    with sqlite3.connect(registry_db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'f00d'")
    result = CliRunner().invoke(app, ["status", "--db", registry_db])
    assert result.exit_code == 1
    assert "is at migration revision 'f00d', schema version 4, which this ioussl does not know (it knows " \
           "revisions up to 0004, schema 4): upgrade ioussl" in result.stderr
    assert "newer than this ioussl understands (4)" not in result.stderr
