from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "totalseg-example"


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "registry.db")


pytest_plugins = ("registryfix",)  # registry_db / pg_db fixtures (SQLite and PostgreSQL), result helpers

