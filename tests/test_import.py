"""`import asvae_kit` stays light: no Triton, no scikit-learn, no plugin module; and the package's
modules import one another without a cycle (read from their source with ``ast``)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest


def test_import_time_does_not_load_heavy_or_plugin_modules():
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", "import asvae_kit"], capture_output=True, text=True, check=True)
    modules = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "asvae_kit" in modules
    for banned in ("triton", "sklearn", "asvae_kit.plugins", "asvae_kit.kernels", "torch"):
        hits = [m for m in modules if m == banned or m.startswith(banned + ".")]
        assert not hits, f"`import asvae_kit` imported {hits}"


@pytest.mark.slow
def test_kernels_package_does_not_import_triton():
    code = "import sys, asvae_kit.kernels; assert 'triton' not in sys.modules, sorted(m for m in sys.modules if 'triton' in m)"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the import graph of asvae_kit --------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]

#: Import cycles that existed before this test, in modules whose owners are fixing them: the set of
#: modules of each cycle (a strongly connected component of the graph).  A cycle not listed fails
#: the test, and so does an entry that no longer exists (delete it once the cycle is broken).
KNOWN_CYCLES: list[frozenset[str]] = [
]


def package_dirs() -> dict[str, Path]:
    """Package name -> its source folder, as pyproject.toml maps them (``asvae_kit.plugins`` is
    ``plugins/``, ``asvae_kit.kernels`` is ``kernels/``)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    return {name: REPO / folder for name, folder in setuptools["package-dir"].items()}


def module_files(packages: dict[str, Path]) -> dict[str, tuple[Path, bool]]:
    """Module name -> (its file, whether it is a package's ``__init__``)."""
    modules: dict[str, tuple[Path, bool]] = {}
    for package, folder in sorted(packages.items(), key=lambda item: -item[0].count(".")):  # a mapped subpackage wins
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            init = parts[-1] == "__init__"
            name = ".".join([package, *(parts[:-1] if init else parts)])
            modules.setdefault(name, (path, init))
    return modules


def import_graph(modules: dict[str, tuple[Path, bool]]) -> dict[str, dict[str, int]]:
    """Module -> {module it imports: line of the first such import}, over every import statement
    of the module: at the top, under ``if TYPE_CHECKING:``, inside functions.  ``from P import n``
    imports the module ``P.n`` when there is one, else ``P``; relative imports are resolved.  The
    parent packages that Python initialises before a submodule are not edges."""

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, int]] = {}
    for name, (path, init) in modules.items():
        edges: dict[str, int] = {}
        here = name if init else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str | None] = []
            if isinstance(node, ast.Import):
                targets = [known(alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else known(source) for alias in node.names]
            for target in targets:
                if target is not None and target != name:
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> dict[frozenset[str], list[str]]:
    """Each group of modules that import each other (a strongly connected component with more than
    one module), with one cycle through it: ``[a, b, ..., a]``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: dict[frozenset[str], list[str]] = {}

    def visit(root: str) -> None:  # Tarjan's algorithm, iteratively
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found[frozenset(component)] = _cycle_through(graph, set(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def _cycle_through(graph: dict[str, dict[str, int]], component: set[str]) -> list[str]:
    """A shortest cycle through the first module (by name) of ``component``."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    for node in queue:
        for child in sorted(graph[node]):
            if child == start:
                return [*paths[node], start]
            if child in component and child not in paths:
                paths[child] = [*paths[node], child]
                queue.append(child)
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover  (a component always has one)


def describe(cycle: list[str], graph: dict[str, dict[str, int]], modules: dict[str, tuple[Path, bool]]) -> str:
    def where(path: Path) -> str:
        return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)

    steps = [f"{a} ({where(modules[a][0])}:{graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return " -> ".join([*steps, cycle[-1]])


def test_the_package_has_no_import_cycle():
    modules = module_files(package_dirs())
    assert {"asvae_kit", "asvae_kit.algorithm", "asvae_kit.step_graph", "asvae_kit.plugins.divergences", "asvae_kit.kernels.reference"} <= set(modules)
    graph = import_graph(modules)
    found = cycles(graph)
    new = [describe(cycle, graph, modules) for group, cycle in found.items() if group not in KNOWN_CYCLES]
    assert not new, "import cycle(s) in asvae_kit:\n" + "\n".join(new)
    gone = [sorted(known) for known in KNOWN_CYCLES if known not in found]
    assert not gone, f"these known cycles are broken now; delete them from KNOWN_CYCLES: {gone}"


def test_the_step_does_not_know_the_graph_that_wraps_it():
    graph = import_graph(module_files(package_dirs()))
    assert "asvae_kit.step_graph" in graph["asvae_kit.builder"]  # the builder alone decides to wrap the step
    for module in ("asvae_kit.algorithm", "asvae_kit.step_hooks", "asvae_kit.trainer"):
        assert "asvae_kit.step_graph" not in graph[module], module
    assert "asvae_kit.algorithm" not in graph["asvae_kit.step_hooks"]


def test_the_import_graph_sees_every_kind_of_import(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from .a import A\n")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\nA = 1\n")
    (package / "b.py").write_text("def f():\n    from . import c\n")
    (package / "c.py").write_text("import pkg.sub.d\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "d.py").write_text("from .. import a\nfrom ..b import f\nimport os\n")
    modules = module_files({"pkg": package})
    graph = import_graph(modules)
    assert graph == {
        "pkg": {"pkg.a": 1}, "pkg.a": {"pkg.b": 3}, "pkg.b": {"pkg.c": 2}, "pkg.c": {"pkg.sub.d": 1},
        "pkg.sub": {}, "pkg.sub.d": {"pkg.a": 1, "pkg.b": 2},
    }
    cycle = ["pkg.a", "pkg.b", "pkg.c", "pkg.sub.d", "pkg.a"]
    assert cycles(graph) == {frozenset(cycle): cycle}
    assert describe(cycle, graph, modules).startswith("pkg.a (") and "pkg/b.py:2) -> pkg.c" in describe(cycle, graph, modules)
    (package / "sub" / "d.py").write_text("import os\n")
    assert cycles(import_graph(module_files({"pkg": package}))) == {}


def test_design_doc_lists_every_module_once():
    """docs/design.md §7 ("Where the code lives") names every module file, and only those."""
    import re

    text = (REPO / "docs" / "design.md").read_text(encoding="utf-8")
    section = text.split("## 7. Where the code lives", 1)[1]
    listed = re.findall(r"`((?:asvae_kit|plugins|kernels)/[\w/]+\.py)`", section)
    files = sorted(str(path.relative_to(REPO)) for path, _ in module_files(package_dirs()).values())
    assert sorted(set(listed)) == files, (
        f"docs/design.md §7 lacks {sorted(set(files) - set(listed))} and lists missing {sorted(set(listed) - set(files))}"
    )
    assert len(listed) == len(set(listed)), "docs/design.md §7 lists a module twice"
