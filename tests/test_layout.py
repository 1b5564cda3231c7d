"""Imports point down only, and nothing imports in a circle.

Every ``import`` in ``src/fastdpt`` (top-level and inside functions) is read with ``ast``; each module
belongs to a unit (its first name under ``fastdpt``: ``data``, ``cli``, ``io`` ...). A unit may only
import units of a strictly lower layer (below), and the module graph has no cycle at all.

    python -m pytest tests/test_layout.py      # the check; CI runs it with the rest
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "fastdpt"

# lower layers first; a unit imports only from layers below its own
LAYERS = [
    ["errors", "_lazy"],
    ["config", "options"],
    ["presets", "hub", "viz", "losses", "cluster"],
    ["models", "io", "transforms"],
    ["weights", "data"],
    ["api", "evaluation", "runtime"],
    ["stabilize"],
    ["predict"],
    ["training", "stream", "bench", "serve", "workflows"],
    ["demo", "distill"],
    ["compress"],
    ["study"],
    ["cli"],
    ["__init__"],
]
LEVEL = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path, modules: set[str]) -> set[str]:
    """fastdpt modules imported by a file (relative imports resolved; ``from pkg import mod`` -> mod)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("fastdpt")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("fastdpt"):
                target = node.module
            else:
                continue
            subs = {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules}
            found |= subs or {target}
    return {m for m in found if m in modules and m != me}


def graph() -> dict[str, set[str]]:
    files = sorted(SRC.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports(f, modules) for f in files}


def test_every_unit_has_a_layer():
    units = {unit(m) for m in graph()}
    assert units <= set(LEVEL), f"add {sorted(units - set(LEVEL))} to LAYERS"


def test_imports_point_down_only():
    upward = []
    for mod, targets in graph().items():
        for t in targets:
            a, b = unit(mod), unit(t)
            if a != b and LEVEL[b] >= LEVEL[a]:
                upward.append(f"{mod} -> {t}")
    assert not upward, "imports that do not point down:\n" + "\n".join(sorted(upward))


def test_no_import_cycle():
    g = graph()
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_upward_and_circular_imports(tmp_path, monkeypatch):
    """The check itself can fail: a planted upward import and a planted cycle are both caught."""
    import shutil

    fake = tmp_path / "fastdpt"
    shutil.copytree(SRC, fake, ignore=shutil.ignore_patterns("static", "__pycache__"))
    (fake / "errors.py").write_text((fake / "errors.py").read_text() + "\nfrom .cli import app\n")
    (fake / "cli" / "common.py").write_text((fake / "cli" / "common.py").read_text() + "\nfrom . import models\n")
    monkeypatch.setattr(__import__(__name__), "SRC", fake)
    import pytest

    with pytest.raises(AssertionError, match="fastdpt.errors -> fastdpt.cli"):
        test_imports_point_down_only()
    with pytest.raises(AssertionError, match="import cycles"):
        test_no_import_cycle()
