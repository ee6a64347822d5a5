"""unitune's import graph, read from the source (ast): every import of a unitune module,
those inside functions included, so a cycle cannot hide behind a function-local import."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "platform"
LEAVES = ("unitune.stores", "unitune.choices", "unitune.errors")
# Function-local imports that still lack their one-line reason, in modules being rewritten
# elsewhere (the study; train/run.py): the list may only shrink.
UNEXPLAINED: dict[str, set[str]] = {}


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in sorted((ROOT / "unitune").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if package else parts)] = (path, package)
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module that importing ``name`` runs last (``unitune.config.JobSpec`` -> ``unitune.config``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> list[tuple[str, int, bool]]:
    """``(imported unitune module, line, inside a function)`` of every import in ``module``."""
    path, package = MODULES[module]
    tree = ast.parse(path.read_text())
    here = module if package else module.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = here.split(".")[: len(here.split(".")) - child.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                # ``from unitune import tags``: the submodule tags; ``from unitune.x import f``: x
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in child.names]
            for name in names:
                target = _resolve(name) if name.startswith("unitune") else None
                if target is not None and target != module:
                    found.append((target, child.lineno, inner))
            visit(child, inner)

    visit(tree, False)
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for target, _, _ in _imports(module):
            graph[module].add(target)
            # importing a.b.c runs a/__init__ and a.b/__init__ first
            parent = target.rpartition(".")[0]
            while parent and parent != "unitune" and parent != module and not module.startswith(parent + "."):
                graph[module].add(parent)
                parent = parent.rpartition(".")[0]
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (its modules in order, the first repeated last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := walk(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := walk(node)) is not None:
            return found
    return None


def test_the_finder_sees_a_cycle_behind_a_function_local_import():
    # An independent check of the walk: a made-up graph with a known cycle, and the real
    # graph's edges include function-local imports (models.registry imports model_source in
    # load_model only).
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    local = {(t, inner) for t, _, inner in _imports("unitune.models.registry")}
    assert ("unitune.model_source", True) in local


def test_unitune_has_no_import_cycle():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_store_and_address_rules_import_nothing_of_unitune():
    for leaf in LEAVES:
        assert _imports(leaf) == [], leaf


def test_each_function_local_import_of_unitune_says_why():
    # A unitune module imported inside a function keeps a heavy library (torch, Ray,
    # MLflow, pandas ...) off a light import path: the line, or a comment just above it
    # (and above the imports grouped with it), says so.
    silent = []
    for module, (path, _) in MODULES.items():
        lines = [""] + [line.strip() for line in path.read_text().splitlines()]
        for target, line, inner in _imports(module):
            above = line - 1
            while above > 0 and lines[above].startswith(("from ", "import ")) and "#" not in lines[above]:
                above -= 1
            name = str(path.relative_to(ROOT))
            if target in UNEXPLAINED.get(name, ()):
                continue
            if inner and "#" not in lines[line] and "#" not in lines[above]:
                silent.append(f"{name}:{line}: {target}")
    assert not silent, "function-local imports without a reason:\n" + "\n".join(silent)
