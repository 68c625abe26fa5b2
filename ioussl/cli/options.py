"""Options shared by several commands, written once (seml's Annotated aliases).

Help texts are plain text: every Typer of the CLI is built by :func:`command_group` with
``rich_markup_mode=None``, so bracketed text such as "[default 1]" or "train/val[/test]" is printed as
written (rich markup would delete it or fail on it), and flags show no value placeholder.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ioussl.backends.base import EXECUTORS
from ioussl.errors import ConfigError

if TYPE_CHECKING:
    from ioussl.status import RunStatus


def command_group(**settings: Any) -> typer.Typer:
    """A Typer with the CLI's help conventions: plain-text help, no completion, no rich tracebacks."""
    return typer.Typer(
        rich_markup_mode=None, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
        **settings,
    )


# Where jobs run; one vocabulary with the backends (the enum makes --help list the choices).
Executor = StrEnum("Executor", {name: name for name in EXECUTORS})  # type: ignore[misc]


ExecutorOption = Annotated[
    Executor,
    typer.Option(
        "--executor",
        help="slurm; local (this machine, no SLURM); or auto: slurm where a SLURM controller answers, "
        "else local (and it says so).",
    ),
]
DbOption = Annotated[
    str | None,
    typer.Option("--db", metavar="<path|url>", show_default=False,
                 help="Registry: a SQLite path or any SQLAlchemy URL [env IOUSSL_DB; default ./registry.db]"),
]
StudyOption = Annotated[str | None, typer.Option("--study", metavar="<name>", help="Only this study (by name).")]
StudiesOption = Annotated[
    list[str] | None,
    typer.Option("--study", metavar="<name>",
                 help="Only this study (by name); repeat it to put several studies side by side."),
]
ByOption = Annotated[
    list[str] | None,
    typer.Option("--by", metavar="<axis,...>",
                 help="Group by these axes: interval and any swept setting, e.g. --by pretrain.base_lr,interval "
                      "[default: every swept setting, then interval; for a study without a sweep: the thesis "
                      "table]."),
]
StageOption = Annotated[
    str | None, typer.Option("--stage", metavar="<pretrain|finetune>", help="Only this stage: pretrain or finetune.")
]
StateOption = Annotated[
    list[str] | None,
    typer.Option("--state", metavar="<state>", help="Only runs in this state (repeatable), e.g. FAILED."),
]
GroupOption = Annotated[
    str | None,
    typer.Option("--interval", "--group", metavar="<group>",
                 help="Only this group, e.g. '[0.3, 0.6]' or 'no pretraining'."),
]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Show what would happen; write nothing.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


class ReportFormat(StrEnum):
    terminal = "terminal"
    markdown = "markdown"
    csv = "csv"
    latex = "latex"


def checked_stage(stage: str | None) -> str | None:
    """--stage, checked: pretrain, finetune or none."""
    if stage is not None and stage not in ("pretrain", "finetune"):
        raise ConfigError(f"--stage must be pretrain or finetune, got {stage!r}")
    return stage


def checked_states(states: list[str] | None) -> list[RunStatus] | None:
    """--state values as statuses (case-insensitive); a one-line error naming the valid ones."""
    from ioussl.status import RunStatus

    if not states:
        return None
    valid = {s.value for s in RunStatus}
    wrong = [s for s in states if s.upper() not in valid]
    if wrong:
        raise ConfigError(f"unknown state(s) {', '.join(wrong)}; valid: {', '.join(sorted(valid))}")
    return [RunStatus(s.upper()) for s in states]
