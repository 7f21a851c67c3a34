"""The house's layers hold: tools -> pipelines -> detection, classification -> core, no import against the flow,
no circles inside a package, no tool importing another tool (DESIGN.md)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

LAYER = {"core": 0, "detection": 1, "classification": 1, "pipelines": 2, "tools": 3}


def _imports(path: Path) -> list[tuple[str, bool]]:
    """Project modules a file imports: (module, at module level?)."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for n in names:
            if n.split(".")[0] in LAYER:
                out.append((n, id(node) in top))
    return out


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def test_no_import_runs_up_the_layers_and_no_tool_imports_a_tool():
    bad = []
    for pkg in LAYER:
        for f in sorted((ROOT / pkg).glob("*.py")):
            for mod, _ in _imports(f):
                target = mod.split(".")[0]
                if LAYER[target] > LAYER[pkg] or (pkg == "tools" and target == "tools"):
                    bad.append(f"{f.relative_to(ROOT)} imports {mod}")
    assert not bad, bad


def test_no_circles_and_project_imports_at_module_top():
    graph: dict[str, set[str]] = {}
    hidden = []
    for pkg in ("core", "detection", "classification", "pipelines"):
        for f in sorted((ROOT / pkg).glob("*.py")):
            m = _module(f)
            graph[m] = set()
            for mod, at_top in _imports(f):
                if not at_top:
                    hidden.append(f"{f.relative_to(ROOT)}: {mod} imported inside a function")
                graph[m].add(mod)
    assert not hidden, hidden

    def visit(node, stack):
        if node in stack:
            raise AssertionError("import circle: " + " -> ".join(stack[stack.index(node):] + [node]))
        for nxt in graph.get(node, ()):
            # "from detection import x" inside detection/yolo.py means the package __init__
            visit(nxt, stack + [node])

    for m in graph:
        visit(m, [])
