"""The package's imports flow one way (docs/design.md, "The map and the direction of imports").

The import graph is read from the source with ``ast``: every ``import``/``from ... import`` of
our own package, wherever it is written (``if TYPE_CHECKING:`` blocks included). The test fails
on an import circle between modules, on a module importing from a higher layer, and on an
import of our own package inside a function (allowed only in the CLI, which loads each verb's
module on demand). Imports of third-party libraries inside functions must carry a comment saying
why (on the line, or the line above).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = "matryoshka_train"

# Low to high: a module may import from its own layer (without circles) and from lower layers.
LAYERS = [
    ["errors", "hub", "testing"],
    ["config"],
    ["reporting"],
    ["models"],
    ["data"],
    ["losses"],
    ["evaluation"],
    ["training"],
    ["sweep"],
    ["cli", "__main__", "__init__"],
]
# The one place our own modules are imported inside functions (see its module docstring).
LAZY_OWN_IMPORTS = {"matryoshka_train.cli"}


def _layer(module: str) -> int:
    part = module.split(".")[1] if module != PACKAGE else "__init__"
    return next(i for i, names in enumerate(LAYERS) if part in names)


def _modules() -> dict[str, Path]:
    root = REPO / PACKAGE
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, path: Path, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The modules of our package an import statement names (a name imported from a package
    counts as the submodule when there is one)."""
    known = _modules()
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == PACKAGE]
    if node.level:
        base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != PACKAGE:
        return []
    found = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        found.append(sub if sub in known else target)
    return found


def _walk(tree: ast.AST, in_function: bool = False):
    for child in ast.iter_child_nodes(tree):
        nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        yield from _walk(child, nested)


def _graph() -> tuple[dict[str, set[str]], list[str], list[str]]:
    graph: dict[str, set[str]] = {}
    lazy_own, uncommented = [], []
    for module, path in _modules().items():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        graph[module] = set()
        for node, in_function in _walk(ast.parse(text)):
            targets = [t for t in _resolve(module, path, node) if t != module]
            if in_function and targets and module not in LAZY_OWN_IMPORTS:
                lazy_own.append(f"{module}:{node.lineno}")
            if in_function and not targets:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if any(n.split(".")[0] in sys.stdlib_module_names for n in names):
                    uncommented.append(f"{module}:{node.lineno} imports the standard library inside a function")
                elif "#" not in lines[node.lineno - 1] and "#" not in lines[node.lineno - 2]:
                    uncommented.append(f"{module}:{node.lineno} (say which heavy library and why, in a comment)")
            if not in_function:
                graph[module].update(targets)
    return graph, lazy_own, uncommented


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_is_in_a_layer():
    for module in _modules():
        _layer(module)  # raises StopIteration for a subpackage missing from LAYERS


def test_no_import_circles():
    graph, _, _ = _graph()
    assert not _cycles(graph), f"import circles: {_cycles(graph)}"


def test_imports_point_down_the_layers():
    graph, _, _ = _graph()
    upward = [f"{m} -> {t}" for m, targets in graph.items() for t in targets if _layer(t) > _layer(m)]
    assert not upward, "imports from a higher layer:\n" + "\n".join(sorted(upward))


def test_no_imports_of_our_own_modules_inside_functions():
    _, lazy_own, _ = _graph()
    assert not lazy_own, "imports of matryoshka_train inside functions:\n" + "\n".join(lazy_own)


def test_third_party_imports_inside_functions_say_why():
    _, _, uncommented = _graph()
    assert not uncommented, "\n".join(uncommented)


def test_the_checker_sees_a_circle_and_an_upward_import():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _layer("matryoshka_train.training.loop") > _layer("matryoshka_train.config.schema")
