"""Registry test fixtures: one suite, run against SQLite and a real PostgreSQL server.

PostgreSQL comes from ``$IOUSSL_TEST_PG_URL`` (``scripts/postgres-local-up.sh`` prints it; ``.ci/run``
exports it). Without it the PostgreSQL cases are skipped with the reason, unless
``$IOUSSL_REQUIRE_SERVICES=1`` (set by ``.ci/run``): then a missing or unreachable server fails them.
Each PostgreSQL case gets its own schema (dropped afterwards), so tests never see each other's rows.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ENV_PG = "IOUSSL_TEST_PG_URL"
ENV_REQUIRE = "IOUSSL_REQUIRE_SERVICES"
BACKENDS = ("sqlite", "postgresql")
_PROBLEM: dict[str, str | None] = {}


def services_required() -> bool:
    return os.environ.get(ENV_REQUIRE, "") not in ("", "0")


def pg_problem() -> str | None:
    """Why PostgreSQL cannot be used here, or None (checked once per session)."""
    if "pg" in _PROBLEM:
        return _PROBLEM["pg"]
    url = os.environ.get(ENV_PG)
    problem = None
    if not url:
        problem = f"${ENV_PG} is not set (start a server: sudo bash scripts/postgres-local-up.sh)"
    else:
        try:
            import psycopg

            with psycopg.connect(_libpq(url), connect_timeout=5) as conn:
                conn.execute("SELECT 1")
        except ImportError:
            problem = "psycopg is not installed (pip install 'ioussl[postgres]')"
        except Exception as exc:  # any connection failure is the reason to report
            problem = f"cannot connect to ${ENV_PG}: {str(exc).strip().splitlines()[0]}"
    _PROBLEM["pg"] = problem
    return problem


def require_pg() -> str:
    """The server URL; skip (or fail, when services are required) without one."""
    problem = pg_problem()
    if problem:
        if services_required():
            pytest.fail(f"PostgreSQL is required (${ENV_REQUIRE}=1) but not usable: {problem}")
        pytest.skip(f"PostgreSQL not available: {problem}")
    return os.environ[ENV_PG]


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@contextlib.contextmanager
def pg_schema(url: str) -> Iterator[str]:
    """A fresh schema on the test server; yields a registry URL whose search_path is that schema."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    try:
        scoped = make_url(url).update_query_dict({"options": f"-csearch_path={name}"})
        yield scoped.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_libpq(url), autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")


def location(backend: str, tmp_path: Path, stack: contextlib.ExitStack) -> str:
    """A fresh, empty registry location for ``backend``."""
    if backend == "sqlite":
        return str(tmp_path / "registry.db")
    return stack.enter_context(pg_schema(require_pg()))


@pytest.fixture(params=BACKENDS)
def registry_db(request, tmp_path) -> Iterator[str]:
    """An empty registry location on each backend: a SQLite path, or a PostgreSQL URL with its own schema."""
    with contextlib.ExitStack() as stack:
        yield location(request.param, tmp_path, stack)


@pytest.fixture
def pg_db(tmp_path) -> Iterator[str]:
    """An empty PostgreSQL registry location (its own schema)."""
    with pg_schema(require_pg()) as url:
        yield url


def valid_result(run: Any, **overrides: Any) -> dict[str, Any]:
    """A result.json of the v2 contract for a registry Run row (hashes of its job config, its planned run
    identity), then overrides."""
    from ioussl.plan.expand import job_config_json
    from ioussl.submit import workload

    config = json.loads(job_config_json(run.config, run.study.base_dir))
    result = workload.result_for(Path(run.run_dir), config, steps=3)
    return {**result, "run_hash": run.run_hash, **overrides}  # its identity with its parent, as planned


def write_result(run: Any, **overrides: Any) -> dict[str, Any]:
    """Write a valid result.json (with overrides) into the run's directory; returns it."""
    payload = valid_result(run, **overrides)
    Path(run.run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run.run_dir) / "result.json").write_text(json.dumps(payload))
    return payload


def dump(db: str) -> dict[str, list[tuple]]:
    """Every row of every table, sorted: two dumps are equal exactly when nothing was written."""
    from sqlalchemy import MetaData, create_engine, inspect, select

    from ioussl.registry.db import parse_target

    target = parse_target(db)
    if target.path is not None and not target.path.exists():
        return {}
    engine = create_engine(target.url)
    try:
        with engine.connect() as conn:
            meta = MetaData()
            meta.reflect(conn, resolve_fks=False)
            return {
                name: sorted((_plain(row) for row in conn.execute(select(table))), key=repr)
                for name, table in meta.tables.items()
                if name in inspect(conn).get_table_names()
            }
    finally:
        engine.dispose()


def _plain(row: Any) -> tuple:
    return tuple(None if isinstance(v, float) and math.isnan(v) else v for v in row)
