"""The package's layers: a module imports only its own layer or lower ones, and nothing cycles.

Every import counts, also one inside a function. The layer table is below; docs/architecture.md
explains it. A new module must be placed in the table (the test fails for an unplaced module).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "unlearnlm"
ROOT = Path(__file__).resolve().parents[1] / "src" / PACKAGE

# Bottom to top. A module belongs to the first entry that is its name or a package above it.
LAYERS: list[tuple[str, ...]] = [
    ("unlearnlm.errors", "unlearnlm.paths", "unlearnlm.rundir"),
    ("unlearnlm.data",),
    ("unlearnlm.lm",),
    ("unlearnlm.metrics",),
    ("unlearnlm.methods",),
    # The settings check method and loss-term names against methods.losses.
    ("unlearnlm.settings",),
    ("unlearnlm.train",),
    ("unlearnlm.evaluate",),
    ("unlearnlm.audit",),
    ("unlearnlm.bench",),
    ("unlearnlm.report",),
    ("unlearnlm.demo",),
    # The public API (the package's lazy __init__) and the command line.
    ("unlearnlm", "unlearnlm.cli", "unlearnlm.__main__"),
]

# What any module may read from the package root without depending on the layers above.
ROOT_NAMES_ALLOWED = {"__version__"}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _layer(module: str) -> int:
    best = None
    for index, names in enumerate(LAYERS):
        for name in names:
            if module == name or (name != PACKAGE and module.startswith(name + ".")):
                if best is None or len(name) > best[1]:
                    best = (index, len(name))
    assert best is not None, f"{module} is in no layer; add it to LAYERS in {__file__}"
    return best[0]


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``module`` imports (the root only when it asks for more than
    ``ROOT_NAMES_ALLOWED``); a module's own parent packages are left out."""
    found = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join(parts[:keep] + ([base] if base else []))
            if base == PACKAGE and {a.name for a in node.names} <= ROOT_NAMES_ALLOWED:
                continue
            targets = [f"{base}.{alias.name}" for alias in node.names] or [base]
        for target in targets:
            if not (target == PACKAGE or target.startswith(PACKAGE + ".")):
                continue
            resolved = _resolve(target, modules)
            if resolved and resolved != module and not module.startswith(resolved + "."):
                found.add(resolved)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, path, modules) for m, path in modules.items()}


def test_every_module_has_a_layer():
    for module in _modules():
        _layer(module)


def test_no_module_imports_a_higher_layer():
    upward = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in sorted(_graph().items())
        for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "; ".join(" -> ".join(c) for c in cycles)


def test_the_checks_see_imports_inside_functions(tmp_path):
    """A lazy upward import is found like a top-level one."""
    source = "def f():\n    from unlearnlm.train.unlearn import unlearn\n"
    path = tmp_path / "probe.py"
    path.write_text(source)
    modules = {**_modules(), "unlearnlm.data.probe": path}
    targets = _imports("unlearnlm.data.probe", path, modules)
    assert targets == {"unlearnlm.train.unlearn"}
    assert _layer("unlearnlm.train.unlearn") > _layer("unlearnlm.data.probe")
