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


def pytest_itemcollected(item: pytest.Item) -> None:
    """Under pytest-xdist (`--dist loadgroup`), the SLURM tests run one after another on one worker.

    They share one test cluster and some watch its whole queue; the rest of the suite spreads over the
    other workers meanwhile, which is most of what parallel workers buy on a 2-core machine: the SLURM
    tests mostly wait for the scheduler.
    """
    if item.get_closest_marker("slurm"):  # marked as collected: before xdist reads the groups
        item.add_marker(pytest.mark.xdist_group("slurm"))
