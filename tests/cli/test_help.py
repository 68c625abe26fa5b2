"""Every command's --help renders, shows its help texts whole (bracketed text included) and its choices.

The commands are discovered from the Typer app, so a new command is covered without editing this file.
"""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from ioussl.cli import app

runner = CliRunner()
BRACKETED = re.compile(r"\[[^\[\]]*\]")


def _commands(command, path=()):  # type: ignore[no-untyped-def]
    """(argv path, click command) for the root and every group and command below it."""
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _commands(sub, (*path, name))


ROOT = typer.main.get_command(app)
COMMANDS = list(_commands(ROOT))


def _help(path: tuple[str, ...]) -> str:
    result = runner.invoke(app, [*path, "--help"], terminal_width=100)
    assert result.exit_code == 0, f"ioussl {' '.join(path)} --help failed:\n{result.output}"
    return result.output


def _flat(text: str) -> str:
    return " ".join(text.split())


def _texts(command) -> list[str]:  # type: ignore[no-untyped-def]
    return [command.help or ""] + [getattr(param, "help", None) or "" for param in command.params]


def test_the_walk_finds_every_command():
    paths = {" ".join(path) for path, _ in COMMANDS}
    assert {"", "submit", "report", "status", "plan grid", "run finetune", "data split", "demo"} <= paths
    assert len(paths) >= 18


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) or "ioussl" for p, _ in COMMANDS])
def test_help_renders_every_bracketed_fragment(path, command):
    output = _flat(_help(path))
    fragments = [f for text in _texts(command) for f in BRACKETED.findall(_flat(text))]
    for fragment in fragments:
        assert fragment in output, f"ioussl {' '.join(path)} --help lost {fragment!r}:\n{output}"
    for text in _texts(command):
        first = _flat(text).split(". ")[0]
        assert first[:60] in output  # the text itself, not only its brackets
    assert "<bool>" not in output  # flags take no value


def test_known_bracketed_texts_survive():
    assert "[env IOUSSL_DB; default ./registry.db]" in _flat(_help(("status",)))
    assert "train/val[/test]" in _flat(_help(("run", "finetune")))
    assert "[default jobs/demo.toml]" in _flat(_help(("demo",)))
    assert "runs at once [default 1]" in _flat(_help(("submit",)))


def test_executor_shows_its_choices_wherever_it_appears():
    with_executor = [path for path, command in COMMANDS if any("--executor" in p.opts for p in command.params)]
    assert {("submit",), ("retry",), ("demo",)} <= set(with_executor)
    for path in with_executor:
        assert "--executor [auto|slurm|local]" in _flat(_help(path)) or \
            "--executor <auto|slurm|local>" in _flat(_help(path)), _help(path)


def test_boolean_options_have_both_forms_or_are_plain_flags():
    output = _flat(_help(("report",)))
    assert "--table / --no-table" in output
    for path, command in COMMANDS:
        for param in command.params:
            if getattr(param, "is_bool_flag", False) and param.default is True:
                assert param.secondary_opts, f"ioussl {' '.join(path)} {param.opts[0]} defaults on: needs --no-"
