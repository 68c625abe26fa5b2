"""Opening the registry: pragmas, schema versions, and every broken registry as one clear error."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from sqlalchemy import text

from ioussl.errors import RegistryError
from ioussl.orchestration.registry import open_registry
from ioussl.orchestration.registry.models import SCHEMA_VERSION, SchemaInfo


def test_sqlite_runs_in_wal_mode_with_foreign_keys_and_busy_timeout(db):
    registry = open_registry(db)
    with registry.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() > 0
    with registry.session() as session:
        assert session.get(SchemaInfo, "version").value == str(SCHEMA_VERSION)


def test_read_only_open_of_missing_registry_says_plan_first(tmp_path):
    with pytest.raises(RegistryError, match="no registry at .*plan a study first"):
        open_registry(str(tmp_path / "none.db"), create=False)
    assert not (tmp_path / "none.db").exists()


def test_newer_schema_is_refused(db):
    registry = open_registry(db)
    with registry.session() as session:
        session.get(SchemaInfo, "version").value = str(SCHEMA_VERSION + 1)
    registry.dispose()
    with pytest.raises(RegistryError, match="newer than this ioussl understands"):
        open_registry(db)


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


def test_unreadable_registry(tmp_path, monkeypatch):
    path = tmp_path / "r.db"
    open_registry(str(path)).dispose()
    monkeypatch.setattr("os.access", lambda *_: False)
    with pytest.raises(RegistryError, match="not readable"):
        open_registry(str(path))


def test_lock_held_too_long_is_a_clear_error(db, monkeypatch):
    open_registry(db).dispose()
    monkeypatch.setenv("IOUSSL_DB_TIMEOUT", "0.2")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        registry = open_registry(db)
        with pytest.raises(RegistryError, match="locked by another process for too long"):
            with registry.session() as session:
                session.add(SchemaInfo(key="probe", value="1"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_writers_wait_for_each_other_within_the_busy_timeout(db):
    open_registry(db).dispose()
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    threading.Timer(0.3, lambda: (holder.execute("COMMIT"))).start()
    registry = open_registry(db)
    with registry.session() as session:  # blocks until the holder commits, then succeeds
        session.add(SchemaInfo(key="waited", value="1"))
    with registry.session() as session:
        assert session.get(SchemaInfo, "waited").value == "1"
    holder.close()


def test_any_sqlalchemy_url_works(tmp_path):
    registry = open_registry(f"sqlite:///{tmp_path / 'url.db'}")
    with registry.session() as session:
        assert session.get(SchemaInfo, "version") is not None
