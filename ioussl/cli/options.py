"""Options shared by several commands, written once (seml's Annotated aliases)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Registry: a SQLite path or any SQLAlchemy URL [env IOUSSL_DB; default ./registry.db]",
                 show_default=False),
]
StudyOption = Annotated[str | None, typer.Option("--study", help="Only this study (by name).")]
StageOption = Annotated[str | None, typer.Option("--stage", help="Only this stage: pretrain or finetune.")]
StateOption = Annotated[
    list[str] | None, typer.Option("--state", help="Only runs in this state (repeatable), e.g. FAILED.")
]
GroupOption = Annotated[
    str | None, typer.Option("--interval", "--group", help="Only this group, e.g. '[0.3, 0.6]' or 'no pretraining'.")
]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Show what would happen; write nothing.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


class ReportFormat(StrEnum):
    terminal = "terminal"
    markdown = "markdown"
    csv = "csv"
    latex = "latex"
