"""Dependencies as extras (issue 15, item 8; "a new user's first hour"), checked statically on
pyproject.toml and the code's import statements (``ast``), and by importing the code with the
extras it must not need blocked:

- every declared dependency is imported by the code, and every third-party import of each
  package is declared in the base install or in an extra of that package (an import inside a
  function may come from the package's optional extras: ray, tracking, gpu);
- the base install is exactly what early_exposure (shared by both halves) imports;
- jax is declared only in ``[theory]``: the closure of ``[lm]`` (and of ``[checks]``,
  ``[figures]``, ...) within this project's extras, and through the installed distributions'
  own requirements, has no jax; ``import early_exposure``, the LM pipeline and the paper
  checks import neither jax nor linear_theory; the checks and figures need no torch either;
- ray is declared only in ``[ray]`` (pulled by ``[all]``) and imported only inside the
  functions of the ray executor;
- constraints.txt pins every distribution the test install pulls in, within pyproject's
  bounds, and .ci/run installs with it;
- the theory half and its test modules import nothing of the other extras, and the theory
  CLI runs without them (a stand-in for the fresh ``[theory]`` venv; see the root conftest.py).
"""

from __future__ import annotations

import ast
import fnmatch
import subprocess
import sys
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
PROJECT = "early-exposure"
PACKAGES = ("early_exposure", "linear_theory", "lm_experiments", "paper_checks", "figures")
IMPORT_NAME = {"pyyaml": "yaml"}  # distribution name -> module name where they differ
#: the extra each package belongs to (the base install is every package's); optional extras
#: its functions may import from (an import inside a function, used only when installed)
PACKAGE_EXTRAS = {"early_exposure": (), "linear_theory": ("theory",), "lm_experiments": ("lm",),
                  "paper_checks": ("checks",), "figures": ("figures",)}
OPTIONAL_EXTRAS = {"lm_experiments": ("ray", "tracking", "gpu"), "paper_checks": ("ray",)}
#: imported inside a function when installed, declared nowhere: cut-cross-entropy >= 25.4 is on
#: GitHub only (pyproject's [gpu] comment), threadpoolctl caps BLAS threads where present
UNDECLARED = {"cut_cross_entropy", "threadpoolctl"}
#: the only files that import ray (inside functions)
RAY_FILES = {"lm_experiments/runner/executors.py", "paper_checks/reproduce.py"}


@cache
def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _direct(extra: str) -> list[Requirement]:
    """The requirements listed under ``extra`` ("base": ``[project] dependencies``)."""
    p = _project()
    return [Requirement(r) for r in (p["dependencies"] if extra == "base" else p["optional-dependencies"][extra])]


def _closure(*extras: str) -> dict[str, Requirement]:
    """{distribution: requirement} that installing ``early-exposure[extras]`` asks for: the
    base, the extras, and the extras they name (``early-exposure[...]``), recursively."""
    out: dict[str, Requirement] = {}
    todo, seen = ["base", *extras], set()
    while todo:
        e = todo.pop()
        if e in seen:
            continue
        seen.add(e)
        for r in _direct(e):
            if canonicalize_name(r.name) == PROJECT:
                todo.extend(sorted(r.extras))
            else:
                out.setdefault(canonicalize_name(r.name), r)
    return out


def _installed_closure(names) -> set[str]:
    """Distributions reached from ``names`` through the installed distributions' own
    requirements (markers evaluated for this interpreter, no extras)."""
    seen: set[str] = set()
    todo = [canonicalize_name(n) for n in names]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        for r in metadata.distribution(n).requires or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def _module(dist: str) -> str:
    return IMPORT_NAME.get(dist, dist.replace("-", "_"))


@cache
def _imports(pkg: str) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Third-party top-level modules that ``pkg`` imports: ``(at module level, inside a
    function)``, each ``{module: files}`` (stdlib and this project's packages left out)."""
    top: dict[str, set[str]] = {}
    lazy: dict[str, set[str]] = {}

    def visit(node: ast.AST, in_function: bool, rel: str) -> None:
        for ch in ast.iter_child_nodes(node):
            inner = in_function or isinstance(ch, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names = []
            if isinstance(ch, ast.Import):
                names = [a.name.split(".")[0] for a in ch.names]
            elif isinstance(ch, ast.ImportFrom) and ch.level == 0 and ch.module:
                names = [ch.module.split(".")[0]]
            for n in names:
                if n not in sys.stdlib_module_names and n not in PACKAGES and n != "__future__":
                    (lazy if inner else top).setdefault(n, set()).add(rel)
            visit(ch, inner, rel)

    for f in sorted((REPO / pkg).rglob("*.py")):
        visit(ast.parse(f.read_text(encoding="utf-8")), False, f.relative_to(REPO).as_posix())
    return top, lazy


def _project_imports(pkg: str) -> set[str]:
    """This project's packages that ``pkg`` imports (anywhere)."""
    found = set()
    for f in (REPO / pkg).rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return (found & set(PACKAGES)) - {pkg}


def test_every_dependency_is_imported_by_the_code():
    imported = set().union(*(set(_imports(p)[0]) | set(_imports(p)[1]) for p in PACKAGES))
    extras = ["base", *(e for e in _project()["optional-dependencies"] if e != "test")]
    declared = {canonicalize_name(r.name) for e in extras for r in _direct(e)} - {PROJECT}
    assert sorted(d for d in declared if _module(d) not in imported) == []
    test = {canonicalize_name(r.name) for r in _direct("test")}
    assert {"pytest", "packaging"} <= test and "pytest-timeout" not in declared | test


@pytest.mark.parametrize("pkg", PACKAGES)
def test_every_third_party_import_is_declared_in_an_extra_of_its_package(pkg):
    top, lazy = _imports(pkg)
    own = {_module(d) for d in _closure(*PACKAGE_EXTRAS[pkg])}
    optional = {_module(d) for d in _closure(*OPTIONAL_EXTRAS.get(pkg, ()))}
    assert {m: sorted(f) for m, f in top.items() if m not in own} == {}
    assert {m: sorted(f) for m, f in lazy.items() if m not in own | optional | UNDECLARED} == {}
    assert {m for m in UNDECLARED if m in top} == set()  # optional ones only inside functions
    assert pkg != "lm_experiments" or {"torch", "transformers", "peft"} <= set(top)  # the scan sees imports


def test_undeclared_optional_modules_are_declared_nowhere():
    declared = {_module(canonicalize_name(r.name)) for e in ["base", *_project()["optional-dependencies"]]
                for r in _direct(e)}
    assert UNDECLARED & declared == set()


def test_the_base_install_is_what_early_exposure_imports():
    top, lazy = _imports("early_exposure")
    base = {_module(canonicalize_name(r.name)) for r in _direct("base")}
    assert base == set(top) | set(lazy)
    assert not {"jax", "torch", "transformers", "ray", "rich", "matplotlib"} & base
    assert _project_imports("early_exposure") == set()  # shared code imports neither half


def test_jax_only_in_the_theory_extra():
    extras = [e for e in _project()["optional-dependencies"]]
    with_jax = {e for e in ["base", *extras] if any(canonicalize_name(r.name) == "jax" for r in _direct(e))}
    assert with_jax == {"theory"}
    for e in ("lm", "checks", "figures", "ray", "tracking", "gpu"):
        assert "jax" not in _closure(e), e
    assert {"jax", "torch", "ray", "rich", "matplotlib"} <= set(_closure("all")) <= set(_closure("test"))
    assert "torch" not in _closure("theory") and "ray" not in _closure("theory")
    for pkg in ("early_exposure", "lm_experiments", "paper_checks", "figures"):
        assert "linear_theory" not in _project_imports(pkg), pkg
        assert "jax" not in set(_imports(pkg)[0]) | set(_imports(pkg)[1]), pkg


def test_lm_installs_no_jax_through_its_dependencies():
    """The installed distributions that [lm] (and [checks], [figures]) pull in, followed
    through their own requirements: no jax, no jaxlib (what `pip install '.[lm]'` would add)."""
    for e in ("lm", "checks", "figures"):
        reached = _installed_closure(_closure(e))
        assert {"jax", "jaxlib"} & reached == set(), e
        assert "torch" in reached or e != "lm"
    assert "jaxlib" in _installed_closure(_closure("theory"))  # the walk does follow requirements


def test_ray_only_in_the_ray_extra_and_imported_only_by_the_executor():
    extras = [e for e in _project()["optional-dependencies"]]
    assert {e for e in ["base", *extras] if any(canonicalize_name(r.name) == "ray" for r in _direct(e))} == {"ray"}
    assert "ray" not in _closure("lm") and "ray" in _closure("all")
    for pkg in PACKAGES:
        top, lazy = _imports(pkg)
        assert "ray" not in top, pkg
        assert lazy.get("ray", set()) <= RAY_FILES, pkg


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_constraints_pin_the_test_install_within_pyproject_bounds():
    pins = _constraints()
    direct = _closure("test")
    assert sorted(set(direct) - set(pins)) == []
    for name, req in direct.items():
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} outside {req}"
    assert pins["torch"] == "2.13.0"
    assert sorted(_installed_closure(direct) - set(pins)) == []  # the whole installed closure is pinned
    assert "jax" in pins and "ray" in pins and "liger-kernel" not in pins  # [gpu] is not tested on the CPU
    run = (REPO / ".ci" / "run").read_text()
    assert "pip install -c constraints.txt -e '.[test]'" in run and "pip install torch==2.13.0" in run


def test_installed_versions_are_the_pinned_ones():
    """This environment is the tested one: each pin is what is installed (where installed)."""
    wrong = {}
    for name, version in _constraints().items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        if have.split("+")[0] != version.split("+")[0]:
            wrong[name] = (version, have)
    assert wrong == {}


def test_lm_checks_and_figures_import_without_jax_or_ray():
    """Every module of the shared code, the LM pipeline, the paper checks and the figures
    imports with jax, linear_theory and ray blocked; the checks and figures without torch too."""
    code = ("import importlib, pkgutil, sys\nbad = []\nfor pkg in {pkgs!r}:\n"
            "    for info in pkgutil.walk_packages(importlib.import_module(pkg).__path__, pkg + '.'):\n"
            "        if not info.name.endswith('__main__'):\n"
            "            try:\n                importlib.import_module(info.name)\n"
            "            except Exception as exc:\n                bad.append((info.name, repr(exc)[:200]))\n"
            "print(bad, sorted({{m.split('.')[0] for m in sys.modules}} & {{'jax', 'ray', 'torch', 'linear_theory'}}))\n")
    lm = _run_blocked(code.format(pkgs=["early_exposure", "lm_experiments", "paper_checks", "figures"]), REPO,
                      blocked=["jax", "jaxlib", "linear_theory", "ray"])
    assert lm.returncode == 0 and lm.stdout.strip() == "[] ['torch']", lm.stdout[-2000:] + lm.stderr[-2000:]
    checks = _run_blocked(code.format(pkgs=["early_exposure", "paper_checks", "figures"]), REPO,
                          blocked=["jax", "jaxlib", "linear_theory", "ray", "torch", "transformers", "peft",
                                   "tokenizers", "datasets", "lm_experiments"])
    assert checks.returncode == 0 and checks.stdout.strip() == "[] []", checks.stdout[-2000:] + checks.stderr[-2000:]


_BLOCK = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is not part of the [theory] extra (blocked)")
        return None
sys.meta_path.insert(0, Block())
"""


def _root_conftest():
    """The repository's root conftest.py (the theory-only collection rule), loaded by path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("root_conftest", REPO / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run_blocked(code: str, cwd: Path, blocked: list[str] | None = None) -> subprocess.CompletedProcess:
    if blocked is None:
        blocked = list(_root_conftest().OTHER_EXTRAS)  # what a theory-only install lacks
    return subprocess.run([sys.executable, "-c", _BLOCK.format(blocked=blocked) + code],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def test_theory_test_modules_import_without_the_other_extras():
    patterns = _root_conftest().THEORY_TEST_MODULES
    modules = sorted(p.stem for p in (REPO / "tests").glob("test_*.py")
                     if any(fnmatch.fnmatch(p.name, pat) for pat in patterns))
    assert {"test_theory_cli", "test_sweep_engine", "test_bad_inputs_theory"} <= set(modules)
    code = "import sys; sys.path.insert(0, 'tests')\n" + "".join(f"import {m}\n" for m in modules) + "print('ok')"
    proc = _run_blocked(code, REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_a_blocked_import_really_fails():
    """The stand-in is a real check: importing the LM test modules fails under it."""
    proc = _run_blocked("import sys; sys.path.insert(0, 'tests')\nimport test_lm_engine_model\n", REPO)
    assert proc.returncode != 0 and "not part of the [theory] extra" in proc.stderr


@pytest.mark.parametrize("argv", [["run"], ["assumptions"]])
def test_theory_cli_runs_without_the_other_extras(tmp_path, argv):
    code = ("import runpy, sys\nsys.argv = ['linear_theory', *%r, '--out', %r]\n"
            "runpy.run_module('linear_theory', run_name='__main__')\n") % (argv, str(tmp_path / "o"))
    proc = _run_blocked(code, REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert any((tmp_path / "o").glob("*.json"))
