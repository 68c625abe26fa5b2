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



@pytest.fixture(autouse=True)
def _no_user_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own ~/.config/ioussl/config.toml (a webhook, say) must not reach any test's studies."""
    monkeypatch.setenv("IOUSSL_USER_CONFIG", str(tmp_path_factory.getbasetemp() / "no-user-config.toml"))
