"""The package's shape, read from its source with ``ast`` (nothing is imported, so it runs in well under a second).

* No import cycle among reftkit's modules. Every import counts: top-level, inside a function, under
  ``TYPE_CHECKING``; ``from reftkit.x import y`` is an edge to the module ``reftkit.x.y`` where ``y`` is one, and
  importing ``reftkit.a.b`` is also an edge to the package ``reftkit.a`` (its ``__init__.py`` runs).
* Imports point down the layers of ``LAYERS`` (the pipeline order); a module the table does not place fails.
* A package ``__init__.py`` imports nothing but the standard library: no re-exports.
* A module over ``MAX_MODULE_LINES`` says why in its docstring (a line starting with ``LONG_MODULE_MARKER``); a
  function or method is at most ``MAX_FUNCTION_LINES`` long (the package only; tests and bench are not checked).

``KNOWN_*`` list today's offenders, each with the area whose redesign removes it. An entry that no longer matches
anything fails too, so the lists only shrink.
"""

from __future__ import annotations

import ast
import itertools
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "reftkit"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
LONG_MODULE_MARKER = "Why this file is long:"

# Bottom to top: a module may import from its own layer or lower ones. The longest matching prefix places a module;
# package __init__ modules (which import nothing) sit below them all.
LAYERS: dict[str, int] = {
    "reftkit.runtime.distributed": 1,
    "reftkit.runtime.interrupt": 1,
    "reftkit.rl": 1,
    "reftkit.reward.sandbox": 1,
    "reftkit.reward": 2,
    "reftkit.config": 3,
    "reftkit.data": 4,
    "reftkit.models": 4,
    "reftkit.runtime.trackers": 4,
    "reftkit.rollout": 5,
    "reftkit.evaluation": 6,
    "reftkit.trainers": 7,
    "reftkit.pipeline": 8,
    "reftkit.stages": 8,
    "reftkit.run_folder": 8,
    "reftkit.cli": 9,
}

# ----- today's offenders: each entry names the area whose redesign removes it --------------------------------------
KNOWN_EDGES: dict[tuple[str, str], str] = {  # (importer, imported): left out of the cycle and layer checks
}
KNOWN_LONG_MODULES: dict[str, str] = {  # path: area
}
KNOWN_LONG_FUNCTIONS: dict[str, str] = {  # path::qualified name: area
}
KNOWN_INIT_IMPORTS: dict[str, str] = {  # path: area
}


@dataclass
class Package:
    """What the checks need of a package's source: each module's parsed tree, and the import edges between them."""

    root: Path  # the folder holding the package folder
    files: dict[str, Path] = field(default_factory=dict)  # module name -> file
    trees: dict[str, ast.Module] = field(default_factory=dict)
    edges: dict[tuple[str, str], int] = field(default_factory=dict)  # (importer, imported) -> line of the import

    def is_package(self, module: str) -> bool:
        return self.files[module].name == "__init__.py"

    def where(self, module: str, line: int | None = None) -> str:
        path = self.files[module].relative_to(self.root).as_posix()
        return path if line is None else f"{path}:{line}"


def read_package(root: Path, name: str) -> Package:
    package = Package(root)
    for file in sorted((root / name).rglob("*.py")):
        parts = file.relative_to(root).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package.files[module] = file
        package.trees[module] = ast.parse(file.read_text(encoding="utf-8"), str(file))
    for module, tree in package.trees.items():
        for node in ast.walk(tree):
            for target in _imported(package, module, node):
                package.edges.setdefault((module, target), node.lineno)
    return package


def _imported(package: Package, module: str, node: ast.AST) -> list[str]:
    """The package's modules an import statement runs: the named module (or the longest existing prefix of the
    name, for a name imported from a module) and every package above it."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: from the importer's package, one level up per extra dot
            here = module.split(".") if package.is_package(module) else module.split(".")[:-1]
            base = ".".join([*here[: len(here) - node.level + 1], *([base] if base else [])])
        names = [base] + [f"{base}.{alias.name}" for alias in node.names]
    else:
        return []
    targets = []
    for name in names:
        parts = name.split(".")
        for end in range(1, len(parts) + 1):
            prefix = ".".join(parts[:end])
            if prefix in package.files and prefix != module:
                targets.append(prefix)
    return targets


def layer_of(module: str, package: Package, layers: dict[str, int]) -> int | None:
    if package.is_package(module):
        return 0
    matches = [prefix for prefix in layers if module == prefix or module.startswith(prefix + ".")]
    return layers[max(matches, key=len)] if matches else None


def find_cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component that has one (Tarjan's algorithm)."""
    graph: dict[str, list[str]] = defaultdict(list)
    for a, b in sorted(edges):
        graph[a].append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    cycles = []
    for component in components:
        members = set(component)
        start = min(component)
        if len(component) == 1 and start not in graph[start]:
            continue
        paths = {start: [start]}  # breadth first inside the component, back to the start: a shortest cycle
        queue = [start]
        while queue:
            node = queue.pop(0)
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append([*paths[node], start])
                    queue = []
                    break
                if nxt in members and nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    queue.append(nxt)
    return cycles


def cycle_problems(package: Package, allowed: set[tuple[str, str]]) -> list[str]:
    problems = []
    for cycle in find_cycles(set(package.edges) - allowed):
        lines = ", ".join(package.where(a, package.edges[(a, b)]) for a, b in itertools.pairwise(cycle))
        problems.append(f"import cycle: {' -> '.join(cycle)} ({lines})")
    return problems


def layer_problems(package: Package, layers: dict[str, int], allowed: set[tuple[str, str]]) -> list[str]:
    problems = [
        f"{package.where(m)}: {m} is in no layer; add its prefix to LAYERS"
        for m in package.files
        if layer_of(m, package, layers) is None
    ]
    for (a, b), line in sorted(package.edges.items()):
        low, high = layer_of(a, package, layers), layer_of(b, package, layers)
        if (a, b) not in allowed and low is not None and high is not None and high > low:
            problems.append(f"{package.where(a, line)}: {a} (layer {low}) imports {b} (layer {high}), a layer above")
    return problems


def init_problems(package: Package) -> dict[str, str]:
    """``{path: problem}`` for package ``__init__.py`` files that import anything but the standard library (no
    re-exports: an ``__init__`` that imports its submodules makes every import of one of them run all of them)."""
    return {
        package.where(m): f"{package.where(m, node.lineno)}: a package __init__.py imports only the standard "
        "library; move it to a module"
        for m, tree in package.trees.items()
        if package.is_package(m)
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom) and not _stdlib(node)
    }


def _stdlib(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level == 0 and (node.module or "").split(".")[0] in sys.stdlib_module_names
    return all(alias.name.split(".")[0] in sys.stdlib_module_names for alias in node.names)


def long_modules(package: Package, limit: int = MAX_MODULE_LINES) -> dict[str, str]:
    """``{path: problem}`` for modules over ``limit`` lines whose docstring gives no ``LONG_MODULE_MARKER`` line."""
    found = {}
    for module, tree in package.trees.items():
        lines = len(package.files[module].read_text(encoding="utf-8").splitlines())
        doc = ast.get_docstring(tree) or ""
        says_why = any(line.strip().startswith(LONG_MODULE_MARKER) for line in doc.splitlines())
        if lines > limit and not says_why:
            found[package.where(module)] = f"{lines} lines, and its docstring has no '{LONG_MODULE_MARKER}' line"
    return found


def long_functions(package: Package, limit: int = MAX_FUNCTION_LINES) -> dict[str, str]:
    """``{path::qualified name: "path:line: N lines"}`` for functions and methods over ``limit`` lines."""
    found = {}

    def visit(node: ast.AST, module: str, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = prefix + child.name
                length = child.end_lineno - child.lineno + 1
                if not isinstance(child, ast.ClassDef) and length > limit:
                    found[f"{package.where(module)}::{name}"] = f"{package.where(module, child.lineno)}: {length} lines"
                visit(child, module, name + ".")
            else:
                visit(child, module, prefix)

    for module, tree in package.trees.items():
        visit(tree, module, "")
    return found


def _unexpected(found: dict[str, str], known: dict[str, str]) -> list[str]:
    return [f"{key}: {why}" for key, why in found.items() if key not in known]


def _stale(found: set[str] | dict[str, str], known: dict) -> list[str]:
    return [f"{key!r} is fixed: remove it from the allow-list" for key in known if key not in found]


# ----- the checks on reftkit ----------------------------------------------------------------------------------------

REFTKIT = read_package(ROOT, PACKAGE)


def test_no_import_cycles():
    assert cycle_problems(REFTKIT, set(KNOWN_EDGES)) == []


def test_imports_point_down_the_layers():
    assert layer_problems(REFTKIT, LAYERS, set(KNOWN_EDGES)) == []
    assert _stale(set(REFTKIT.edges), KNOWN_EDGES) == []


def test_package_inits_import_nothing():
    found = init_problems(REFTKIT)
    assert _unexpected(found, KNOWN_INIT_IMPORTS) == []
    assert _stale(found, KNOWN_INIT_IMPORTS) == []


def test_long_modules_say_why():
    found = long_modules(REFTKIT)
    assert _unexpected(found, KNOWN_LONG_MODULES) == []
    assert _stale(found, KNOWN_LONG_MODULES) == []


def test_functions_are_short():
    found = long_functions(REFTKIT)
    assert _unexpected(found, KNOWN_LONG_FUNCTIONS) == []
    assert _stale(found, KNOWN_LONG_FUNCTIONS) == []


# ----- the checker on a made-up package ------------------------------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_finds_a_hidden_cycle_a_long_function_and_the_rest(tmp_path):
    long_body = "".join(f"    x{i} = {i}\n" for i in range(85))
    _write(
        tmp_path,
        {
            "fake/__init__.py": '"""Only a docstring."""\n',
            "fake/low/__init__.py": "import os\nimport numpy\n",  # the standard library is fine, the rest is not
            "fake/low/a.py": "from fake.high import b\n",  # a submodule imported by name: an edge to it
            "fake/high/__init__.py": "",
            "fake/high/b.py": f"def f():\n    from ..low.c import g\n{long_body}\n\nclass K:\n    def m(self):\n"
            + long_body.replace("    ", "        "),
            "fake/low/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import fake.low.a\n",
            "fake/stray.py": '"""Two lines."""\n\n' + "\n" * 10,
        },
    )
    package = read_package(tmp_path, "fake")
    assert ("fake.low.a", "fake.high.b") in package.edges and ("fake.low.a", "fake.high") in package.edges
    assert ("fake.high.b", "fake.low.c") in package.edges  # relative, inside a function
    assert cycle_problems(package, set()) == [
        "import cycle: fake.high.b -> fake.low.c -> fake.low.a -> fake.high.b "
        "(fake/high/b.py:2, fake/low/c.py:3, fake/low/a.py:1)"
    ]
    assert cycle_problems(package, {("fake.low.c", "fake.low.a")}) == []
    assert layer_problems(package, {"fake.low": 1, "fake.high": 2}, set()) == [
        "fake/stray.py: fake.stray is in no layer; add its prefix to LAYERS",
        "fake/low/a.py:1: fake.low.a (layer 1) imports fake.high.b (layer 2), a layer above",
    ]
    assert init_problems(package) == {
        "fake/low/__init__.py": "fake/low/__init__.py:2: a package __init__.py imports only the standard library; "
        "move it to a module"
    }
    assert long_functions(package) == {
        "fake/high/b.py::f": "fake/high/b.py:1: 87 lines",
        "fake/high/b.py::K.m": "fake/high/b.py:91: 86 lines",
    }
    assert long_modules(package, limit=10) == {
        "fake/high/b.py": f"176 lines, and its docstring has no '{LONG_MODULE_MARKER}' line",
        "fake/stray.py": f"12 lines, and its docstring has no '{LONG_MODULE_MARKER}' line",
    }
    (tmp_path / "fake/stray.py").write_text(f'"""Stray.\n\n{LONG_MODULE_MARKER} a reason.\n"""\n' + "\n" * 10)
    assert "fake/stray.py" not in long_modules(read_package(tmp_path, "fake"), limit=10)
