"""The layering rules, read from the code.

- Science never imports the orchestration folders (plan, submit, track, report, registry, backends) or the CLI.
- Orchestration, the CLI and the Python API (ioussl.api) never import torch or monai at import time (so --help
  and status stay fast on a login node, and a notebook can read the registry without the science stack), nor
  scipy (a dependency of the report's statistics, imported inside the functions that need it).
- No import cycle, counting imports inside functions: neither between modules nor between folders (each
  folder one node; a package's own root modules stay apart, as ``shared/tools/import_cycles.py`` counts).
- No folder holds more than 15 modules directly.
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import ioussl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from importgraph import crowded_folders, folder_cycles, import_graph, module_cycles  # noqa: E402

PACKAGE_DIR = Path(ioussl.__file__).parent
HEAVY = ("torch", "monai", "nibabel", "matplotlib")
LAZY = (*HEAVY, "scipy")  # none of these may load when orchestration or the CLI is imported
ORCHESTRATION = ("plan", "submit", "track", "report", "registry", "backends")
LIGHT_ROOT = ("api", "config", "errors", "jobtext", "profiles", "resources", "runfiles", "status")


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


def _light_paths() -> list[Path]:
    paths = [path for sub in (*ORCHESTRATION, "cli") for path in (PACKAGE_DIR / sub).rglob("*.py")]
    return paths + [PACKAGE_DIR / f"{name}.py" for name in LIGHT_ROOT]


def test_science_never_imports_orchestration_or_cli():
    forbidden = tuple(f"ioussl.{sub}" for sub in (*ORCHESTRATION, "cli", "demo", "api"))
    offenders = []
    for path in (PACKAGE_DIR / "science").rglob("*.py"):
        for name in _imports(path, top_level_only=False):
            if name.startswith(forbidden):
                offenders.append(f"{path.relative_to(PACKAGE_DIR)} imports {name}")
    assert offenders == []


def test_orchestration_and_cli_import_no_heavy_module_at_top_level():
    offenders = []
    for path in _light_paths():
        for name in _imports(path, top_level_only=True):
            if name.split(".")[0] in LAZY or name.startswith("ioussl.science"):
                offenders.append(f"{path.relative_to(PACKAGE_DIR)} imports {name}")
    assert offenders == []


def test_importing_every_orchestration_and_cli_module_loads_no_torch():
    modules = [
        info.name
        for sub in (*ORCHESTRATION, "cli")
        for info in pkgutil.walk_packages([str(PACKAGE_DIR / sub)], prefix=f"ioussl.{sub}.")
        if ".migrations." not in info.name  # Alembic scripts: run by `ioussl db upgrade`, not imported
    ] + [f"ioussl.{name}" for name in LIGHT_ROOT]
    assert len(modules) > 40, "the orchestration modules were not found"
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"loaded = sorted(m for m in {LAZY!r} if m in sys.modules)\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_no_import_cycle_between_modules():
    assert module_cycles(import_graph(PACKAGE_DIR)) == []


def test_no_import_cycle_between_folders():
    assert folder_cycles(import_graph(PACKAGE_DIR)) == []


def test_no_folder_holds_more_than_fifteen_modules():
    assert crowded_folders(PACKAGE_DIR, limit=15) == {}


def test_the_cycle_finder_finds_a_cycle(tmp_path):
    """The three checks above would pass on a checker that finds nothing: show that it finds each kind."""
    pkg = tmp_path / "pkg"
    for folder in ("a", "b"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "one.py").write_text("def f():\n    from pkg.b import two\n")  # inside a function counts
    (pkg / "a" / "four.py").write_text("")
    (pkg / "b" / "two.py").write_text("from pkg.b import three\n")
    (pkg / "b" / "three.py").write_text("import pkg.a.four\nfrom pkg.b import two\n")
    graph = import_graph(pkg)
    assert module_cycles(graph) == [["pkg.b.three", "pkg.b.two"]]
    assert folder_cycles(graph) == [["pkg/a", "pkg/b"]]
    for index in range(16):
        (pkg / "a" / f"m{index}.py").write_text("")
    assert crowded_folders(pkg, limit=15) == {"pkg/a": 18}
