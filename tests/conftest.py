from __future__ import annotations

import os
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


def _one_share_of_the_cores_per_worker() -> None:
    """A pytest-xdist worker trains on its share of the cores, as a local job does ($IOUSSL_CPUS_PER_TASK).

    xdist runs one worker per core, and each would otherwise train on every core (torch's default, and the
    runtime's for a process that no scheduler sized): N workers x N threads, plus the SLURM tests' jobs
    beside them, oversubscribe the machine, and OpenMP's spinning threads then slow the in-process training
    tests 10-20 fold (measured on 2 cores beside two busy processes: one fine-tune test 281 s instead of
    14 s). Set before torch is imported (its OpenMP pool reads OMP_NUM_THREADS once); a value the caller
    set wins.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if not os.environ.get("PYTEST_XDIST_WORKER") or workers < 1:
        return
    share = str(max(1, len(os.sched_getaffinity(0)) // workers))
    os.environ.setdefault("IOUSSL_CPUS_PER_TASK", share)
    os.environ.setdefault("OMP_NUM_THREADS", share)


_one_share_of_the_cores_per_worker()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules with slow tests run first, whole-study modules (every test slow) first of all.

    scripts/run_tests.py hands modules to the pytest-xdist workers one at a time (``--dist loadscope``, so a
    module's fixtures are built once): started first, the long modules run side by side while the many
    short ones fill the end, rather than one worker finishing the last end-to-end study alone. Within a
    module, and within each of the three groups, the collection order is kept.
    """
    slow: dict[str, list[bool]] = {}
    for item in items:
        slow.setdefault(item.nodeid.split("::")[0], []).append(item.get_closest_marker("slow") is not None)
    group = {module: 0 if all(marks) else 1 if any(marks) else 2 for module, marks in slow.items()}
    items.sort(key=lambda item: group[item.nodeid.split("::")[0]])


@pytest.fixture(autouse=True)
def _no_user_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own ~/.config/ioussl/config.toml (a webhook, say) must not reach any test's studies."""
    monkeypatch.setenv("IOUSSL_USER_CONFIG", str(tmp_path_factory.getbasetemp() / "no-user-config.toml"))
