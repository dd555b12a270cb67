"""The import layering of the packages (docs/INTERFACES.md, "Layers"), read from the code.

Every import counts, at module level or inside a function (a lazy import for speed is fine,
but it obeys the same arrows: a function-local import cannot dodge the layering), as do
imports under ``TYPE_CHECKING``. The test parses the sources with :mod:`ast`; nothing is
imported. It also asserts that the module graph of ``lm_experiments`` has no circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("early_exposure", "linear_theory", "lm_experiments", "paper_checks", "figures")

#: package -> the project packages it may import (itself always allowed)
PACKAGE_ARROWS: dict[str, set[str]] = {
    "early_exposure": set(),
    "linear_theory": {"early_exposure"},
    "lm_experiments": {"early_exposure"},
    "paper_checks": {"early_exposure", "lm_experiments", "linear_theory", "figures"},
    "figures": {"early_exposure", "lm_experiments", "linear_theory"},
}

#: the layers of lm_experiments, bottom up: a module may import its own layer and the ones below,
#: except the pairs in SIBLINGS (same height, never each other)
LM_LAYERS: tuple[tuple[str, ...], ...] = (
    ("data",),
    ("config",),
    ("engine",),
    ("protocol",),
    ("runner", "analysis"),
    ("cli", "__main__", "__init__"),
)
#: a layer's subpackages that may import each other (the entry points); others at one height may not
ENTRY = ("cli", "__main__", "__init__")


def lm_layer(module: str) -> tuple[int, str]:
    """(height, name) of a module of lm_experiments: its subpackage or top-level module."""
    part = module.split(".")[1] if "." in module else "__init__"
    for h, names in enumerate(LM_LAYERS):
        if part in names:
            return h, part
    raise AssertionError(f"{module}: not in any layer of LM_LAYERS (add its subpackage there and to docs)")


def module_name(path: Path, root: Path = REPO) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] + (["__init__"] if len(parts) == 1 else [])
    return ".".join(parts)


def imports_of(path: Path, root: Path = REPO) -> list[tuple[int, str]]:
    """(line, imported module) of every import in ``path``, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    me = module_name(path, root)
    pkg = me.rsplit(".", 1)[0] if path.name != "__init__.py" else me
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.append((node.lineno, base))
            # `from pkg import sub` imports the submodule pkg.sub when it is one
            for a in node.names:
                cand = f"{base}.{a.name}"
                sub = root / Path(*cand.split("."))
                if sub.with_suffix(".py").is_file() or sub.is_dir():
                    out.append((node.lineno, cand))
    return out


def project_files(root: Path = REPO) -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (root / pkg).rglob("*.py"))


def violations(root: Path = REPO) -> list[str]:
    bad = []
    for f in project_files(root):
        me = module_name(f, root)
        my_pkg = me.split(".")[0]
        for line, target in imports_of(f, root):
            top = target.split(".")[0]
            if top not in PACKAGES or top == my_pkg and my_pkg != "lm_experiments":
                continue
            where = f"{f.relative_to(root)}:{line} imports {target}"
            if top != my_pkg and top not in PACKAGE_ARROWS[my_pkg]:
                bad.append(f"{where}: {my_pkg} may not import {top}")
            elif my_pkg == "lm_experiments" and top == "lm_experiments" and target != "lm_experiments":
                (h_me, n_me), (h_t, n_t) = lm_layer(me), lm_layer(target)
                if h_t > h_me or (h_t == h_me and n_t != n_me and n_me not in ENTRY):
                    bad.append(f"{where}: layer {n_me} may not import layer {n_t}")
    return bad


def lm_graph() -> dict[str, set[str]]:
    """module -> the lm_experiments modules it imports (files only)."""
    graph: dict[str, set[str]] = {}
    # package faces (__init__.py) only hand names on: their modules are the nodes
    files = {module_name(f): f for f in (REPO / "lm_experiments").rglob("*.py") if f.name != "__init__.py"}
    for me, f in files.items():
        graph[me] = set()
        for _, t in imports_of(f):
            while t and t not in files:
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t and t != me:
                graph[me].add(t)
    return graph


def test_every_import_follows_the_layers():
    assert violations() == []


def test_lm_modules_import_each_other_in_no_circle():
    graph = lm_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t in graph and not state.get(t):
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if not state.get(m):
            visit(m)


@pytest.mark.parametrize("bad_import, expected", [
    # the engine reaching up into the protocol, hidden inside a function
    ("lm_experiments/engine/optim.py", "layer engine may not import layer protocol"),
    # the analysis and the runner are siblings
    ("lm_experiments/analysis/items.py", "layer analysis may not import layer runner"),
    # the shared package importing a half
    ("early_exposure/io.py", "early_exposure may not import lm_experiments"),
])
def test_an_arrow_against_the_layers_fails(tmp_path, bad_import, expected):
    """The check is not vacuous: a copy of the tree with one arrow added against the layering
    (a function-local import) is reported, naming the file and the layers."""
    import shutil

    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    target = {"engine": "lm_experiments.protocol.stages", "analysis": "lm_experiments.runner.pipeline",
              "early_exposure/io.py": "lm_experiments.config"}
    key = "early_exposure/io.py" if bad_import.startswith("early_exposure") else bad_import.split("/")[1]
    p = tmp_path / bad_import
    p.write_text(p.read_text() + f"\n\ndef _sneaky():\n    import {target[key]}  # noqa: F401\n")
    found = violations(tmp_path)
    assert len(found) == 1 and expected in found[0] and bad_import in found[0], found
