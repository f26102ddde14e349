"""The module graph of lkctl: no import cycles and no imports of another module's private names.

Every module under ``lkctl/`` is parsed with :mod:`ast`; imports at any depth count, lazy ones inside
functions included, because a lazy import still ties two modules together (issue 13, item 7).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "lkctl"

# Imports that close a cycle or reach a private name and are tolerated for now. Issue 13 emptied both lists: the
# cycle check drops these edges, anything else fails, and an entry whose import is gone fails too, so they stay empty.
KNOWN_CYCLE_EDGES: frozenset[tuple[str, str]] = frozenset()
KNOWN_PRIVATE: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    names: tuple[str, ...]
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base.pop()
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The lkctl module that ``name`` (a dotted import target) lives in, or None outside lkctl."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _runtime_nodes(tree: ast.Module) -> Iterator[ast.AST]:
    """Every node except those under `if TYPE_CHECKING:`: imports for annotations only never run."""
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _edges(modules: dict[str, Path]) -> Iterator[Edge]:
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in _runtime_nodes(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target = _owner(alias.name, modules)
                    if target is not None and target != module:
                        yield Edge(module, target, (), node.lineno)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node)
                for alias in node.names:
                    # `from pkg import sub` imports the submodule pkg.sub when there is one.
                    sub = f"{base}.{alias.name}"
                    if sub in modules:
                        if sub != module:
                            yield Edge(module, sub, (), node.lineno)
                        continue
                    target = _owner(base, modules)
                    if target is not None and target != module:
                        yield Edge(module, target, (alias.name,), node.lineno)


def _private_attribute_uses(modules: dict[str, Path]) -> Iterator[tuple[str, str, int]]:
    """``alias._name`` where ``alias`` is an lkctl module imported in that file."""
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        aliases: dict[str, str] = {}
        for node in _runtime_nodes(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules and alias.asname:
                        aliases[alias.asname] = alias.name
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in modules:
                        aliases[alias.asname or alias.name] = sub
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and _is_private(node.attr)
                and aliases[node.value.id] != module
            ):
                yield aliases[node.value.id], f"{module}:{node.lineno} uses {node.attr}", node.lineno


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _same_package_private_module(source: str, target: str) -> bool:
    """A package may use its own ``_private`` submodules: ``build/__init__`` importing ``build._disk``."""
    parent, _, leaf = target.rpartition(".")
    return _is_private(leaf) and (source == parent or source.startswith(parent + "."))


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def _graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for edge in _edges(modules):
        # A submodule using its own package's names (`from lkctl.sources import Download` in sources/oci.py) is
        # how a package shares its core; the package importing its submodules stays an edge, so a cycle
        # through another package (sources -> sources.oci -> oci.registry -> sources) is still seen.
        if edge.source.startswith(edge.target + "."):
            continue
        graph[edge.source].add(edge.target)
        # Importing lkctl.a.b runs lkctl/a/__init__.py first: a dependency on the package too.
        package = edge.target.rpartition(".")[0]
        while package.count(".") >= 1 and package != edge.source and not edge.source.startswith(package + "."):
            graph[edge.source].add(package)
            package = package.rpartition(".")[0]
    return graph


def test_the_graph_sees_lazy_imports_inside_functions() -> None:
    modules = _modules()
    assert "lkctl.tasks.vm" in modules
    edges = {(e.source, e.target) for e in _edges(modules)}
    # tasks import the library lazily (inside task bodies) so `import lkctl.tasks` stays cheap.
    assert any(s == "lkctl.tasks.vm" and t.startswith("lkctl.runtime") for s, t in edges)


def test_cycle_finder_reports_a_two_module_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [frozenset({"a", "b"})]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycles_between_modules() -> None:
    graph = _graph(_modules())
    stale = sorted(e for e in KNOWN_CYCLE_EDGES if e[1] not in graph.get(e[0], set()))
    assert not stale, f"imports listed in KNOWN_CYCLE_EDGES are gone; remove them from the list: {stale}"
    for source, target in KNOWN_CYCLE_EDGES:
        graph[source].discard(target)
    cycles = [sorted(c) for c in _cycles(graph)]
    detail = [[f"{s} -> {t}" for s in c for t in sorted(graph[s]) if t in c] for c in cycles]
    assert not cycles, f"import cycles (move the shared piece to the module that owns it): {detail}"


def test_no_module_imports_another_modules_private_names() -> None:
    modules = _modules()
    found: set[tuple[str, str]] = set()
    for edge in _edges(modules):
        if _same_package_private_module(edge.source, edge.target):
            continue
        if any(_is_private(part) for part in edge.target.split(".")):
            found.add((edge.source, edge.target))
        for name in edge.names:
            if _is_private(name):
                found.add((edge.source, f"{edge.target}.{name}"))
    for target, where, _ in _private_attribute_uses(modules):
        found.add((where.split(":")[0], f"{target}.{where.rsplit(' ', 1)[1]}"))
    new = sorted(found - KNOWN_PRIVATE)
    assert not new, f"imports of another module's private names (make them public or move them): {new}"
    fixed = sorted(KNOWN_PRIVATE - found)
    assert not fixed, f"entries in KNOWN_PRIVATE are gone; remove them from the list: {fixed}"


@pytest.mark.parametrize("name", ["_x", "_private_thing"])
def test_private_names_start_with_one_underscore(name: str) -> None:
    assert _is_private(name)
    assert not _is_private("__all__")


# Public error classes defined outside lkctl/errors.py: none are left (issue 13, item 6); the list may only shrink.
KNOWN_ERRORS_ELSEWHERE: frozenset[str] = frozenset()


def test_public_error_classes_live_in_the_errors_module() -> None:
    modules = _modules()
    errors = {n.name for n in ast.walk(ast.parse(modules["lkctl.errors"].read_text())) if isinstance(n, ast.ClassDef)}
    assert "LkError" in errors
    elsewhere: dict[str, str] = {}
    changed = True
    while changed:  # subclasses of subclasses count too
        changed = False
        for module, path in modules.items():
            if module == "lkctl.errors":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.ClassDef) or node.name in elsewhere or _is_private(node.name):
                    continue
                bases = {
                    b.id if isinstance(b, ast.Name) else b.attr
                    for b in node.bases
                    if isinstance(b, ast.Name | ast.Attribute)
                }
                if bases & (errors | set(elsewhere)):
                    elsewhere[node.name] = module
                    changed = True
    new = sorted(f"{m}.{n}" for n, m in elsewhere.items() if n not in KNOWN_ERRORS_ELSEWHERE)
    assert not new, f"error classes belong in lkctl/errors.py (re-export them where they were): {new}"
    stale = sorted(KNOWN_ERRORS_ELSEWHERE - set(elsewhere))
    assert not stale, f"remove from KNOWN_ERRORS_ELSEWHERE: {stale}"
