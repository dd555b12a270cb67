"""Dependencies as extras (issue 15, item 8): every declared dependency is imported by the
code, the theory half and its test modules import nothing of the other extras, and the
theory CLI runs without them (a stand-in for the fresh ``[theory]`` venv, whose check is
recorded in the root ``conftest.py``)."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("early_exposure", "linear_theory", "lm_experiments", "paper_checks", "figures")
IMPORT_NAME = {"pyyaml": "yaml"}  # distribution name -> module name where they differ


def _requirements() -> dict[str, list[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    out = {"base": project["dependencies"], **project["optional-dependencies"]}
    return {k: [re.split(r"[<>=!\[ ;]", r, maxsplit=1)[0].strip().lower() for r in v] for k, v in out.items()}


def _imported_modules() -> set[str]:
    found = set()
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*.py"):
            found |= set(re.findall(r"^\s*(?:import|from)\s+([A-Za-z_][A-Za-z0-9_]*)", f.read_text(), re.M))
    return found


def test_every_dependency_is_imported_by_the_code():
    imported = _imported_modules()
    reqs = _requirements()
    unused = sorted({d for k, deps in reqs.items() if k != "test" for d in deps
                     if not d.startswith("early-exposure") and IMPORT_NAME.get(d, d) not in imported})
    assert unused == []
    assert "pytest" in reqs["test"] and "pytest-timeout" not in {d for v in reqs.values() for d in v}


def test_theory_extra_is_the_base_install():
    reqs = _requirements()
    assert sorted(reqs["theory"]) == sorted(reqs["base"])
    assert not {"torch", "transformers", "peft", "scipy", "rich"} & set(reqs["base"])


_BLOCK = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is not part of the [theory] extra")
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


def _run_blocked(code: str, cwd: Path) -> subprocess.CompletedProcess:
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
