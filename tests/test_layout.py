"""The layout's rules, read from the source: imports run one way (no cycle among the project's
modules), no module in the packages over 600 lines, nothing in kernels/ reads the environment when
imported.

Imports are read with ``ast`` from each module's top level (including ``if``/``try`` blocks there,
not function bodies: an import inside a function runs when it is called, after every module has
loaded, and is how the engine keeps DeepSpeed, DALI and Triton off the import path).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("catlip", "engine", "kernels", "provision")
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _top_level(tree: ast.Module):
    """The statements that run at import: the module's body and the bodies of its if/try blocks."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If):
            todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports at import time (``from a import b`` counts ``a.b`` when
    that is a module, else ``a``). Importing a submodule runs its packages' ``__init__`` first, but
    that is no edge of this module's: a package that imports its own submodules is no cycle."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in _top_level(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_imports_are_read_as_python_resolves_them():
    graph = import_graph()
    # engine.train imports engine.parallel (absolute), a package's relative imports resolve too
    assert "engine.parallel" in graph["engine.train"]
    assert "kernels.linear_bce_params" in graph["kernels.linear_bce"]


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_over_600_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in _modules().values()
        if p.parts[len(ROOT.parts)] in ("catlip", "engine", "kernels")
        and (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"


def _reads_environment(node: ast.AST) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and sub.attr in ("environ", "getenv", "environb"):
            return True
        if isinstance(sub, ast.Name) and sub.id in ("environ", "getenv"):
            return True
    return False


def test_kernels_read_no_environment_at_import():
    offenders = []
    for name, path in _modules().items():
        if not name.startswith("kernels"):
            continue
        for node in _top_level(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                # decorators and default values run at import; the body does not
                parts = node.decorator_list + node.args.defaults + node.args.kw_defaults
                hit = any(p is not None and _reads_environment(p) for p in parts)
            elif isinstance(node, ast.ClassDef):  # a class body runs at import, its methods' do not
                parts = node.decorator_list + [
                    s for s in node.body if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))
                ]
                hit = any(_reads_environment(p) for p in parts)
            elif isinstance(node, (ast.If, ast.Try)):
                hit = isinstance(node, ast.If) and _reads_environment(node.test)
            else:
                hit = _reads_environment(node)
            if hit:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"environment read at import in kernels/: {offenders}"
