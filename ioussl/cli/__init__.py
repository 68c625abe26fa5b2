"""The ``ioussl`` command line: thin commands that parse, call one service and render.

Heavy imports (torch, monai, submitit, the registry) happen inside command bodies, so ``ioussl --help``
and ``ioussl status`` stay fast on a login node.
"""

from __future__ import annotations

import gc
import sys
import warnings
from typing import Any

import typer
from typer.core import TyperGroup

from ioussl.cli.options import command_group
from ioussl.errors import Interrupted, IousslError

# A command is a short process that imports much (SQLAlchemy, scipy) and may hold tens of thousands of
# objects it read from a large registry: at CPython's default thresholds the cyclic collector runs three full
# passes over them, a sixth of `ioussl report` on a 10,000-run sweep. Young objects are collected every
# 50,000 allocations instead of 700, and old ones less often; long-running commands (`--watch`, `run`) still
# collect, so memory stays bounded.
gc.set_threshold(50_000, 50, 100)

# click's UsageError (typer ships click inside itself in newer versions: found through a public subclass).
_UsageError: Any = next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "UsageError")


INTERRUPTED_EXIT = 130  # what a shell reports for a command ended by SIGINT (128 + 2)


class _OneLineErrors(TyperGroup):
    """Turn every IousslError, and every bad option or argument, of any subcommand into one stderr line
    ("error: ...") and exit code 1; an interruption (Ctrl-C, SIGTERM) into one "interrupted" line and 130."""

    def invoke(self, ctx: Any) -> Any:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            try:
                return super().invoke(ctx)
            except Interrupted as exc:  # stopped cleanly by Ctrl-C/SIGTERM: what stopped, how to resume
                typer.echo(f"interrupted: {exc}", err=True)
                raise typer.Exit(INTERRUPTED_EXIT) from None
            except KeyboardInterrupt:  # a command without its own handling: no traceback, the shell's code
                typer.echo("interrupted", err=True)
                raise typer.Exit(INTERRUPTED_EXIT) from None
            except LookupError as exc:  # SQLAlchemy reading a stored value outside an enum (an edited registry)
                if "is not among the defined enum values" not in str(exc):
                    raise
                value = str(exc).split(" is not among", 1)[0]
                typer.echo(f"error: the registry holds status {value}, which this ioussl does not know: a row "
                           "was edited by hand or written by another version; fix it or restore a backup", err=True)
                raise typer.Exit(1) from None
            except IousslError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(1) from None
            except _UsageError as exc:
                if type(exc).__name__ == "NoArgsIsHelpError":  # `ioussl plan` alone prints its help
                    raise
                where = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
                typer.echo(f"error: {exc.format_message()}{where}", err=True)
                raise typer.Exit(1) from None


app = command_group(
    cls=_OneLineErrors, help="Plan, submit, track and report an IoU-based-positives SimSiam study on SLURM."
)


def _register_commands() -> None:
    from ioussl.cli import cleanup, data, db, demo, export, jobs, logs, predict, run, study

    for module in (study, jobs, logs, data, run, demo, db, export, cleanup, predict):
        module.register(app)


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    """ioussl's own warnings (e.g. SQLite on a network file system) as one `warning: ...` line."""
    if category.__module__.startswith("ioussl"):
        print(f"warning: {message}", file=sys.stderr)
    else:
        _PLAIN_WARNING(message, category, filename, lineno, file, line)


_PLAIN_WARNING = warnings.showwarning


_register_commands()


def main() -> None:
    try:
        app()
    except IousslError as exc:  # raised outside a subcommand (e.g. while parsing a callback)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        # The command is done and the process ends: without this, the interpreter's last cyclic collection
        # walks every object left (SQLAlchemy's, scipy's, the runs read), a fifth of a second of each command.
        # Frozen objects are skipped; at-exit handlers still run, and the OS frees the memory.
        gc.freeze()
