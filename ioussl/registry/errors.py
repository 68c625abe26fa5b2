"""Registry errors, and the one translation of driver exceptions into a one-line RegistryError."""

from __future__ import annotations

from sqlalchemy.exc import DatabaseError, IntegrityError, InterfaceError, OperationalError, SQLAlchemyError

from ioussl.errors import RegistryError

LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL: lock_timeout expired
CONNECTION_CLASSES = ("08",)  # PostgreSQL SQLSTATE class 08: connection exceptions


class MissingRegistry(RegistryError):
    """A read-only open found no registry file."""


class RegistryBusy(RegistryError):
    """Another process held the write lock longer than this one was willing to wait."""


class OldSchema(RegistryError):
    """The registry was written by an older ioussl: `ioussl db upgrade` brings it to this schema."""


class AlreadyRecorded(RegistryError):
    """A row that must be unique already exists (another process wrote it first)."""


def registry_error(exc: SQLAlchemyError, location: str) -> RegistryError:
    """The driver's exception as one line naming the registry; never a traceback."""
    orig = getattr(exc, "orig", None)
    text = _first_line(orig if orig is not None else exc) or type(exc).__name__
    sqlstate = getattr(orig, "sqlstate", None) or ""
    if isinstance(exc, OperationalError) and ("locked" in text or sqlstate == LOCK_NOT_AVAILABLE):
        return RegistryBusy(
            f"registry {location} stayed locked by another process for too long "
            f"(raise $IOUSSL_DB_TIMEOUT seconds or retry): {text}"
        )
    if isinstance(exc, IntegrityError):
        return AlreadyRecorded(f"registry {location}: already recorded by another process ({text})")
    if isinstance(exc, DatabaseError) and ("not a database" in text or "malformed" in text):
        return RegistryError(f"registry {location} is corrupt or not a database: {text}")
    if isinstance(exc, OperationalError) and ("unable to open" in text or "readonly" in text):
        return RegistryError(f"registry {location} cannot be opened for writing: {text}")
    if isinstance(exc, OperationalError | InterfaceError) and (
        sqlstate.startswith(CONNECTION_CLASSES) or "connect" in text or "server" in text
    ):
        return RegistryError(f"cannot reach the registry {location}: {text}")
    return RegistryError(f"registry {location}: {text}")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""
