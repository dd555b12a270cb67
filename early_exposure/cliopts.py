"""The options every command line of the project spells the same way, and the shipped presets.

- ``--version``: the installed package version (:func:`package_version`, from
  :mod:`importlib.metadata`), on ``early-exposure`` and on every ``python -m`` entry point.
- ``--executor auto|serial|ray`` (:data:`EXECUTORS`, :func:`resolve_executor`): ``auto`` is Ray
  when it is installed and the machine has 2+ cores, else serial.
- ``--no-progress``: the one spelling; an old one (``--quiet`` where it meant "no bars") stays as
  a hidden alias (:func:`add_no_progress`).
- ``--results DIR`` for inputs, ``--out DIR`` for outputs; a command that took its input as a
  positional keeps it as a hidden, deprecated alias (:func:`add_results`, :func:`results_arg`).
- ``--offline`` (:func:`go_offline`): no Hugging Face network access.
- Presets by name: ``--config cpu-quick-synth`` is the shipped ``configs/lm/cpu-quick-synth.yaml``
  (:func:`resolve_preset`); a path still works. The ``configs/`` directory of the repository is
  installed as the package data ``early_exposure.presets`` (pyproject ``package-dir``), so a
  non-editable install finds the presets too; in a clone they are read from ``configs/``.

Nothing here imports the rest of the project (the bottom layer, docs/INTERFACES.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

from early_exposure.errors import ConfigError

#: the executors of every command that runs LM sweeps
EXECUTORS = ("auto", "serial", "ray")
#: preset kinds: the subdirectories of configs/
PRESET_KINDS = ("lm", "theory")
_SUFFIXES = (".yaml", ".yml", ".json")


def package_version() -> str:
    """The installed version of the ``early-exposure`` distribution ("unknown" when not installed)."""
    import importlib.metadata

    try:
        return importlib.metadata.version("early-exposure")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed; pip install -e .)"


def add_version(p: argparse.ArgumentParser, prog: str | None = None) -> None:
    """``--version``: print ``PROG VERSION`` and exit 0."""
    p.add_argument("--version", action="version", version=f"{prog or p.prog} {package_version()}",
                   help="print the package version and exit")


def add_no_progress(p: argparse.ArgumentParser, *old: str, help: str = "no progress bars") -> None:
    """``--no-progress`` (dest ``no_progress``) plus hidden aliases ``old`` (e.g. ``--quiet``)."""
    p.add_argument("--no-progress", action="store_true", help=help)
    for spelling in old:
        p.add_argument(spelling, dest="no_progress", action="store_true", help=argparse.SUPPRESS)


def add_executor(p: argparse.ArgumentParser, default: str = "serial") -> None:
    p.add_argument("--executor", choices=EXECUTORS, default=default,
                   help="serial: one run at a time in this process; ray: every run a Ray task (local Ray on every "
                        "core, or a cluster with --address); auto: ray when installed and 2+ cores, else serial "
                        f"(default {default})")


def resolve_executor(name: str) -> str:
    """``auto`` -> ``ray`` when Ray is installed and this machine has 2+ cores, else ``serial``."""
    if name not in EXECUTORS:
        raise ConfigError("--executor", f"must be one of {', '.join(EXECUTORS)}, got {name!r}")
    if name != "auto":
        return name
    if importlib.util.find_spec("ray") is None:
        return "serial"
    return "ray" if (os.cpu_count() or 1) >= 2 else "serial"


def add_results(p: argparse.ArgumentParser, help: str) -> None:
    """``--results DIR`` plus the old positional input (hidden, deprecated): read with :func:`results_arg`."""
    p.add_argument("--results", default=None, metavar="DIR", help=help)
    p.add_argument("results_positional", nargs="?", default=None, metavar="DIR", help=argparse.SUPPRESS)


def results_arg(args: argparse.Namespace) -> str:
    """The ``--results`` value (or the deprecated positional); ConfigError when neither or both differ."""
    flag, pos = args.results, args.results_positional
    if flag is None and pos is None:
        raise ConfigError("--results", "required: give the input directory as --results DIR")
    if flag is not None and pos is not None and flag != pos:
        raise ConfigError("--results", f"given twice ({flag} and the positional {pos}); give --results DIR once")
    return flag if flag is not None else pos


def go_offline() -> None:
    """``--offline``: no network for Hugging Face (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE, inherited by
    Ray workers and torchrun ranks; also set in the libraries this process already imported), so a
    corpus or tokenizer missing from the local cache fails at once instead of after Hub retries."""
    import sys

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        cfgmod = sys.modules["datasets"].config
        cfgmod.HF_HUB_OFFLINE = True
        if hasattr(cfgmod, "HF_DATASETS_OFFLINE"):
            cfgmod.HF_DATASETS_OFFLINE = True


# --------------------------------------------------------------------------- presets
def presets_root() -> Path:
    """The directory holding ``lm/*.yaml`` and ``theory/*.yaml``: the installed package data
    ``early_exposure.presets`` when present, else the clone's ``configs/``."""
    spec = importlib.util.find_spec("early_exposure.presets")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            if (Path(loc) / "lm").is_dir():
                return Path(loc)
    clone = Path(__file__).resolve().parent.parent / "configs"
    if (clone / "lm").is_dir():
        return clone
    raise ConfigError("--config", "the shipped presets are not installed (no early_exposure/presets and no "
                      "configs/ beside the package); reinstall the package or give a path to a config file")


def list_presets(kind: str) -> dict[str, Path]:
    """``{name: file}`` of the shipped presets of ``kind`` (``lm`` or ``theory``), sorted by name."""
    d = presets_root() / kind
    return {p.stem: p for p in sorted(d.iterdir(), key=lambda q: q.stem) if p.suffix in _SUFFIXES and p.is_file()}


def preset_summary(path: Path, width: int = 100) -> str:
    """The first sentence of a preset file's leading comment (its description), at most ``width`` characters."""
    words: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if not s.startswith("#"):
            break
        words += s.lstrip("#").split()
        if words and words[-1].endswith("."):
            break
    text = " ".join(words)
    if text.startswith(path.stem + ":"):
        text = text[len(path.stem) + 1:].strip()
    text = text.split(". ")[0].rstrip(".")
    return text if len(text) <= width else text[:width - 3].rsplit(" ", 1)[0] + " ..."


def resolve_preset(kind: str, value: str, field: str = "--config") -> str:
    """A config argument -> a file path: an existing file as given; a preset name (``cpu-quick``,
    ``cpu-quick.yaml``) or a clone-relative path (``configs/lm/cpu-quick.yaml``) that does not
    exist here -> the shipped preset; an unknown name: ConfigError listing the known names. Any
    other path that does not exist is returned as is (its loader names it)."""
    if Path(value).is_file():
        return value
    p = Path(value)
    parts = p.parts
    named = len(parts) == 1 and (p.suffix in _SUFFIXES or p.suffix == "")
    shipped = len(parts) == 3 and parts[0] == "configs" and parts[1] == kind
    if not (named or shipped):
        return value
    known = list_presets(kind)
    stem = p.stem if p.suffix in _SUFFIXES else p.name
    if stem in known:
        return str(known[stem])
    raise ConfigError(field, f"unknown {kind} preset {value!r} (and no such file); known: {', '.join(known)}; "
                      "or give the path of a config file")


def preset_type(kind: str) -> Callable[[str], str]:
    """``type=`` of a ``--config`` option: :func:`resolve_preset`, its error as an argparse error
    (one line, exit 2 through :class:`early_exposure.errors.Parser`)."""

    def convert(value: str) -> str:
        try:
            return resolve_preset(kind, value)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None

    convert.__name__ = f"{kind} preset or path"
    return convert
