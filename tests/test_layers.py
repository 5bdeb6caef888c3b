"""The package's layering, checked on its source: no import cycles, a standard-library-only
capture path. Every import counts, also inside functions and under ``TYPE_CHECKING``."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "serfbridge"

# The capture path may reach past its folder only for these, each imported lazily inside a
# function: the pydantic validation on a config-cache miss, and the RPC client for
# ``exact_tags`` (docs/design.md).
CAPTURE_LAZY_EXITS = {"serfbridge.config.models", "serfbridge.serf.rpc"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(module imported, line, at module level) for every import of ``path``, resolved to a
    module of the package where ``from pkg import name`` names a submodule."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    found: list[tuple[str, int, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno, id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in known else target, node.lineno, id(node) in top_level))
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {
        name: {target for target, _, _ in imports(name, path, known) if target in known} - {name}
        for name, path in mods.items()
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def parent_packages(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_no_import_cycles() -> None:
    """No module reaches itself through imports, counting lazy and typing-only ones. An
    import of ``a.b.c`` also runs ``a/__init__`` and ``a.b/__init__``: those edges are left
    out, since a package's ``__init__`` importing its own children is not a cycle."""
    edges = graph()
    for name, targets in edges.items():
        edges[name] = {t for t in targets if t not in parent_packages(name)}
    assert cycles(edges) == []


def test_cycle_finder_sees_a_lazy_cycle() -> None:
    """The check itself: a cycle closed only by a function-level import is found."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_capture_path_is_standard_library_only() -> None:
    """serfbridge/capture/ imports the standard library, itself and the shared leaves named
    in capture.OUTSIDE; the two lazy exits are imported inside functions only."""
    from serfbridge.capture import OUTSIDE

    allowed = {"serfbridge" if m == "__init__" else f"serfbridge.{m}" for m in OUTSIDE}
    mods = modules()
    known = set(mods)
    problems = []
    for name, path in mods.items():
        if not name.startswith("serfbridge.capture"):
            continue
        for target, line, top in imports(name, path, known):
            root = target.split(".")[0]
            if target == "__future__" or (root in sys.stdlib_module_names and root != "serfbridge"):
                continue
            if target.startswith("serfbridge.capture") or target in allowed:
                continue
            if target in CAPTURE_LAZY_EXITS and not top:
                continue
            problems.append(f"{path.name}:{line} imports {target}")
    assert problems == []


def test_modules_stay_small() -> None:
    """No module over 400 lines: a module that grows past it holds two things."""
    long = {
        name: n
        for name, path in modules().items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > 400
    }
    assert long == {}
