"""The house's rules, read off the source: imports point downward only and there are no circles.

Layers, lowest first: ``common``, ``configs`` < ``data`` < ``train`` (config, schema) < ``train.model`` < ``train.engine``
< ``train.callbacks`` < ``train.setup`` < ``train.commands`` (+ ``train.cli``, ``launch``). The model has no
Lightning and no ``data``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "configs", "data", "train", "launch")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module of ours (and lightning) that ``path`` imports, at any depth (function-level too)."""
    package = _module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return found


def _graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    names = {_module_name(p) for p in files}
    graph = {}
    for path in files:
        deps = set()
        for imported in _imports(path):
            if imported.split(".")[0] == "lightning":
                deps.add("lightning")
            while imported and imported not in names:
                imported = imported.rpartition(".")[0]
            if imported:
                deps.add(imported)
        graph[_module_name(path)] = deps - {_module_name(path)}
    return graph


LAYERS = ["common|configs", "data", "train.config|train.schema|train", "train.model|train.scoring", "train.engine", "train.callbacks",
          "train.setup", "train.commands|train.cli|train.__main__|launch"]


def _layer(module: str) -> int:
    best = -1
    for i, spec in enumerate(LAYERS):
        for prefix in spec.split("|"):
            if module == prefix or module.startswith(prefix + "."):
                best = max(best, i) if prefix != "train" or module in ("train", "train.config", "train.schema") else best
    return best


def test_imports_point_downward_only():
    climbs = []
    for module, deps in _graph().items():
        for dep in deps - {"lightning"}:
            if dep in PACKAGES or module.endswith("__init__"):
                continue  # a package's docstring module
            if _layer(dep) > _layer(module):
                climbs.append(f"{module} -> {dep}")
    assert not climbs, climbs


def test_the_model_has_no_lightning_and_no_data():
    graph = _graph()
    bad = [f"{m} -> {d}" for m, deps in graph.items() if m.startswith(("train.model", "train.scoring"))
           for d in deps if d == "lightning" or d.split(".")[0] == "data" or d.startswith(("train.engine", "train.callbacks"))]
    assert not bad, bad


def test_data_and_common_never_import_train():
    graph = _graph()
    bad = [f"{m} -> {d}" for m, deps in graph.items() if m.split(".")[0] in ("data", "common")
           for d in deps if d.split(".")[0] in ("train", "launch")]
    bad += [f"{m} -> {d}" for m, deps in graph.items() if m.split(".")[0] in ("common", "configs")
            for d in deps if d.split(".")[0] in ("data", "common", "configs") and d.split(".")[0] != m.split(".")[0]]
    assert not bad, bad


def test_no_import_circles():
    graph = {m: {d for d in deps if d in _graph_names()} for m, deps in _graph().items()}
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if not dep.endswith("__init__") and dep not in PACKAGES:
                visit(dep)
        stack.pop()

    for module in sorted(graph):
        visit(module)
    assert not cycles, [" -> ".join(c) for c in cycles]


def _graph_names() -> set[str]:
    return {_module_name(p) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
