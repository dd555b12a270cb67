"""The one command line (``early-exposure``, :mod:`early_exposure.cli`), the shared options
(:mod:`early_exposure.cliopts`), the shipped presets and the config-only ``--dry-run``.

- every subcommand's ``--help`` exits 0 and ``early-exposure --help`` lists every subcommand;
- ``--version`` on the umbrella and on every ``python -m`` entry point;
- a preset by name is the file of the same name; an unknown name is one line, exit 2;
- a non-editable install holds the presets and resolves names from them;
- ``--dry-run`` of the GPU presets prints the plan, tokens, time and disk within seconds with
  the network blocked, without importing torch or transformers;
- the parameter count of the dry run against real models and SmolLM2-135M's published count.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest

from early_exposure.cli import COMMANDS, main

REPO = Path(__file__).resolve().parent.parent


def _call(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse --help / --version
        return int(exc.code or 0)


def _subcommand_argvs() -> list[list[str]]:
    """Every subcommand, and every sub-subcommand of those that have them."""
    from linear_theory.cli import build_parser as theory_parser

    theory = next(a for a in theory_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return ([[name] for name in COMMANDS] + [["theory", s] for s in theory.choices]
            + [["data", "build"], ["data", "prepare"], ["reproduce"]])


def test_help_lists_every_subcommand(capsys):
    assert _call(["--help"]) == 0
    text = capsys.readouterr().out
    for name in COMMANDS:
        assert f"\n  {name} " in text, name
    assert {"run", "data", "regime", "whatwhere", "check", "reproduce", "figures", "theory", "presets"} <= set(COMMANDS)


@pytest.mark.parametrize("argv", _subcommand_argvs(), ids=" ".join)
def test_every_subcommand_help_exits_0(argv, capsys):
    assert _call([*argv, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "--help" in out


def test_version_everywhere(capsys):
    version = importlib.metadata.version("early-exposure")
    assert _call(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"early-exposure {version}"
    from figures.__main__ import main as figures_main
    from linear_theory.cli import main as theory_main
    from lm_experiments.analysis.whatwhere import main as whatwhere_main
    from lm_experiments.cli import run as lm_main
    from lm_experiments.data.__main__ import run as data_main
    from paper_checks.cli import main as checks_main
    from paper_checks.lm_regime import main as regime_main

    for fn in (figures_main, theory_main, whatwhere_main, lm_main, data_main, checks_main, regime_main):
        try:  # argparse's version action exits (SystemExit), or the entry point returns its code
            rc = fn(["--version"])
        except SystemExit as exc:
            rc = exc.code
        assert rc == 0
        out = capsys.readouterr().out.strip()
        assert out.startswith("python -m ") and out.endswith(f" {version}"), out


def test_no_command_and_unknown_command_exit_2(capsys):
    assert _call([]) == 2
    assert "COMMAND" in capsys.readouterr().err
    assert _call(["bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown command 'bogus'" in err[0] and "reproduce" in err[0]


def test_umbrella_help_imports_no_heavy_module():
    code = ("import sys\nfrom early_exposure.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "main(['presets'])\n"
            "print('HEAVY', sorted(m for m in ('torch', 'jax', 'pandas', 'transformers', 'lm_experiments',"
            " 'paper_checks') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout and "gpu-135m" in r.stdout and "sweep_frontier" in r.stdout


def test_nothing_imports_the_umbrella():
    """early_exposure.cli is the top of the import layers (docs/INTERFACES.md): only its __main__ imports it."""
    from tests.test_import_layers import imports_of, project_files

    importers = {str(f.relative_to(REPO)) for f in project_files() for _, t in imports_of(f)
                 if t == "early_exposure.cli"}
    assert importers == {"early_exposure/__main__.py"}


def test_missing_extra_is_one_line_exit_2(monkeypatch, tmp_path, capsys):
    import early_exposure.cli as umbrella

    real = umbrella.importlib.util.find_spec
    monkeypatch.setattr(umbrella.importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    out = tmp_path / "out"
    assert _call(["run", "--config", "cpu-quick", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "[lm] extra" in err[0] and "pip install 'early-exposure[lm]'" in err[0]
    assert not out.exists()
    assert _call(["whatwhere", "--help"]) == 0  # the help says what is missing instead
    assert "early-exposure[lm]" in capsys.readouterr().out
    assert _call(["theory", "--help"]) == 0  # a command whose extra is installed is unaffected


# --------------------------------------------------------------------------- presets
@pytest.mark.parametrize("kind, name", [("lm", "cpu-quick-synth"), ("lm", "gpu-135m"), ("theory", "sweep_frontier")])
def test_preset_by_name_is_the_shipped_file(kind, name, tmp_path, monkeypatch):
    from early_exposure.cliopts import list_presets, resolve_preset

    path = REPO / "configs" / kind / f"{name}.yaml"
    assert Path(resolve_preset(kind, name)).samefile(path)
    assert Path(resolve_preset(kind, f"{name}.yaml")).samefile(path)
    monkeypatch.chdir(tmp_path)  # outside the clone: the clone-relative path still finds the shipped file
    assert Path(resolve_preset(kind, f"configs/{kind}/{name}.yaml")).samefile(path)
    assert set(list_presets(kind)) == {p.stem for p in (REPO / "configs" / kind).glob("*.yaml")}
    mine = tmp_path / f"{name}.yaml"  # an existing file wins over the preset of the same name
    mine.write_text("x: 1\n")
    assert resolve_preset(kind, f"{name}.yaml") == f"{name}.yaml"


def test_dry_run_by_name_equals_by_path(capsys, tmp_path):
    outs = []
    for config in ("cpu-quick-synth", str(REPO / "configs/lm/cpu-quick-synth.yaml")):
        assert _call(["run", "--config", config, "--out", str(tmp_path / "o"), "--dry-run"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and "stage 1: 15 runs (lambda [0.0, 0.5, 1.0] x 5 seeds)" in outs[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv", [["run", "--out", "OUT", "--config", "no-such-preset"],
                                  ["run", "--out", "OUT", "--config", "configs/lm/no-such.yaml"],
                                  ["data", "prepare", "--config", "no-such-preset"],
                                  ["theory", "run", "--out", "OUT", "--config", "no-such-preset"]])
def test_unknown_preset_is_one_line_exit_2(argv, tmp_path, capsys):
    out = tmp_path / "out"
    assert _call([str(out) if a == "OUT" else a for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--config" in err[0] and "unknown" in err[0]
    known = "cpu-quick, cpu-quick-flan-chem" if argv[0] != "theory" else "default, sweep_alpha_beta"
    assert known in err[0]
    assert not out.exists()


def test_pyproject_ships_every_package_and_the_presets():
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    tree = {str(p.parent.relative_to(REPO)).replace("/", ".") for top in
            ("early_exposure", "linear_theory", "lm_experiments", "paper_checks", "figures")
            for p in (REPO / top).rglob("__init__.py")}
    assert set(tool["packages"]) == tree | {"early_exposure.presets"}
    assert tool["package-dir"] == {"early_exposure.presets": "configs"}
    globs = tool["package-data"]["early_exposure.presets"]
    shipped = {p.relative_to(REPO / "configs") for g in globs for p in (REPO / "configs").glob(g)}
    assert shipped == {p.relative_to(REPO / "configs") for p in (REPO / "configs").rglob("*") if p.is_file()}


@pytest.mark.slow
def test_non_editable_install_resolves_presets_by_name(tmp_path):
    src = tmp_path / "src"  # a copy: the build writes build/ and *.egg-info beside the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "configs", "early_exposure", "linear_theory",
                 "lm_experiments", "paper_checks", "figures"):
        f = REPO / name
        (shutil.copytree(f, src / name, ignore=shutil.ignore_patterns("__pycache__")) if f.is_dir()
         else shutil.copy(f, src / name))
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(target), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (target / "early_exposure" / "presets" / "lm" / "gpu-135m.yaml").is_file()
    assert (target / "early_exposure" / "presets" / "theory" / "default.yaml").is_file()
    code = ("from early_exposure.cliopts import resolve_preset, presets_root\n"
            "print(presets_root()); print(resolve_preset('lm', 'cpu-quick-synth'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60,
                       env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    root, preset = r.stdout.split()
    assert Path(root) == target / "early_exposure" / "presets"
    assert Path(preset).read_bytes() == (REPO / "configs/lm/cpu-quick-synth.yaml").read_bytes()


# --------------------------------------------------------------------------- --dry-run
_NO_NETWORK = textwrap.dedent("""
    import socket, sys, time
    def refuse(*a, **k):
        raise OSError("network blocked by the test")
    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.create_connection = refuse
    from early_exposure.cli import main
    t0 = time.perf_counter()
    rc = main(sys.argv[1:])
    print("SECONDS", time.perf_counter() - t0)
    print("HEAVY", sorted(m for m in ("torch", "transformers", "datasets", "huggingface_hub") if m in sys.modules))
    sys.exit(rc)
""")


@pytest.mark.parametrize("preset, runs, params", [("gpu-135m", (15, 63, 252), "134.52M"),
                                                  ("gpu-1b", (4, 28, 84), "944.98M")])
def test_gpu_dry_run_is_config_only_and_fast(preset, runs, params, tmp_path):
    out = tmp_path / "out"
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", _NO_NETWORK, "run", "--config", preset, "--out", str(out), "--dry-run"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    wall = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert float(text.split("SECONDS")[1].split()[0]) < 10 and wall < 30  # seconds, on a shared 2-core machine
    assert "HEAVY []" in text  # no torch, no tokenizer, no Hub client: nothing was built or fetched
    pre, post, ft = runs
    assert f"stage 1: {pre} runs (lambda [0.0" in text and f"stage 2: {post} runs" in text
    assert f"stage 3: {ft} runs" in text and f"{params} parameters" in text
    stage1 = text.split("stage 1:")[1].split("\n")[0]
    lams = [float(x) for x in stage1.split("lambda [")[1].split("]")[0].split(",")]
    assert lams == sorted(lams)
    assert " tokens" in text and "training +" in text and "evaluation" in text
    assert "estimated time:" in text and " h at most" in text
    assert "estimated disk:" in text and "GB of saved models" in text
    assert not out.exists()


def test_gpu_135m_dry_run_matches_the_documented_estimate(capsys, tmp_path):
    # docs/lm_engine.md "Paper-scale presets": 15 / 63 / 252 runs, 34.7B training tokens (+3.2B
    # evaluation), 48 h on one H100 compiled; 78 saved models of 134.5M fp32 parameters
    assert _call(["run", "--config", "gpu-135m", "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "34,660,589,568 training + 3,145,728,000 evaluation" in text
    hours = float(text.split("estimated time: ")[1].split(" h")[0])
    assert 45 < hours < 51
    assert "78 x 538.1 MB fp32" in text


def test_dry_run_refuses_bad_budgets_before_work(tmp_path, capsys):
    out = tmp_path / "out"
    assert _call(["run", "--config", "cpu-quick-synth", "--out", str(out), "--dry-run",
                  "--set", "pre.tokens=100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: pre.tokens:")
    assert _call(["run", "--config", "cpu-quick", "--out", str(out), "--probe"]) == 2
    assert "error: --probe:" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("preset, vocab", [("tiny-1m", 2048), ("tiny-4l", 48), ("tiny-3m", 4096), ("tiny-10m", 342)])
def test_parameter_count_matches_the_built_model(preset, vocab):
    from lm_experiments.engine.model import build_model
    from lm_experiments.runner.dryrun import count_parameters

    model = build_model(preset, vocab_size=vocab, max_seq_len=64, seed=0)
    real = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())  # tied weights once
    assert count_parameters(preset, vocab) == real


def test_parameter_count_of_smollm2_135m_is_the_published_one():
    from lm_experiments.runner.dryrun import count_parameters

    # HuggingFaceTB/SmolLM2-135M: 134,515,008 parameters (its safetensors, tied embedding once)
    assert count_parameters("smollm2-135m", 49152) == 134_515_008


# --------------------------------------------------------------------------- --offline, --results
def test_offline_missing_hub_corpus_is_an_error_not_a_fallback(tmp_path):
    import yaml

    cfg = yaml.safe_load((REPO / "configs/lm/cpu-quick.yaml").read_text())
    cfg["data_fallback"] = dict(cfg["data"])
    cfg["data"]["pre"] = {"source": "hf", "name": "nobody/no-such-corpus", "text_field": "text", "max_chars": 1000}
    p = tmp_path / "hub.yaml"
    p.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", _NO_NETWORK, "run", "--config", str(p), "--out", str(out),
                        "--cache", str(tmp_path / "cache"), "--offline", "--no-progress"],
                       capture_output=True, text=True, cwd=REPO, timeout=180, env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: data.pre.name:") and "nobody/no-such-corpus" in err[0]
    assert "using data_fallback" not in r.stdout and "network blocked" not in r.stderr
    assert not out.exists()


def test_regime_and_whatwhere_take_results(tmp_path, capsys):
    for cmd in ("regime", "whatwhere"):
        assert _call([cmd, "--results", str(tmp_path / "absent")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --results:") and "absent" in err[0]
        assert _call([cmd, str(tmp_path / "absent")]) == 2  # the old positional form, hidden from --help
        assert "absent" in capsys.readouterr().err
        assert _call([cmd, "--help"]) == 0
        assert "--results DIR" in capsys.readouterr().out
    assert _call(["regime", "--results", str(tmp_path)]) == 2  # an empty directory is not an LM results directory
    assert "not an LM results directory" in capsys.readouterr().err
    assert not (tmp_path / "regime.csv").exists()
