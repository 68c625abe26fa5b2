"""The layering rule: science never imports orchestration or the CLI; orchestration, the CLI and the Python
API (ioussl.api) never import torch or monai at import time (so --help and status stay fast on a login node,
and a notebook can read the registry without the science stack), nor scipy (a dependency of the report's
statistics, imported inside the functions that need it)."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import ioussl

PACKAGE_DIR = Path(ioussl.__file__).parent
HEAVY = ("torch", "monai", "nibabel", "matplotlib")
LAZY = (*HEAVY, "scipy")  # none of these may load when orchestration or the CLI is imported


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_science_never_imports_orchestration_or_cli():
    offenders = []
    for path in (PACKAGE_DIR / "science").rglob("*.py"):
        for name in _imports(path, top_level_only=False):
            if name.startswith(("ioussl.orchestration", "ioussl.cli")):
                offenders.append(f"{path.relative_to(PACKAGE_DIR)} imports {name}")
    assert offenders == []


def test_orchestration_and_cli_import_no_heavy_module_at_top_level():
    offenders = []
    paths = [*(PACKAGE_DIR / "orchestration").rglob("*.py"), *(PACKAGE_DIR / "cli").rglob("*.py"),
             PACKAGE_DIR / "api.py"]
    for path in paths:
        for name in _imports(path, top_level_only=True):
            if name.split(".")[0] in LAZY or name.startswith("ioussl.science"):
                offenders.append(f"{path.relative_to(PACKAGE_DIR)} imports {name}")
    assert offenders == []


def test_importing_every_orchestration_and_cli_module_loads_no_torch():
    modules = [
        info.name
        for sub in ("orchestration", "cli")
        for info in pkgutil.walk_packages([str(PACKAGE_DIR / sub)], prefix=f"ioussl.{sub}.")
        if ".migrations." not in info.name  # Alembic scripts: run by `ioussl db upgrade`, not imported
    ] + ["ioussl.api"]
    assert modules, "no modules found to check"
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"loaded = sorted(m for m in {LAZY!r} if m in sys.modules)\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
