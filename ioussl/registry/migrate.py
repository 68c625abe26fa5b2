"""``ioussl db upgrade`` and ``ioussl db current``: bring a registry to this ioussl's schema, safely.

The upgrade holds the registry's write lock from start to end, copies a SQLite file beside itself first
(``<file>.v<old>-<UTC time>.bak``, through SQLite's backup API so a WAL file is included), and runs every
Alembic revision in one transaction on that connection: it completes, or the registry is left as it was.
A v1 registry (``schema_info`` only) is first stamped with revision 0001, the v1 baseline.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection

from ioussl.errors import RegistryError
from ioussl.registry import schema
from ioussl.registry.db import Registry, opened
from ioussl.registry.models import SCHEMA_VERSION


@dataclass(frozen=True)
class UpgradeOutcome:
    location: str
    from_version: int | None
    to_version: int
    backup: Path | None = None

    @property
    def changed(self) -> bool:
        return self.from_version != self.to_version


@dataclass(frozen=True)
class SchemaReport:
    location: str
    version: int | None
    revision: str | None
    current: bool
    latest: int = SCHEMA_VERSION


def current(db: str | None) -> SchemaReport:
    """The schema version and Alembic revision a registry holds, and whether it is this ioussl's."""
    with opened(db, allow_old=True) as registry, registry.connection(write=False) as conn:
        state = schema.read_state(conn)
    return SchemaReport(registry.location, state.version, state.revision, state.kind == "current")


def upgrade(db: str | None, backup: bool = True) -> UpgradeOutcome:
    """Upgrade the registry to schema SCHEMA_VERSION; a current one is left untouched.

    Raises:
        RegistryError: no registry, a damaged, foreign or newer one, or the upgrade failed (rolled back).
    """
    with opened(db, allow_old=True) as registry, registry.connection(write=True) as conn:
        state = schema.read_state(conn)
        schema.check(state, registry.location, allow_old=True)
        if state.kind == "current":
            return UpgradeOutcome(registry.location, state.version, SCHEMA_VERSION)
        _refuse_read_only(registry)
        copy = _backup(registry, state.version) if backup else None
        try:
            _run_revisions(conn, stamp_v1=state.revision is None)
            after = schema.read_state(conn)
            if after.kind != "current":
                raise RegistryError(f"upgrade of {registry.location} did not reach schema {SCHEMA_VERSION}: "
                                    "rolled back")
        except BaseException:
            if copy is not None:  # rolled back: the registry is as it was, a copy of it would only mislead
                copy.unlink(missing_ok=True)
            raise
    return UpgradeOutcome(registry.location, state.version, SCHEMA_VERSION, copy)


def _run_revisions(conn: Connection, stamp_v1: bool) -> None:
    from alembic import command
    from alembic.config import Config
    from alembic.migration import MigrationContext

    if stamp_v1:
        MigrationContext.configure(conn).stamp(schema.script_directory(), "0001")
    config = Config()
    config.set_main_option("script_location", str(schema.MIGRATIONS))
    config.attributes["connection"] = conn
    command.upgrade(config, schema.HEAD)


def _refuse_read_only(registry: Registry) -> None:
    """A SQLite registry (or its folder, where SQLite keeps its journal) this user cannot write: refuse before
    anything is copied or begun."""
    path = registry.target.path
    if path is None:
        return
    for where in (path, path.parent):
        if not os.access(where, os.W_OK):
            raise RegistryError(f"cannot upgrade {registry.location}: {where} is read-only for you (nothing was "
                                "changed, no backup written)")


def _backup(registry: Registry, version: int | None) -> Path | None:
    """A consistent copy of a SQLite registry beside it; PostgreSQL relies on the transaction (pg_dump for more)."""
    path = registry.target.path
    if path is None:
        return None
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    copy = path.with_name(f"{path.name}.v{version}-{stamp}.bak")
    try:
        with sqlite3.connect(path) as source, sqlite3.connect(copy) as target:
            source.backup(target)
        source.close()
        target.close()
    except (sqlite3.Error, OSError) as exc:
        copy.unlink(missing_ok=True)
        raise RegistryError(f"cannot back up {registry.location} to {copy} (nothing was changed): {exc}") from None
    return copy
