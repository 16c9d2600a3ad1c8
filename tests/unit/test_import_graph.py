"""The import graph of flows/, tasks/ and infra/, read from the source: layers and no circles.

An edge is any `import` / `from ... import` at module level or inside a function or class,
because a function-level import still ties the two modules together (it only hides the circle
until the function runs). Imports under `if TYPE_CHECKING:` are not edges: they never run, they
only name types for the checker. Importing `a.b.c` is an edge to `a.b.c` only, not to the
packages `a` and `a.b` whose `__init__` Python also runs: packages re-exporting their own
modules would otherwise all count as circles. `from a.b import c` is an edge to the module
`a.b.c` when there is one, else to `a.b`. Imports spelled as strings (subprocess `-c`, Prefect
entrypoints) are not seen.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("flows", "tasks", "infra")
SKIPPED = ("infra/migrations/versions",)  # Alembic revisions: loaded by path, never imported
TOOLING = "infra.tooling"
# The one door from the product into the tooling: `journeys demo|simulate|bench`, imported
# inside the commands only (the tooling is heavy and no other command needs it).
TOOLING_DOOR = "flows.cli.tools"
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files() -> Iterator[Path]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if not any(path.relative_to(ROOT).as_posix().startswith(s) for s in SKIPPED):
                yield path


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_imports(node: ast.AST, into_functions: bool = True
                    ) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under `node` except those in an `if TYPE_CHECKING:` body (and,
    with `into_functions` false, those that run only when a function is called)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif isinstance(child, ast.If) and is_type_checking(child):
            for other in child.orelse:
                yield from runtime_imports(ast.Module(body=[other], type_ignores=[]),
                                           into_functions)
        elif into_functions or not isinstance(child, FUNCTIONS):
            yield from runtime_imports(child, into_functions)


def absolute_base(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imported_names(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool,
                   modules: frozenset[str]) -> Iterator[str]:
    """The modules one statement imports: `from a import b` names `a.b` if that is a module."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = absolute_base(node, importer, is_package)
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        yield candidate if candidate in modules else base


def known_prefix(name: str, modules: frozenset[str]) -> str | None:
    """The module in our tree `name` lands in (`tasks.store.db.X` -> `tasks.store.db`)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


@cache
def import_graph() -> dict[str, set[str]]:
    """Module -> every name it imports at run time (ours resolved to modules; others as written)."""
    paths = {module_name(path): path for path in source_files()}
    modules = frozenset(paths)
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        targets = set()
        for node in runtime_imports(tree):
            for imported in imported_names(node, name, is_package, modules):
                targets.add(known_prefix(imported, modules) or imported)
        graph[name] = targets - {name}
    return graph


def internal_graph() -> dict[str, set[str]]:
    graph = import_graph()
    return {name: {t for t in targets if t in graph} for name, targets in graph.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components with more than one module: each holds at least one circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while (popped := stack.pop()) != node:
                component.append(popped)
            found.append(sorted([node, *component]))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [component for component in found if len(component) > 1]


def one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A concrete circle inside a component, as `a -> b -> ... -> a`: the shortest from its
    first module back to itself (breadth first)."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for target in sorted(graph[node] & members):
            if target == start:
                return [*paths[node], start]
            if target not in paths:
                paths[target] = [*paths[node], target]
                queue.append(target)
    raise AssertionError(f"{component} is not a strongly connected component")


def cycles() -> list[str]:
    graph = internal_graph()
    return [" -> ".join(one_cycle(graph, c)) for c in strongly_connected(graph)]


def imports_under(package: str, forbidden: tuple[str, ...]) -> list[str]:
    """`importer -> imported` for every module under `package` importing a forbidden root."""
    return sorted(f"{name} -> {target}" for name, targets in import_graph().items()
                  if name.split(".")[0] == package
                  for target in targets
                  if any(target == root or target.startswith(f"{root}.") for root in forbidden))


def test_the_graph_sees_the_whole_product():
    graph = import_graph()
    assert {"flows.journey", "tasks.runtime", "infra.stack", "infra.tooling.demo"} <= set(graph)
    assert "tasks.messaging.transports" in graph["tasks.runtime"]  # function-level import seen


def test_type_checking_imports_are_not_edges():
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a\n"
                     "else:\n    import b\ndef f():\n    import c\n")
    assert [n.names[0].name for n in runtime_imports(tree)] == ["TYPE_CHECKING", "b", "c"]


def test_there_are_no_import_circles():
    found = cycles()
    assert not found, "import circles:\n  " + "\n  ".join(found)


def test_tasks_import_neither_flows_infra_nor_prefect():
    assert imports_under("tasks", ("flows", "infra", "prefect")) == []


def test_the_product_never_imports_the_tooling():
    product = imports_under("flows", (TOOLING,)) + imports_under("tasks", (TOOLING,))
    assert [edge for edge in product if not edge.startswith(f"{TOOLING_DOOR} ")] == []


def test_the_cli_reaches_the_tooling_only_inside_its_commands():
    path = ROOT / (TOOLING_DOOR.replace(".", "/") + ".py")
    tree = ast.parse(path.read_text(), filename=str(path))
    eager = {name for node in runtime_imports(tree, into_functions=False)
             for name in imported_names(node, TOOLING_DOOR, False, frozenset())}
    assert not {name for name in eager if name.split(".")[:2] == TOOLING.split(".")}


def test_the_store_imports_nothing_above_it():
    """tasks/store (SQL, models, the journal) may read the vocabulary and the registry, nothing
    of the domain: a stage can use any query, and no query reaches up into a stage."""
    allowed = ("tasks.store", "tasks.states", "tasks.journey", "tasks.settings")
    above = sorted(f"{name} -> {target}" for name, targets in import_graph().items()
                   if name == "tasks.store" or name.startswith("tasks.store.")
                   for target in targets if target.startswith("tasks.")
                   and not any(target == a or target.startswith(f"{a}.") for a in allowed))
    assert not above, "the store imports upwards:\n  " + "\n  ".join(above)
