"""What may reach a job script: every user string is checked before it can end up in sbatch's input.

submitit writes each option as ``#SBATCH --name=<shell-quoted value>``, the ``setup`` lines verbatim, and
the command with its folder quoted. Quoting cannot protect a ``#SBATCH`` comment line from a newline,
so a value with a control character (newline, carriage return, NUL, escape, a Unicode line separator,
a bidi override, ...) would end the line and start a command. These checks run when a study is planned
and again when the script is built (``slurm.resources_for_run``, ``slurm.submitit_parameters``,
``submission.check_job_strings``); option names must look like sbatch options.

``setup`` lines (``module load ...``) are shell by design: they are trusted site configuration, like the
cluster profile that holds them. They are still refused when a line holds a control character, so one
TOML string is exactly one line of the script.
"""

from __future__ import annotations

import re
import unicodedata
import urllib.parse
from collections.abc import Mapping
from typing import Any

from ioussl.errors import ConfigError

# Cc: C0/C1 controls (newline, CR, NUL, ESC, NEL...); Cf: format (bidi overrides, zero-width);
# Zl/Zp: Unicode line and paragraph separators; Cs: lone surrogates.
CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
MAX_TEXT = 4096
OPTION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def control_character(text: str) -> str | None:
    """The first control character in ``text`` as U+XXXX, or None."""
    for char in text:
        if unicodedata.category(char) in CONTROL_CATEGORIES:
            return f"U+{ord(char):04X}"
    return None


def check_text(value: Any, where: str) -> str:
    """A string that may appear in a job script: no control character, at most MAX_TEXT characters."""
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    bad = control_character(value)
    if bad is not None:
        raise ConfigError(f"{where}: contains the control character {bad}; it would break the job script")
    if len(value) > MAX_TEXT:
        raise ConfigError(f"{where}: longer than {MAX_TEXT} characters")
    return value


def check_path(value: Any, where: str) -> str:
    return check_text(value, where)


def check_option(name: Any, value: Any, where: str) -> tuple[str, str | bool]:
    """An ``additional`` sbatch option: a name like ``mail-type`` and a string, number or true."""
    key = str(name).lstrip("-") if isinstance(name, str) else name
    if not isinstance(key, str) or not OPTION_NAME.fullmatch(key):
        raise ConfigError(f"{where}: {name!r} is not an sbatch option name (letters, digits, '-', '_')")
    if value is True:
        return key, True
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"{where}.{key}: expected a string, a number or true, got {value!r}")
    return key, check_text(str(value), f"{where}.{key}")


def check_options(table: Mapping[Any, Any], where: str) -> dict[str, str | bool]:
    return dict(check_option(name, value, where) for name, value in table.items())


def check_setup(lines: Any, where: str) -> tuple[str, ...]:
    """Setup lines: trusted shell, one line each (no control characters)."""
    if not isinstance(lines, list | tuple) or not all(isinstance(line, str) for line in lines):
        raise ConfigError(f"{where}: expected a list of shell lines, got {lines!r}")
    return tuple(check_text(line, f"{where}[{number}]") for number, line in enumerate(lines))


def check_study_name(name: Any, where: str) -> str:
    """Study names go into paths and SQL: letters, digits, '.', '_', '+', '-', at most 128, no '/'."""
    if not isinstance(name, str) or not STUDY_NAME.fullmatch(name.strip()):
        raise ConfigError(
            f"{where}: [study] name must be 1-128 letters, digits, '.', '_', '+' or '-' "
            f"(starting with a letter or digit), got {name!r}"
        )
    return name.strip()


def check_parameters(params: Mapping[str, Any]) -> None:
    """The last gate before submitit: every value and option of a job's parameters."""
    for key, value in params.items():
        if key == "additional_parameters":
            check_options(value, "sbatch options")
        elif key == "setup":
            check_setup(value, "setup")
        elif isinstance(value, str):
            check_text(value, f"sbatch --{key}")


MAX_URL = 2048


def check_webhook(url: Any, where: str) -> str:
    """A webhook URL fit to be POSTed to: http(s), a host, no whitespace or control characters.

    Raises:
        ConfigError: one line naming ``where`` (the URL itself is not repeated: it often holds a token).
    """
    if not isinstance(url, str) or not url:
        raise ConfigError(f"{where}: webhook must be a non-empty string (an http:// or https:// URL)")
    if len(url) > MAX_URL or any(ord(c) < 33 or ord(c) == 127 or c.isspace() for c in url):
        raise ConfigError(f"{where}: webhook must be one URL of at most {MAX_URL} characters without spaces or "
                          "control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises on a port that is not a number in range
    except ValueError as exc:
        raise ConfigError(f"{where}: webhook is not a valid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ConfigError(f"{where}: webhook must be an http:// or https:// URL, got scheme "
                          f"{parts.scheme or 'none'!r}")
    if not parts.hostname or port == 0:
        raise ConfigError(f"{where}: webhook URL has no host")
    return url
