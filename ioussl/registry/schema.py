"""Which schema a database holds, creating a fresh one race-free, and refusing what this ioussl cannot use.

A registry records its schema twice: Alembic's ``alembic_version`` (the migration revision) and ioussl's
own ``schema_info`` (the version number an ioussl of schema 1 already checks, so it refuses a v2 registry
with "upgrade ioussl" instead of writing into it). A v1 registry has only ``schema_info``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from sqlalchemy import Column, Connection, MetaData, PrimaryKeyConstraint, String, Table, inspect, text

from ioussl.errors import RegistryError
from ioussl.registry.errors import OldSchema
from ioussl.registry.models import SCHEMA_VERSION, Base, SchemaInfo

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
REVISION_VERSION = {"0001": 1, "0002": 2, "0003": 3, "0004": 4}  # Alembic revision -> schema version
HEAD = "0004"
V1_TABLES = frozenset({"schema_info", "studies", "runs", "attempts", "results", "metrics", "provenance"})
NETWORK_FS = frozenset({
    "nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "fuse.glusterfs",
    "fuse.sshfs", "panfs", "afs", "9p",
})
_warned: set[str] = set()
# Alembic's own version table, as `alembic stamp` creates it; written directly so that creating a
# registry does not have to import Alembic and parse the revisions (a fifth of a small plan's time).
ALEMBIC_VERSION = Table(
    "alembic_version", MetaData(), Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)


class NetworkFsWarning(UserWarning):
    """SQLite on a network file system: its locks are not reliable there."""


@dataclass(frozen=True)
class SchemaState:
    """What a database holds: kind is empty, current, old, newer, foreign or damaged."""

    kind: str
    version: int | None = None
    revision: str | None = None
    missing: tuple[str, ...] = ()
    tables: tuple[str, ...] = field(default=(), repr=False)


def expected_tables() -> frozenset[str]:
    return frozenset(Base.metadata.tables) | {"alembic_version"}


def read_state(conn: Connection) -> SchemaState:
    """The schema state of the database behind ``conn`` (reads only)."""
    tables = frozenset(inspect(conn).get_table_names())
    if not tables:
        return SchemaState("empty")
    if "alembic_version" in tables:
        revisions = list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
        if len(revisions) != 1:
            return SchemaState("damaged", missing=("alembic_version row",), tables=tuple(sorted(tables)))
        revision = revisions[0]
        recorded = _schema_info_version(conn) if "schema_info" in tables else None
        if revision not in REVISION_VERSION or (recorded or 0) > SCHEMA_VERSION:
            return SchemaState("newer", version=recorded, revision=revision, tables=tuple(sorted(tables)))
        version: int | None = REVISION_VERSION[revision]
    elif "schema_info" in tables:
        revision = None
        version = _schema_info_version(conn)
        if version is None:
            return SchemaState("damaged", missing=("schema version",), tables=tuple(sorted(tables)))
        if version > SCHEMA_VERSION:
            return SchemaState("newer", version=version, tables=tuple(sorted(tables)))
    else:
        return SchemaState("foreign", tables=tuple(sorted(tables)))
    needed = expected_tables() if version == SCHEMA_VERSION else V1_TABLES
    missing = tuple(sorted(needed - tables))
    kind = "damaged" if missing else ("current" if version == SCHEMA_VERSION else "old")
    return SchemaState(kind, version, revision, missing, tuple(sorted(tables)))


def _schema_info_version(conn: Connection) -> int | None:
    found = conn.execute(text("SELECT value FROM schema_info WHERE key = 'version'")).scalar()
    return int(found) if isinstance(found, str) and found.isdigit() else None


def check(state: SchemaState, location: str, *, allow_old: bool = False) -> None:
    """Raise the one-line error a state calls for; ``current`` (and ``old`` with ``allow_old``) pass."""
    if state.kind == "current" or (state.kind == "old" and allow_old):
        return
    if state.kind == "old":
        raise OldSchema(
            f"registry {location} has schema version {state.version}, this ioussl needs {SCHEMA_VERSION}: "
            f"upgrade it with `ioussl db upgrade --db {location}` (a SQLite file is backed up first)"
        )
    if state.kind == "newer" and state.revision is not None and state.revision not in REVISION_VERSION:
        recorded = f", schema version {state.version}" if state.version is not None else ""
        raise RegistryError(
            f"registry {location} is at migration revision {state.revision!r}{recorded}, which this ioussl does "
            f"not know (it knows revisions up to {HEAD}, schema {SCHEMA_VERSION}): upgrade ioussl"
        )
    if state.kind == "newer":
        found = state.version if state.version is not None else f"revision {state.revision}"
        raise RegistryError(
            f"registry {location} has schema version {found}, newer than this ioussl understands "
            f"({SCHEMA_VERSION}): upgrade ioussl"
        )
    if state.kind == "damaged":
        raise RegistryError(
            f"registry {location} is damaged (missing: {', '.join(state.missing)}): nothing was written; "
            "restore it from a backup"
        )
    if state.kind == "foreign":
        raise RegistryError(f"{location} is not an ioussl registry (it has tables {', '.join(state.tables)})")
    raise RegistryError(f"{location} is an empty database, not an ioussl registry")


def create_schema(conn: Connection) -> None:
    """Schema v2 from the models, its version in schema_info, and Alembic's record that it is at head."""
    Base.metadata.create_all(conn)
    conn.execute(cast(Table, SchemaInfo.__table__).insert().values(key="version", value=str(SCHEMA_VERSION)))
    ALEMBIC_VERSION.create(conn)
    conn.execute(ALEMBIC_VERSION.insert().values(version_num=HEAD))


def script_directory():
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS))


def warn_if_network_fs(path: Path, location: str) -> None:
    """Warn once per process when a SQLite registry lies on NFS, Lustre, GPFS, BeeGFS or the like."""
    fstype = mount_fstype(path)
    if fstype in NETWORK_FS and location not in _warned:
        _warned.add(location)
        warnings.warn(
            f"registry {location} is on a network file system ({fstype}), where SQLite's locking is unreliable; "
            "use PostgreSQL for a shared registry (--db postgresql://user@host/database, see docs/guide.md)",
            NetworkFsWarning,
            stacklevel=2,
        )


def mount_fstype(path: Path, mounts: Path = Path("/proc/self/mounts")) -> str | None:
    """The file system type of the mount that holds ``path`` (longest mount point prefix), if known."""
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return None
    target = str(path.resolve())
    best, fstype = "", None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fstype = point, parts[2]
    return fstype
