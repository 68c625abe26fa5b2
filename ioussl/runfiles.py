"""The run directory: the only channel between a job and the registry.

Jobs never open the database. They write small files into their run directory, and ``ioussl status``
ingests them idempotently:

    <run_dir>/config.json      the frozen RunConfig (written by the submitter)
    <run_dir>/events.jsonl     one JSON object per line: {"t", "event", ...} (started, requeued, finished, failed)
    <run_dir>/metrics.jsonl    one JSON object per line: {"epoch", "step", ...} written by the training loop
    <run_dir>/result.json      final result, written once, atomically, only on success
    <run_dir>/checkpoints/     last.pt (resume), best.pt (fine-tune selection), encoder.pt (pretrain export)

Whole files are written via a temporary file and ``os.replace``, so a reader never sees half a file; the
file gets the permissions of any file the user writes (0666 less the umask), so a group can share a store.
JSON-lines files are appended one complete line per write; a reader skips a torn last line.

Reading: these files are input. Only regular files are opened (``lstat`` first, then ``O_NOFOLLOW`` and
``O_NONBLOCK``, and ``fstat`` again on the descriptor), so a FIFO, device, directory or symbolic link in a
run directory can never hang or redirect a reader; sizes are capped. The strict readers
(:func:`load_json`, :func:`load_jsonl`) raise :class:`RunFileError` with one line naming the file; the
lenient ones (:func:`read_json`, :func:`read_jsonl`) return nothing instead.
No torch here: both layers use this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ioussl.errors import DataError

CONFIG = "config.json"
EVENTS = "events.jsonl"
METRICS = "metrics.jsonl"
RESULT = "result.json"
CHECKPOINTS = "checkpoints"
MAX_RESULT_BYTES = 16 << 20  # a result with per-case, per-organ scores of hundreds of cases is < 1 MiB
MAX_JSONL_BYTES = 64 << 20
PRIVATE_DIR_MASK = 0o022  # run and submitit folders hold what jobs execute: never group/world writable


class RunFileError(DataError):
    """A run file that cannot be used: not a regular file, too large, not UTF-8, not valid JSON, ..."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"{name}: {why}")
        self.name = name
        self.why = why


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write via ``write(handle)`` into a temporary file beside ``path``, fsync, then rename over it.

    The temporary file is created with mode 0666 less the umask (``mkstemp`` would make it 0600), so the
    result is readable by whom the user's umask says, like any file the user writes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode()))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def append_jsonl(path: Path, obj: dict[str, Any]) -> None:
    """Append one complete line; O_APPEND makes a single small write land whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(obj, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_regular(path: Path, limit: int) -> bytes | None:
    """The bytes of a regular file, or None when nothing is there; never opens anything else.

    Raises:
        RunFileError: ``path`` is a directory, FIFO, device, socket or symbolic link, or larger than ``limit``.
    """
    fd = _open_regular(path, limit)
    if fd is None:
        return None
    try:
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise RunFileError(path.name, f"cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise RunFileError(path.name, f"is larger than {limit >> 20} MiB")
    return data


def read_regular_range(path: Path, start: int, limit: int) -> tuple[bytes, int, int] | None:
    """Up to ``limit`` bytes of a regular file from byte ``start`` (negative: that many bytes before its end),
    the offset they begin at, and the file's size; None when nothing is there. For files that grow while a
    job runs (logs, metrics.jsonl): no size cap, and only regular files are opened, as :func:`read_regular`.

    Raises:
        RunFileError: ``path`` is not a regular file, or cannot be read.
    """
    fd = _open_regular(path, None)
    if fd is None:
        return None
    try:
        size = os.fstat(fd).st_size
        offset = min(max(0, size + start if start < 0 else start), size)
        os.lseek(fd, offset, os.SEEK_SET)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(max(0, limit))
    except OSError as exc:
        raise RunFileError(path.name, f"cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    return data, offset, size


def _open_regular(path: Path, limit: int | None) -> int | None:
    """A read-only descriptor of ``path`` if it is a regular file (checked before and after opening)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RunFileError(path.name, f"cannot be inspected ({exc.strerror or exc})") from None
    _check_regular(path, info, limit)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RunFileError(path.name, f"cannot be opened ({exc.strerror or exc})") from None
    try:
        _check_regular(path, os.fstat(fd), limit)  # the entry may have been swapped since lstat
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_regular(path: Path, info: os.stat_result, limit: int | None) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = _kind(info.st_mode)
        raise RunFileError(path.name, f"is a {kind}, not a regular file (not opened)")
    if limit is not None and info.st_size > limit:
        raise RunFileError(path.name, f"is larger than {limit >> 20} MiB ({info.st_size} bytes)")


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symbolic link"), (stat.S_ISFIFO, "FIFO"),
             (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))
    return next((name for test, name in kinds if test(mode)), "special file")


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not a number JSON allows")


def parse_json(text: str, name: str, *, allow_constants: bool = False) -> Any:
    """``json.loads`` that refuses NaN/Infinity (unless allowed), and turns every failure into RunFileError."""
    try:
        if allow_constants:
            return json.loads(text)
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, a too long integer, a too deep nesting
        raise RunFileError(name, f"is not valid JSON ({_short(exc)})") from None


def decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RunFileError(name, f"is not UTF-8 text (byte {exc.start})") from None


def load_json(path: Path, limit: int = MAX_RESULT_BYTES) -> dict[str, Any] | None:
    """A JSON object file, strictly: None when absent; RunFileError when it is anything but a JSON object."""
    data = read_regular(path, limit)
    if data is None:
        return None
    value = parse_json(decode(data, path.name), path.name)
    if not isinstance(value, dict):
        raise RunFileError(path.name, f"holds a JSON {type(value).__name__}, not an object")
    return value


def load_jsonl(path: Path, limit: int = MAX_JSONL_BYTES, *, allow_constants: bool = False) -> list[dict[str, Any]]:
    """The complete lines of a JSON-lines file as objects, strictly. A torn last line (a writer mid-line)
    and blank lines are skipped; any other line that is not a JSON object is an error naming its line."""
    data = read_regular(path, limit)
    if data is None:
        return []
    lines = decode(data, path.name).split("\n")
    records = []
    for number, line in enumerate(lines[:-1], start=1):  # the last piece has no newline: torn or empty
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        record = parse_json(line, where, allow_constants=allow_constants)
        if not isinstance(record, dict):
            raise RunFileError(where, f"holds a JSON {type(record).__name__}, not an object")
        records.append(record)
    return records


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Leniently: the complete lines of a JSON-lines file that are objects; anything unusable is skipped."""
    try:
        data = read_regular(path, MAX_JSONL_BYTES)
    except RunFileError:
        return
    if data is None:
        return
    text = data.decode("utf-8", errors="replace")
    for line in text.split("\n")[:-1]:
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(record, dict):
            yield record


def read_json(path: Path) -> dict[str, Any] | None:
    """Leniently: a JSON object file, or None when it is absent or unusable."""
    try:
        return load_json(path)
    except RunFileError:
        return None


@contextlib.contextmanager
def private_dirs() -> Iterator[None]:
    """While inside: every file and folder this process creates is at most group/world readable, never
    writable by them (the umask gains 022), whatever the user's umask. Jobs started here inherit it."""
    old = os.umask(0)
    os.umask(old | PRIVATE_DIR_MASK)
    try:
        yield
    finally:
        os.umask(old)


def make_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) without group/world write; an existing one of ours loses those bits."""
    with private_dirs():
        path.mkdir(parents=True, exist_ok=True)
    info = path.stat()
    if info.st_mode & PRIVATE_DIR_MASK and info.st_uid == os.geteuid():
        path.chmod(stat.S_IMODE(info.st_mode) & ~PRIVATE_DIR_MASK)
    return path


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def record_event(run_dir: Path, event: str, **fields: Any) -> None:
    append_jsonl(run_dir / EVENTS, {"t": time.time(), "event": event, "host": socket.gethostname(), **fields})


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
