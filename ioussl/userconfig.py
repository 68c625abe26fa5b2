"""The user's own settings file: ``$IOUSSL_USER_CONFIG``, else ``$XDG_CONFIG_HOME/ioussl/config.toml``, else
``~/.config/ioussl/config.toml``.

Today it holds one section, ``[notify]`` (``webhook = "https://..."``): alerts for every study this user plans,
without a cluster profile. A study file's own ``[notify]`` wins over a cluster profile's, which wins over this
file's. A missing file is no error; a malformed one is, in one line naming it.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from ioussl.errors import ConfigError

ENV_USER_CONFIG = "IOUSSL_USER_CONFIG"
SECTIONS = ("notify",)


def user_config_path() -> Path:
    explicit = os.environ.get(ENV_USER_CONFIG)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ioussl" / "config.toml"


def read_user_config() -> tuple[Path, dict[str, Any]]:
    """The file's path and its tables ({} when there is no file)."""
    path = user_config_path()
    try:
        if not path.is_file():
            return path, {}
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from None
    except (OSError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read: {type(exc).__name__}: {exc}"[:300]) from None
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)}; valid: {', '.join(SECTIONS)}")
    return path, raw
