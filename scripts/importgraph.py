"""The package's import graph, read from the code with ``ast`` (imports inside functions count too).

Used by ``tests/test_import_rules.py`` (no module or folder cycle, no crowded folder) and, run as a script, to
draw ``docs/img/packages.svg`` for docs/architecture.md: ``python scripts/importgraph.py [--dot FILE] [--svg FILE]``
(the SVG needs Graphviz's ``dot``; the DOT text is written either way).
"""

from __future__ import annotations

import argparse
import ast
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Graph:
    root: Path  # the package directory
    files: dict[str, Path]  # dotted module name -> file
    edges: dict[str, set[str]]  # module -> modules it imports (inside the package)

    def folder(self, module: str) -> str:
        """The node a module belongs to in the folder graph: its folder, or itself for the package's root modules."""
        parent = self.files[module].parent
        return module if parent == self.root else parent.relative_to(self.root.parent).as_posix()


def import_graph(package_dir: Path) -> Graph:
    root = package_dir.resolve()
    files: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    edges = {module: set() for module in files}
    for module, path in files.items():
        base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for name in _imported_names(ast.parse(path.read_text(), str(path)), base):
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + ".") and name != root.name:
                edges[module].add(name)
    return Graph(root, files, edges)


def _imported_names(tree: ast.AST, base: list[str]) -> Iterable[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                prefix = base[: len(base) - (node.level - 1)]
                module = ".".join(prefix + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Components of more than one node (Tarjan), each sorted, sorted by their first node."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for node in sorted(graph):
            if node not in index:
                visit(node)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(found)


def module_cycles(graph: Graph) -> list[list[str]]:
    return strongly_connected(graph.edges)


def folder_edges(graph: Graph) -> dict[str, set[str]]:
    """Folder -> folders it imports; a folder and its own sub-folders are not an edge either way."""
    folders: dict[str, set[str]] = {}
    for module, targets in graph.edges.items():
        source = graph.folder(module)
        folders.setdefault(source, set())
        for target_module in targets:
            target = graph.folder(target_module)
            folders.setdefault(target, set())
            if source != target and not target.startswith(source + "/") and not source.startswith(target + "/"):
                folders[source].add(target)
    return folders


def folder_cycles(graph: Graph) -> list[list[str]]:
    return strongly_connected(folder_edges(graph))


def crowded_folders(package_dir: Path, limit: int = 15) -> dict[str, int]:
    root = package_dir.resolve()
    counts: dict[str, int] = {}
    for path in root.rglob("*.py"):
        if path.name != "__init__.py":
            key = path.parent.relative_to(root.parent).as_posix()
            counts[key] = counts.get(key, 0) + 1
    return {folder: count for folder, count in sorted(counts.items()) if count > limit}


ENTRY_POINTS = ("__main__", "demo", "api")  # root modules drawn on their own; the other root modules are one node


def drawn_node(graph: Graph, module: str) -> str:
    """The picture's node of a module: its top folder under the package (science/ one level deeper), an entry
    point module by itself, and every other root module as the one 'shared' node."""
    folder = graph.folder(module)
    name = graph.root.name
    if "/" not in folder:
        leaf = module.split(".")[-1]
        return leaf if leaf in ENTRY_POINTS else "shared (root modules)"
    parts = folder.split("/")[1:]
    return "/".join(parts[:2] if parts[0] == "science" else parts[:1]) or name


def to_dot(graph: Graph) -> str:
    """The folder graph as Graphviz DOT: one box per folder with its modules, one arrow per import direction."""
    members: dict[str, set[str]] = {}
    arrows: set[tuple[str, str]] = set()
    for module, targets in graph.edges.items():
        source = drawn_node(graph, module)
        members.setdefault(source, set()).add(module)
        for target in targets:
            sink = drawn_node(graph, target)
            if sink != source and not sink.startswith(source + "/") and not source.startswith(sink + "/"):
                arrows.add((source, sink))
    lines = ["digraph ioussl {", '  rankdir=TB; nodesep=0.25; ranksep=0.45;',
             '  node [shape=box, style=rounded, fontname="Helvetica", fontsize=10];', '  edge [color="#555555"];']
    for node in sorted(members):
        names = sorted({m.split(".")[-1] for m in members[node] if graph.files[m].name != "__init__.py"})
        body = "\\n".join(", ".join(names[i : i + 4]) for i in range(0, len(names), 4))
        label = node if names in ([node], []) else f"{node}\\n{body}"
        lines.append(f'  "{node}" [label="{label}"];')
    for source, sink in sorted(arrows):
        lines.append(f'  "{source}" -> "{sink}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", default=str(Path(__file__).resolve().parents[1] / "ioussl"))
    parser.add_argument("--dot", default="docs/img/packages.dot")
    parser.add_argument("--svg", default="docs/img/packages.svg")
    args = parser.parse_args(argv)
    graph = import_graph(Path(args.package))
    Path(args.dot).write_text(to_dot(graph))
    problems = module_cycles(graph) + folder_cycles(graph)
    for cycle in problems:
        print("cycle:", " <-> ".join(cycle))
    if shutil.which("dot"):
        subprocess.run(["dot", "-Tsvg", args.dot, "-o", args.svg], check=True)
        print(f"wrote {args.dot} and {args.svg}")
    else:
        print(f"wrote {args.dot} (no Graphviz `dot` here for the SVG: apt-get install graphviz)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
