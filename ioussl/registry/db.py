"""Opening the registry: SQLite (a path) or PostgreSQL (a URL), one write lock, one unit of work.

Guarantees (docs/architecture.md, "What the registry guarantees"):
- Writers take the registry's one write lock before they read what they will change: SQLite
  ``BEGIN IMMEDIATE``, PostgreSQL a transaction-scoped advisory lock. So creating the schema, creating a
  study and ingesting results are race-free on both backends, and a writer never fails half-way because
  another one committed in between. Readers never take it and never block a writer.
- Every driver failure is one line (:class:`RegistryError`): unsupported dialect, missing driver (naming the
  extra to install), bad ``$IOUSSL_DB_TIMEOUT``, a path that cannot be created, a server that does not
  answer, a lock held too long (:class:`RegistryBusy`), a corrupt file, a foreign or damaged database, a
  schema that needs ``ioussl db upgrade`` (:class:`OldSchema`) or a newer ioussl.
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session

from ioussl.errors import IousslError, RegistryError
from ioussl.registry import schema
from ioussl.registry.errors import MissingRegistry, OldSchema, RegistryBusy, registry_error

DEFAULT_DB = "registry.db"
ENV_DB = "IOUSSL_DB"
ENV_TIMEOUT = "IOUSSL_DB_TIMEOUT"
DEFAULT_TIMEOUT_S = 15.0
DRIVERS = {"sqlite": "pysqlite", "postgresql": "psycopg"}  # supported backends and their default drivers
EXTRAS = {"postgresql": "postgres"}  # backend -> the pip extra that installs its driver

__all__ = ["MissingRegistry", "OldSchema", "Registry", "RegistryBusy", "open_registry", "opened", "resolve_db",
           "unit_of_work"]


def resolve_db(db: str | None) -> str:
    """The registry location: --db, else $IOUSSL_DB, else ./registry.db."""
    return db or os.environ.get(ENV_DB) or DEFAULT_DB


def to_url(db: str) -> str:
    """A path becomes a sqlite URL; anything with '://' is taken as a SQLAlchemy URL."""
    if "://" in db:
        return db
    return f"sqlite:///{Path(db).expanduser().resolve()}"


def lock_timeout() -> float:
    """Seconds a writer waits for the write lock: $IOUSSL_DB_TIMEOUT, default 15."""
    raw = os.environ.get(ENV_TIMEOUT)
    if raw is None or raw.strip() == "":
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 < value <= 86400:
        raise RegistryError(f"${ENV_TIMEOUT} must be a number of seconds in (0, 86400], got {raw!r}")
    return value


@dataclass(frozen=True)
class Target:
    """Where the registry lives: the SQLAlchemy URL, how to name it to a user, and its file (SQLite)."""

    url: URL
    location: str  # for messages: the path as given, or the URL without its password
    path: Path | None  # the SQLite file; None for PostgreSQL and in-memory SQLite

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"


def parse_target(db: str | None) -> Target:
    """Check the location before any connection: supported backend, installed driver, a usable path."""
    given = resolve_db(db)
    try:
        url = make_url(to_url(given))
    except ArgumentError:
        raise RegistryError(f"not a database path or SQLAlchemy URL: {given!r}") from None
    backend = url.get_backend_name()
    location = given if "://" not in given else url.render_as_string(hide_password=True)
    if backend not in DRIVERS:
        raise RegistryError(
            f"unsupported database {backend!r} in {location}: ioussl supports SQLite (a file path) and "
            "PostgreSQL (postgresql://user@host/database)"
        )
    if url.drivername == backend:
        url = url.set(drivername=f"{backend}+{DRIVERS[backend]}")
    _check_driver(url, location)
    path = None
    if backend == "sqlite" and url.database not in (None, "", ":memory:"):
        path = Path(url.database)
    return Target(url, location, path)


def _check_driver(url: URL, location: str) -> None:
    try:
        dialect = url.get_dialect()
    except NoSuchModuleError:
        raise RegistryError(f"unknown database driver {url.drivername!r} in {location}") from None
    try:
        dialect.import_dbapi()
    except ImportError:
        backend, driver = url.get_backend_name(), url.get_driver_name()
        extra = EXTRAS.get(backend)
        if extra and driver == DRIVERS[backend]:
            hint = f"pip install 'ioussl[{extra}]'"
        else:
            hint = f"install the {driver} package, or use {backend}:// ({DRIVERS[backend]})"
        raise RegistryError(f"the {driver} driver for {backend} is not installed ({location}): {hint}") from None


class Registry:
    """An engine and its units of work. One ``session()`` block is one transaction."""

    def __init__(self, engine: Engine, target: Target) -> None:
        self.engine = engine
        self.target = target
        self.location = target.location

    @property
    def is_sqlite(self) -> bool:
        return self.target.is_sqlite

    @contextmanager
    def connection(self, write: bool = True, wait: float | None = None) -> Iterator[Connection]:
        """A connection inside one transaction (committed at the end); ``write`` holds the write lock."""
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(ioussl_write=write, ioussl_wait=wait)
                with conn.begin():
                    if write:
                        self._lock(conn, lock_timeout() if wait is None else wait)
                    yield conn
        except IousslError:
            raise
        except SQLAlchemyError as exc:
            raise registry_error(exc, self.location) from None

    @contextmanager
    def session(self, write: bool = True, wait: float | None = None) -> Iterator[Session]:
        """A unit of work: commits at the end, rolls back on any error. Read-only blocks pass ``write=False``.

        Raises:
            RegistryBusy: ``write`` and another writer held the lock longer than ``wait`` seconds
                (default $IOUSSL_DB_TIMEOUT).
        """
        with self.connection(write, wait) as conn:
            session = Session(bind=conn, expire_on_commit=False, join_transaction_mode="rollback_only")
            try:
                yield session
                session.flush()
            finally:
                session.close()

    def _lock(self, conn: Connection, wait: float) -> None:
        if self.is_sqlite:
            return  # BEGIN IMMEDIATE in the begin hook (_sqlite_hooks) took it, waiting up to `wait`
        conn.execute(text(f"SET LOCAL lock_timeout = {max(1, int(wait * 1000))}"))
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('ioussl registry ' || current_schema()))"))

    def dispose(self) -> None:
        self.engine.dispose()


def open_registry(db: str | None = None, create: bool = True, *, allow_old: bool = False) -> Registry:
    """Open (and with ``create`` initialise) the registry, checking that its schema is this ioussl's.

    Raises:
        MissingRegistry: ``create`` is False and there is no registry file.
        OldSchema: the registry needs ``ioussl db upgrade`` (unless ``allow_old``).
        RegistryError: any other reason the registry cannot be used (one line).
    """
    target = parse_target(db)
    if target.path is not None:
        _prepare_file(target, create)
    registry = Registry(_make_engine(target), target)
    try:
        ensure_schema(registry, create=create, allow_old=allow_old)
    except BaseException:
        registry.dispose()
        raise
    return registry


@contextmanager
def opened(db: str | None, create: bool = False, *, allow_old: bool = False) -> Iterator[Registry]:
    """The registry for the duration of a block (several units of work), disposed at the end."""
    registry = open_registry(db, create=create, allow_old=allow_old)
    try:
        yield registry
    finally:
        registry.dispose()


@contextmanager
def unit_of_work(db: str | None, *, create: bool = False, write: bool = True,
                 wait: float | None = None) -> Iterator[Session]:
    """Open, one transaction, commit, dispose: the whole life of a one-step command."""
    with opened(db, create=create) as registry, registry.session(write=write, wait=wait) as session:
        yield session


def _prepare_file(target: Target, create: bool) -> None:
    path = target.path
    assert path is not None
    if not path.exists():
        if not create:
            raise MissingRegistry(f"no registry at {target.location}: plan a study first (ioussl plan grid "
                                  "STUDY.toml), or point to yours with --db PATH or $IOUSSL_DB")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RegistryError(f"cannot create the registry at {target.location}: {exc.strerror or exc}") from None
        return
    if not path.is_file():
        raise RegistryError(f"registry {target.location} is not a file")
    if not os.access(path, os.R_OK):
        raise RegistryError(f"registry {target.location} is not readable (check its permissions)")
    schema.warn_if_network_fs(path, target.location)


def _make_engine(target: Target) -> Engine:
    timeout = lock_timeout()
    if not target.is_sqlite:
        return create_engine(target.url, pool_pre_ping=True, connect_args={"connect_timeout": 10})
    engine = create_engine(target.url, connect_args={"timeout": timeout})
    _sqlite_hooks(engine, timeout)
    return engine


def _sqlite_hooks(engine: Engine, timeout: float) -> None:
    """Let ioussl, not the sqlite3 module, say when a transaction begins and which lock it takes."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # no implicit BEGIN from the sqlite3 module
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        # WAL lets readers go on while one writer writes; foreign keys keep attempts and results tied to runs.
        _switch_to_wal(cursor, timeout)
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        options = conn.get_execution_options()
        if not options.get("ioussl_write"):
            conn.exec_driver_sql("BEGIN")
            return
        wait = options.get("ioussl_wait")
        conn.exec_driver_sql(f"PRAGMA busy_timeout={int((timeout if wait is None else wait) * 1000)}")
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        finally:
            conn.exec_driver_sql(f"PRAGMA busy_timeout={int(timeout * 1000)}")


def _switch_to_wal(cursor: Any, timeout: float) -> None:
    """``PRAGMA journal_mode=WAL``, waiting up to ``timeout`` for the lock it needs.

    Switching a new file to WAL takes an exclusive lock; while several processes open a new registry at once
    (eight racing planners), SQLite can answer "database is locked" at once instead of calling the busy
    handler, which the other statements wait through. Retried here, as a busy timeout would.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def ensure_schema(registry: Registry, *, create: bool, allow_old: bool = False) -> schema.SchemaState:
    """Check the schema; create it in an empty database when ``create`` (under the write lock)."""
    with registry.connection(write=False) as conn:
        state = schema.read_state(conn)
    if state.kind == "empty":
        if not create:
            raise RegistryError(f"{registry.location} is an empty database, not an ioussl registry")
        with registry.connection(write=True) as conn:
            state = schema.read_state(conn)  # another process may have created it while we waited for the lock
            if state.kind == "empty":
                schema.create_schema(conn)
                return schema.SchemaState("current", schema.SCHEMA_VERSION, schema.HEAD)
    schema.check(state, registry.location, allow_old=allow_old)
    return state
