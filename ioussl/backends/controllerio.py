"""Where a local job's controller process writes: a log file beside its job, never this terminal.

submitit's local controller (``python -m submitit.local._local``) inherits the standard output and error of
the process that started it. When a Ctrl-C in the terminal reaches it (it shares the terminal's process group)
or a local cancel interrupts it, it prints a KeyboardInterrupt traceback there: into the terminal of
whichever ``ioussl`` command started it, long after that command's prompt came back. Pointing file
descriptors 1 and 2 at a log file while the controller is spawned makes it inherit the file instead; the job's
own output already goes to submitit's log files.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

CONTROLLER_LOG = "controller.log"
_SPAWN_LOCK = threading.Lock()  # one redirection at a time: fds are per process, not per thread


@contextlib.contextmanager
def controller_output(folder: Path) -> Iterator[None]:
    """While inside, fds 1 and 2 of this process point at ``folder/controller.log`` (appended, 0600)."""
    folder.mkdir(parents=True, exist_ok=True)
    with _SPAWN_LOCK:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        log = os.open(folder / CONTROLLER_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(log, 1)
            os.dup2(log, 2)
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in (*saved, log):
                os.close(fd)
