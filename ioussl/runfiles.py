"""The run directory: the only channel between a job and the registry.

Jobs never open the database. They write small files into their run directory, and ``ioussl status``
ingests them idempotently:

    <run_dir>/config.json      the frozen RunConfig (written by the submitter)
    <run_dir>/events.jsonl     one JSON object per line: {"t", "event", ...} (started, requeued, finished, failed)
    <run_dir>/metrics.jsonl    one JSON object per line: {"epoch", "step", ...} written by the training loop
    <run_dir>/result.json      final result, written once, atomically, only on success
    <run_dir>/checkpoints/     last.pt (resume), best.pt (fine-tune selection), encoder.pt (pretrain export)

Whole files are written via a temporary file and ``os.replace``, so a reader never sees half a file.
JSON-lines files are appended one complete line per write; a reader skips a torn last line.
No torch here: both layers use this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

CONFIG = "config.json"
EVENTS = "events.jsonl"
METRICS = "metrics.jsonl"
RESULT = "result.json"
CHECKPOINTS = "checkpoints"


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write via ``write(handle)`` into a temporary file beside ``path``, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode()))


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


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the complete lines of a JSON-lines file; a torn or garbled line is skipped, not fatal."""
    if not path.exists():
        return
    with path.open() as handle:
        for line in handle:
            if not line.endswith("\n"):
                return  # a writer is mid-line
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                yield record


def read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return None
    return data if isinstance(data, dict) else None


def record_event(run_dir: Path, event: str, **fields: Any) -> None:
    append_jsonl(run_dir / EVENTS, {"t": time.time(), "event": event, "host": socket.gethostname(), **fields})


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
