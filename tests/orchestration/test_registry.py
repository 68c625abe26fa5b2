"""The registry contract, on SQLite and on a real PostgreSQL server: opening, schema checks, the write lock,
and every broken registry or driver problem as one clear error that writes nothing."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from registryfix import dump
from sqlalchemy import text

from ioussl.errors import RegistryError
from ioussl.registry import open_registry, repo
from ioussl.registry.db import parse_target
from ioussl.registry.errors import MissingRegistry, RegistryBusy
from ioussl.registry.models import SCHEMA_VERSION, SchemaInfo
from ioussl.registry.schema import expected_tables, mount_fstype


def _tables(registry) -> set[str]:
    from sqlalchemy import inspect

    with registry.connection(write=False) as conn:
        return set(inspect(conn).get_table_names())


def test_a_new_registry_has_schema_v3_at_alembic_head(registry_db):
    registry = open_registry(registry_db)
    try:
        assert _tables(registry) >= expected_tables()
        with registry.session(write=False) as session:
            assert session.get(SchemaInfo, "version").value == str(SCHEMA_VERSION)
            assert session.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0004"
    finally:
        registry.dispose()


def test_sqlite_runs_in_wal_mode_with_foreign_keys_and_busy_timeout(db):
    registry = open_registry(db)
    with registry.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() > 0
    registry.dispose()


def test_read_only_open_of_missing_registry_says_plan_first(tmp_path):
    with pytest.raises(MissingRegistry, match="no registry at .*plan a study first"):
        open_registry(str(tmp_path / "none.db"), create=False)
    assert not (tmp_path / "none.db").exists()


def test_newer_schema_is_refused(registry_db):
    registry = open_registry(registry_db)
    with registry.session() as session:
        session.get(SchemaInfo, "version").value = str(SCHEMA_VERSION + 1)
    registry.dispose()
    with pytest.raises(RegistryError, match="newer than this ioussl understands.*upgrade ioussl"):
        open_registry(registry_db)


def test_unknown_alembic_revision_is_newer(registry_db):
    registry = open_registry(registry_db)
    with registry.connection() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    registry.dispose()
    with pytest.raises(RegistryError, match="at migration revision '0099', .* which this ioussl does not know"):
        open_registry(registry_db, create=False)


@pytest.mark.parametrize("table", ["results", "runs", "alembic_version"])
def test_a_registry_with_a_dropped_table_is_refused_and_not_written(registry_db, table):
    registry = open_registry(registry_db)
    with registry.connection() as conn:
        conn.execute(text(f"DROP TABLE {table} CASCADE" if not registry.is_sqlite else f"DROP TABLE {table}"))
    registry.dispose()
    before = dump(registry_db)
    for create in (True, False):
        with pytest.raises(RegistryError, match=f"is damaged \\(missing: .*{table}.*\\): nothing was written"):
            open_registry(registry_db, create=create)
    assert dump(registry_db) == before


def test_corrupt_file_is_refused(tmp_path):
    path = tmp_path / "bad.db"
    path.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(RegistryError, match="corrupt or not a database"):
        open_registry(str(path))


def test_foreign_database_is_refused(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE things (x)")
    with pytest.raises(RegistryError, match="not an ioussl registry"):
        open_registry(str(path))


def test_foreign_postgres_schema_is_refused(pg_db):
    import psycopg

    url = pg_db.replace("postgresql://", "postgresql://", 1)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE things (x int)")
    with pytest.raises(RegistryError, match="not an ioussl registry"):
        open_registry(pg_db)


def test_unreadable_registry(tmp_path, monkeypatch):
    path = tmp_path / "r.db"
    open_registry(str(path)).dispose()
    monkeypatch.setattr("os.access", lambda *_: False)
    with pytest.raises(RegistryError, match="not readable"):
        open_registry(str(path))


def _hold_write_lock(registry, seconds: float, started: threading.Event, released: list[float] | None = None) -> None:
    with registry.session():
        started.set()
        time.sleep(seconds)
        if released is not None:
            released.append(time.monotonic())  # just before the commit that lets the waiter in


def test_a_writer_waits_for_the_lock_then_proceeds(registry_db):
    holder = open_registry(registry_db)
    started, released = threading.Event(), []
    thread = threading.Thread(target=_hold_write_lock, args=(holder, 0.5, started, released))
    thread.start()
    started.wait(5)
    waiter = open_registry(registry_db)
    with waiter.session(wait=10) as session:
        got_lock = time.monotonic()
        session.add(SchemaInfo(key="waited", value="1"))
    thread.join()
    with waiter.session(write=False) as session:
        assert session.get(SchemaInfo, "waited").value == "1"
    assert released and got_lock >= released[0]  # the waiter had the lock only once the holder let it go
    holder.dispose()
    waiter.dispose()


def test_a_lock_held_too_long_is_one_clear_error_and_readers_are_not_blocked(registry_db):
    holder = open_registry(registry_db)
    started = threading.Event()
    thread = threading.Thread(target=_hold_write_lock, args=(holder, 1.5, started))
    thread.start()
    started.wait(5)
    other = open_registry(registry_db)
    try:
        with pytest.raises(RegistryBusy, match="locked by another process for too long"):
            with other.session(wait=0.2) as session:
                session.add(SchemaInfo(key="probe", value="1"))
        with other.session(write=False) as session:  # a reader goes on while the writer holds the lock
            assert session.get(SchemaInfo, "version") is not None
    finally:
        thread.join()
        holder.dispose()
        other.dispose()


def test_the_lock_timeout_comes_from_the_environment(db, monkeypatch):
    open_registry(db).dispose()
    monkeypatch.setenv("IOUSSL_DB_TIMEOUT", "0.2")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        registry = open_registry(db)
        began = time.monotonic()
        with pytest.raises(RegistryBusy):
            with registry.session():
                pass
        assert time.monotonic() - began < 5
        registry.dispose()
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_study_is_created_once(registry_db):
    registry = open_registry(registry_db)
    for _ in range(2):
        with registry.session() as session:
            repo.get_or_create_study(session, "s", None, {}, "runs", axes=["pretrain.base_lr"])
    with registry.session(write=False) as session:
        studies = repo.list_studies(session)
    assert [(s.name, s.axes) for s in studies] == [("s", ["pretrain.base_lr"])]
    registry.dispose()


@pytest.mark.parametrize(
    "db, message",
    [
        ("mysql://u:p@localhost/x", "unsupported database 'mysql'.*supports SQLite .* and PostgreSQL"),
        ("foo://bar", "unsupported database 'foo'"),
        ("postgresql+pg8000://u:secret@localhost/x", "pg8000 driver for postgresql is not installed.*pg8000"),
        ("postgresql+nosuch://u@localhost/x", "unknown database driver 'postgresql\\+nosuch'"),
        ("sqlite+nosuch:///x.db", "unknown database driver"),
    ],
)
def test_unsupported_or_missing_drivers_are_one_line(db, message):
    with pytest.raises(RegistryError, match=message) as caught:
        parse_target(db)
    assert "secret" not in str(caught.value) and "\n" not in str(caught.value)


def test_a_missing_postgres_driver_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_psycopg(name, *args, **kwargs):
        if name == "psycopg" or name.startswith("psycopg."):
            raise ImportError("No module named 'psycopg'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psycopg)
    with pytest.raises(RegistryError, match=r"psycopg driver for postgresql is not installed.*ioussl\[postgres\]"):
        parse_target("postgresql://u:pw@localhost/x")


@pytest.mark.parametrize("value", ["abc", "-1", "0", "nan", "inf", "1e9"])
def test_a_bad_timeout_is_one_line(db, monkeypatch, value):
    monkeypatch.setenv("IOUSSL_DB_TIMEOUT", value)
    with pytest.raises(RegistryError, match=r"\$IOUSSL_DB_TIMEOUT must be a number of seconds"):
        open_registry(db)


def test_an_uncreatable_path_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RegistryError, match="cannot create the registry at"):
        open_registry(str(blocker / "sub" / "r.db"))


def test_an_unreachable_server_is_one_line_without_the_password():
    with pytest.raises(RegistryError, match="cannot reach the registry postgresql") as caught:
        open_registry("postgresql://someone:topsecret@127.0.0.1:1/nothing")
    assert "topsecret" not in str(caught.value)


def test_the_mount_table_names_the_file_system(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "rootfs / ext4 rw 0 0\n"
        f"server:/export {tmp_path}/shared nfs4 rw 0 0\n"
        f"lfs@o2ib:/scratch {tmp_path}/scratch lustre rw 0 0\n"
    )
    assert mount_fstype(tmp_path / "shared" / "registry.db", mounts) == "nfs4"
    assert mount_fstype(tmp_path / "scratch" / "a" / "registry.db", mounts) == "lustre"
    assert mount_fstype(tmp_path / "sharedx" / "registry.db", mounts) == "ext4"


def test_sqlite_on_a_network_file_system_warns_once_and_points_to_postgres(db, monkeypatch):
    from ioussl.registry import schema

    open_registry(db).dispose()
    monkeypatch.setattr(schema, "mount_fstype", lambda path, mounts=None: "beegfs")
    monkeypatch.setattr(schema, "_warned", set())
    with pytest.warns(schema.NetworkFsWarning, match="network file system \\(beegfs\\).*PostgreSQL"):
        open_registry(db).dispose()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_registry(db).dispose()  # once per process and registry


def test_the_cli_shows_the_network_warning_as_one_line(db, monkeypatch, repo_root):
    from typer.testing import CliRunner

    from ioussl.cli import app
    from ioussl.registry import schema

    CliRunner().invoke(app, ["plan", "grid", str(repo_root / "jobs" / "tiny.toml"), "--db", db, "--no-check-data"])
    monkeypatch.setattr(schema, "mount_fstype", lambda path, mounts=None: "nfs")
    monkeypatch.setattr(schema, "_warned", set())
    result = CliRunner().invoke(app, ["status", "--db", db, "--no-sync"])
    assert result.exit_code == 0
    lines = [line for line in result.stderr.splitlines() if "network file system" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: registry ")
