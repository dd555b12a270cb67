"""``early-exposure``: the one command line of the project (docs/cli.md).

Every subcommand hands its arguments to an existing entry point, which stays callable as
before (``python -m lm_experiments run ...`` == ``early-exposure run ...``)::

    early-exposure presets                                  # the shipped presets, by name
    early-exposure run --config cpu-quick --out results/lm/cpu-quick [--dry-run]
    early-exposure reproduce --preset quick --out results/
    early-exposure check --results results/ --out results/report
    early-exposure theory run --config default --out results/theory/run

The entry points are imported by name when their subcommand runs (nothing else of the
project is imported here, so ``--help`` is fast and works in a theory-only install): this
module is the top of the import layers, a dispatcher that nothing imports. A subcommand
whose extra is not installed says in one line which extra to install (exit 2).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass

from early_exposure.cliopts import PRESET_KINDS, add_version, list_presets, package_version, preset_summary
from early_exposure.errors import ConfigError, Parser, cli_main

PROG = "early-exposure"

#: the extras and the modules whose absence means the extra is not installed
EXTRAS: dict[str, tuple[str, ...]] = {
    "theory": ("jax", "pandas"),
    "lm": ("torch", "transformers", "tokenizers"),
    "figures": ("matplotlib", "pandas"),
    "checks": ("scipy", "rich", "pandas"),
}


@dataclass(frozen=True)
class Command:
    """A subcommand: ``module:function`` called with ``prefix + argv``; ``extras`` it needs."""

    target: str
    help: str
    prefix: tuple[str, ...] = ()
    extras: tuple[str, ...] = ()
    same_as: str = ""  # the equivalent python -m command line


COMMANDS: dict[str, Command] = {
    "presets": Command("early_exposure.cli:presets_main", "list the shipped presets (--config NAME)"),
    "run": Command("lm_experiments.cli:run", "run (or --dry-run) an LM preset sweep", ("run",), ("lm",),
                   "python -m lm_experiments run"),
    "data": Command("lm_experiments.data.__main__:run", "build the embedded corpora / prepare a preset's data",
                    (), ("lm",), "python -m lm_experiments.data"),
    "regime": Command("paper_checks.lm_regime:main", "regime table of an LM results directory (regime.csv)",
                      (), ("lm", "checks"), "python -m paper_checks.lm_regime"),
    "whatwhere": Command("lm_experiments.analysis.whatwhere:main",
                         "what is forgotten (items) and where (layer rollback) in an LM results directory",
                         (), ("lm",), "python -m lm_experiments.analysis.whatwhere"),
    "curves": Command("lm_experiments.analysis.curves:main", "export finished runs' training curves (csv / tensorboard)",
                      (), ("lm",), "python -m lm_experiments.analysis.curves"),
    "checkpoints": Command("lm_experiments.engine.checkpoints:main",
                           "rebuild checkpoints.csv (run id -> stage, lambda, seed, setting, losses, model)",
                           (), ("lm",), "python -m lm_experiments.engine.checkpoints"),
    "guide": Command("paper_checks.results_guide:main", "rewrite RESULTS/README.md, the guide to every result file",
                     (), ("checks",), "python -m paper_checks.results_guide"),
    "check": Command("paper_checks.cli:main", "judge every claim of the paper against saved results",
                     (), ("checks",), "python -m paper_checks"),
    "reproduce": Command("paper_checks.cli:main", "the whole study (theory, LM, figures, checks), resumable",
                         ("reproduce",), ("theory", "lm", "figures", "checks"), "python -m paper_checks reproduce"),
    "figures": Command("figures.__main__:main", "draw the paper's figures from saved results", (), ("figures",),
                       "python -m figures"),
    "theory": Command("linear_theory.cli:main", "the linear-theory simulator (run, sweep, frontier, ...)", (),
                      ("theory",), "python -m linear_theory"),
}


def missing_extra(cmd: Command) -> tuple[str, str] | None:
    """(extra, module) of the first extra of ``cmd`` that is not installed, or None."""
    for extra in cmd.extras:
        for mod in EXTRAS[extra]:
            if importlib.util.find_spec(mod) is None:
                return extra, mod
    return None


def resolve(cmd: Command) -> Callable[[list[str]], int | None]:
    module, func = cmd.target.split(":")
    return getattr(importlib.import_module(module), func)


def build_parser() -> Parser:
    """The parser of ``early-exposure`` itself (for --help / --version; arguments after the
    subcommand belong to it and are passed on unparsed)."""
    import argparse

    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {c.help}" + (f"\n  {'':<{width}}  (= {c.same_as})" if c.same_as else "")
             for name, c in COMMANDS.items()]
    p = Parser(prog=PROG, usage=f"{PROG} [--version] COMMAND [ARGS ...]",
               description="Reproduce arXiv 2605.12705: the linear theory, the LM pipeline, the paper checks. "
                           f"`{PROG} COMMAND --help` shows a command's options.",
               epilog="commands:\n" + "\n".join(lines) + "\n\nConfigs by name: `--config cpu-quick` is the "
                      f"shipped configs/lm/cpu-quick.yaml ({PROG} presets lists them); a path works too.",
               formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version(p, PROG)
    p.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of the commands below")
    return p


def presets_main(argv: list[str] | None) -> int:
    """``early-exposure presets [--kind lm|theory] [--paths]``: name and one-line summary of each preset."""
    p = Parser(prog=f"{PROG} presets", description="List the shipped presets; give one as --config NAME.")
    add_version(p, f"{PROG} presets")
    p.add_argument("--kind", choices=PRESET_KINDS, default=None, help="only this kind (default: both)")
    p.add_argument("--paths", action="store_true", help="also print each preset's file")
    args = p.parse_args(argv)
    for kind in (args.kind,) if args.kind else PRESET_KINDS:
        found = list_presets(kind)
        use = "early-exposure run --config NAME" if kind == "lm" else "early-exposure theory <cmd> --config NAME"
        print(f"{kind} presets ({use}):")
        width = max(map(len, found), default=0)
        for name, path in found.items():
            print(f"  {name:<{width}}  {preset_summary(path)}" + (f"\n  {'':<{width}}  {path}" if args.paths else ""))
    return 0


def _dispatch(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0].startswith("-"):
        if not argv:
            parser.print_help(sys.stderr)
            return 2
        parser.parse_args(argv[:1])  # --help / --version exit here; anything else is an error
        raise ConfigError(PROG, f"give a command first (one of {', '.join(COMMANDS)}), then its options")
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        raise ConfigError(PROG, f"unknown command {name!r}; choose one of {', '.join(COMMANDS)}")
    cmd = COMMANDS[name]
    if rest[:1] == ["--version"]:  # the same answer from every command, whatever its parser knows
        print(f"{PROG} {name} {package_version()}")
        return 0
    gap = missing_extra(cmd)
    if gap is not None:
        extra, mod = gap
        if {"-h", "--help"} & set(rest):  # what the command is and what it needs (its parser cannot load)
            print(f"usage: {PROG} {name} [ARGS ...]\n\n{cmd.help} (= {cmd.same_as}).\nNeeds the [{extra}] "
                  f"extra, not installed here ({mod} is missing): pip install 'early-exposure[{extra}]'")
            return 0
        raise ConfigError(f"{PROG} {name}", f"needs the [{extra}] extra ({mod} is not installed): "
                          f"pip install 'early-exposure[{extra}]'")
    try:
        rc = resolve(cmd)([*cmd.prefix, *rest])
    except SystemExit as exc:  # argparse's --help / --version inside the entry point
        code = exc.code
        if code is None or isinstance(code, int):
            return int(code or 0)
        print(code, file=sys.stderr)
        return 1
    return int(rc or 0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``early-exposure`` console script."""
    return cli_main(_dispatch, argv)


if __name__ == "__main__":
    sys.exit(main())
