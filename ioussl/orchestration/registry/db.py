"""Opening the registry: SQLite by default (WAL, foreign keys, busy timeout), any SQLAlchemy URL otherwise.

Errors from the database driver never reach the user as tracebacks: they become one-line RegistryErrors
(unreadable, locked too long, corrupt, or written by a newer ioussl).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from ioussl.errors import IousslError, RegistryError
from ioussl.orchestration.registry.models import SCHEMA_VERSION, Base, SchemaInfo

DEFAULT_DB = "registry.db"
ENV_DB = "IOUSSL_DB"
ENV_TIMEOUT = "IOUSSL_DB_TIMEOUT"


class MissingRegistry(RegistryError):
    """A read-only open found no registry file."""


def resolve_db(db: str | None) -> str:
    """The registry location: --db, else $IOUSSL_DB, else ./registry.db."""
    return db or os.environ.get(ENV_DB) or DEFAULT_DB


def to_url(db: str) -> str:
    """A path becomes a sqlite URL; anything with '://' is taken as a SQLAlchemy URL."""
    if "://" in db:
        return db
    return f"sqlite:///{Path(db).expanduser().resolve()}"


class Registry:
    """An engine plus a unit-of-work helper. One ``session()`` block = one transaction."""

    def __init__(self, engine: Engine, location: str) -> None:
        self.engine = engine
        self.location = location

    @contextmanager
    def session(self) -> Iterator[Session]:
        try:
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                yield session
        except IousslError:
            raise
        except SQLAlchemyError as exc:
            raise _registry_error(exc, self.location) from None

    def dispose(self) -> None:
        self.engine.dispose()


def open_registry(db: str | None = None, create: bool = True) -> Registry:
    """Open (and with ``create`` initialise) the registry, checking its schema version."""
    location = resolve_db(db)
    url = to_url(location)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise RegistryError(f"not a database path or SQLAlchemy URL: {location}") from None
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database)
        if not path.exists() and not create:
            raise MissingRegistry(f"no registry at {location}: plan a study first (ioussl plan grid STUDY.toml)")
        if path.exists() and not os.access(path, os.R_OK):
            raise RegistryError(f"registry {location} is not readable (check its permissions)")
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
    engine = _make_engine(url, is_sqlite)
    registry = Registry(engine, location)
    try:
        _check_or_create_schema(engine, location, create)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise _registry_error(exc, location) from None
    except IousslError:
        engine.dispose()
        raise
    return registry


def _make_engine(url: str, is_sqlite: bool) -> Engine:
    timeout = float(os.environ.get(ENV_TIMEOUT, "15"))
    if not is_sqlite:
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": timeout})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        # WAL lets `status` read while a job-ingesting `status` elsewhere writes; the busy timeout makes
        # writers wait for each other instead of failing at once.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        cursor.close()

    return engine


def _check_or_create_schema(engine: Engine, location: str, create: bool) -> None:
    tables = set(inspect(engine).get_table_names())
    if "schema_info" not in tables:
        if tables:
            raise RegistryError(f"{location} is not an ioussl registry (it has tables {', '.join(sorted(tables))})")
        if not create:
            raise RegistryError(f"{location} is an empty database, not an ioussl registry")
        Base.metadata.create_all(engine)
        with Session(engine) as session, session.begin():
            session.add(SchemaInfo(key="version", value=str(SCHEMA_VERSION)))
        return
    with Session(engine) as session:
        found = session.scalar(select(SchemaInfo.value).where(SchemaInfo.key == "version"))
    version = int(found) if found and found.isdigit() else None
    if version is None:
        raise RegistryError(f"registry {location} has no schema version: it is damaged or not from ioussl")
    if version > SCHEMA_VERSION:
        raise RegistryError(
            f"registry {location} has schema version {version}, newer than this ioussl understands "
            f"({SCHEMA_VERSION}): upgrade ioussl"
        )
    if version < SCHEMA_VERSION:
        raise RegistryError(
            f"registry {location} has old schema version {version} (this ioussl: {SCHEMA_VERSION}); "
            "no migration exists for it yet"
        )


def _registry_error(exc: SQLAlchemyError, location: str) -> RegistryError:
    text = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, OperationalError) and "locked" in text:
        return RegistryError(
            f"registry {location} stayed locked by another process for too long "
            f"(raise ${ENV_TIMEOUT} seconds or retry): {text}"
        )
    if isinstance(exc, DatabaseError) and ("not a database" in text or "malformed" in text):
        return RegistryError(f"registry {location} is corrupt or not a database: {text}")
    if isinstance(exc, OperationalError) and ("unable to open" in text or "readonly" in text):
        return RegistryError(f"registry {location} cannot be opened for writing: {text}")
    return RegistryError(f"registry {location}: {text}")
