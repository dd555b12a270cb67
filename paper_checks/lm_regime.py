"""Regime diagnostics of an LM results directory: is it inside the testbed's envelope?

One row per fine-tuning run, read from the run tree (:class:`early_exposure.runs.RunTree`:
the pre, post and fine-tuning runs' ``result.json`` and theta_pre's safetensors header),
so it works on any finished or partial sweep::

    python -m paper_checks.lm_regime --results OUT [--cache DIR]   # print the table (writes OUT/regime.csv)

Columns (losses in nats on the reported held-out split; V = vocabulary size):

- ``stage1_tokens``, ``n_params`` (theta_pre's parameters, tied weights once),
  ``tokens_per_param``, ``vocab_size``;
- ``L_pre_pre`` = L(theta_pre; D_pre) and ``L_pre_pre_over_lnV``;
- ``L_pre_post`` = L(theta_post; D_pre), ``dL_pre_post`` (its change through stage 2),
  ``L_pre_ft`` = L(theta_ft; D_pre), ``dL_pre_ft`` (its change through stage 3),
  ``L_pre_ft_over_lnV``;
- ``ngram_<order>_<role>`` (order unigram / bigram / trigram, role pre / post / ft): the
  n-gram baselines of the run set's data (:func:`lm_experiments.analysis.ngram.baselines_from_config`
  on the manifest's config: fit on each role's training split, scored on the same held-out
  split as the stage losses), cached in ``OUT/baselines.json``; NaN when the data cannot be
  prepared (``table.attrs["baselines_error"]`` says why);
- ``L_ft`` = L(theta_ft; D_ft); ``margin_pre`` / ``margin_post`` / ``margin_ft``: how far
  theta_pre on D_pre (``L_pre_pre``), theta_post on D_post (``L_im``) and theta_ft on D_ft
  (``L_ft``) beat the bigram baseline of that distribution (bigram minus loss, nats;
  positive = better than the bigram);
- ``kept_post`` / ``kept_ft``: the fraction of pretraining's gain over the *bigram*
  baseline of D_pre still held after stage 2 / stage 3, (B - L_pre(theta)) / (B - L_pre_pre)
  with B = ``ngram_bigram_pre`` (1 = nothing lost, 0 = back to the bigram, negative =
  worse than the bigram; NaN when theta_pre does not beat the bigram);
  ``kept_post_uniform`` / ``kept_ft_uniform``: the same against the uniform predictor,
  (ln V - L_pre(theta)) / (ln V - L_pre_pre) (the envelope's reference before issue 21);
- ``stopped_early`` (stage 2; None for compute-matched runs, one pass by design);
- ``L_im``, ``L_ret``, ``ret_minus_im``, ``L_post_stage1`` (D_post loss of theta_pre) and
  ``forgetting`` = (L_ret - L_im) / (ref - L_im) with ref = min(L_post_stage1 of the
  unmixed theta_pre of the same seed, ln V): the share of the post-training gain that
  fine-tuning takes back (0 = none, 1 = back to a model that never saw D_post).
- synthetic world only (``data.synthetic``; NaN otherwise): ``floor_<role>`` (the exact
  entropy floor of each distribution), ``to_floor_pre`` / ``to_floor_post`` /
  ``to_floor_ft`` (``L_pre_pre`` / ``L_im`` / ``L_ft`` minus its floor), and
  ``em_stage<k>_<split>``: exact match of theta_pre (k = 1), theta_post (2) and theta_ft
  (3) on D_post's capability items, ``val`` = training query phrasing, ``test`` = held-out
  phrasing (the run records' ``items``).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from early_exposure.cliopts import add_results, add_version, results_arg
from early_exposure.configs import check_input_dir
from early_exposure.errors import ConfigError, Parser, cli_main
from early_exposure.io import atomic_write_bytes, atomic_write_json
from early_exposure.integrity import read_json
from early_exposure.runs import RunReader, RunTree

ROLES = ("pre", "post", "ft")
NGRAM_COLUMNS = tuple(f"ngram_{o}_{r}" for r in ROLES for o in ("unigram", "bigram", "trigram"))
SYNTH_COLUMNS = (*(f"floor_{r}" for r in ROLES), "to_floor_pre", "to_floor_post", "to_floor_ft",
                 *(f"em_stage{k}_{s}" for k in (1, 2, 3) for s in ("val", "test")))

COLUMNS = ("run_id", "upstream_id", "pipeline", "method", "mix_fraction", "compute_matched", "seed", "ft_lr",
           "stage1_tokens", "n_params", "tokens_per_param", "vocab_size", "L_pre_pre", "L_pre_pre_over_lnV",
           "L_pre_post", "dL_pre_post", "L_pre_ft", "dL_pre_ft", "L_pre_ft_over_lnV", "kept_post", "kept_ft",
           "kept_post_uniform", "kept_ft_uniform", "stopped_early", "L_im", "L_ret", "ret_minus_im", "L_ft",
           "L_post_stage1", "forgetting", "margin_pre", "margin_post", "margin_ft", *NGRAM_COLUMNS,
           *SYNTH_COLUMNS, "diverged")


def _read(p: Path) -> Any:
    """The JSON object in ``p``, or None when it is missing or unreadable."""
    return read_json(p)[0]


def count_params(model_dir: Path) -> int | None:
    """Parameters stored in ``model_dir/model.safetensors`` (header only; tied weights once)."""
    from safetensors import safe_open

    f = Path(model_dir) / "model.safetensors"
    if not f.is_file():
        return None
    n = 0
    with safe_open(str(f), framework="np") as st:
        for k in st.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
            n += math.prod(st.get_slice(k).get_shape())
    return n


def _vocab(model_dir: Path) -> int | None:
    cfg = _read(Path(model_dir) / "config.json")
    return int(cfg["vocab_size"]) if cfg and "vocab_size" in cfg else None


def _f(d: dict[str, Any], k: str) -> float:
    v = d.get(k)
    return float(v) if isinstance(v, (int, float)) and v is not None else float("nan")


def run_set_baselines(out_dir: str | Path, *, cache_root: str | Path | None = None) -> dict[str, Any]:
    """The n-gram baselines of a run set (``{role: {"unigram", "bigram", "trigram", ...}}``,
    :func:`lm_experiments.analysis.ngram.baselines_from_config` on ``OUT/manifest.json``'s
    config, data from ``cache_root``), cached in ``OUT/baselines.json`` with the data
    fingerprint: reused while it matches the manifest's. Raises ``ValueError`` (why) when
    there is no manifest or the data cannot be prepared."""
    tree = RunTree(out_dir)
    man = _read(tree.manifest)
    if not man or not isinstance(man.get("config"), dict):
        raise ValueError(f"no readable {tree.manifest.name} with a config")
    fp = man.get("data_fingerprint")
    cached = _read(tree.baselines)
    if cached and cached.get("data_fingerprint") == fp and isinstance(cached.get("baselines"), dict):
        return cached["baselines"]
    from lm_experiments.analysis.ngram import baselines_from_config
    from lm_experiments.config import config_from_mapping

    try:
        cfg = config_from_mapping(man["config"])
        res = baselines_from_config(cfg, cache_root=Path(cache_root) if cache_root else None)
    except Exception as exc:
        raise ValueError(f"baselines not computable: {type(exc).__name__}: {exc}") from exc
    if fp is not None and res.get("data", {}).get("fingerprint") not in (None, fp):
        raise ValueError(f"the data rebuilt from the manifest ({res['data']['fingerprint']}) are not the run's ({fp})")
    atomic_write_json(tree.baselines, {"data_fingerprint": fp, "baselines": res})
    return res


def _items(rec: dict[str, Any]) -> dict[str, float]:
    """``em_stage<k>_<split>`` of a fine-tuning record's ``items`` (synthetic runs)."""
    items = rec.get("items") or {}
    out = {}
    for k in (1, 2, 3):
        got = items.get(f"post_stage{k}") or {}
        for split in ("val", "test"):
            out[f"em_stage{k}_{split}"] = _f(got.get(split) or {}, "all")
    return out


def regime_table(out_dir: str | Path, *, baselines: dict[str, Any] | None = None,
                 cache_root: str | Path | None = None) -> pd.DataFrame:
    """The table of the module docstring for the fine-tuning runs under ``out_dir``. Damaged
    run directories (:mod:`early_exposure.runs`) are left out and listed in
    ``table.attrs["skipped"]`` (``"<dir>: <what is wrong>"``). ``baselines``: the n-gram
    baselines (default :func:`run_set_baselines`; when they cannot be had, the baseline
    columns are NaN and ``table.attrs["baselines_error"]`` says why)."""
    tree = RunTree(out_dir)
    reader = RunReader()
    err = None
    if baselines is None:
        try:
            baselines = run_set_baselines(out_dir, cache_root=cache_root) if tree.run_dirs("ft") else {}
        except ValueError as exc:
            baselines, err = {}, str(exc)
    from lm_experiments.analysis.ngram import baseline_columns

    base = {c: float("nan") for c in NGRAM_COLUMNS}
    base.update({k: v for k, v in baseline_columns({r: baselines[r] for r in ROLES if r in baselines}).items()
                 if k in base})
    pre_info: dict[str, dict[str, Any]] = {}
    for d in tree.run_dirs("pre"):
        rec = reader.run(d)
        if rec is None:
            continue
        mdir = d / "model"
        tokens = (rec.get("train") or {}).get("tokens")
        pre_info[rec["pre_id"]] = {"n_params": count_params(mdir), "vocab": _vocab(mdir), "tokens": tokens,
                                   "losses": rec.get("losses", {}), "seed": rec.get("seed"),
                                   "mix_fraction": rec.get("mix_fraction")}
    # reference of the forgetting fraction: D_post loss of the unmixed theta_pre, per seed
    ref_by_seed = {v["seed"]: _f(v["losses"], "L_post_stage1") for v in pre_info.values() if v["mix_fraction"] == 0}
    post_info = {}
    for d in tree.run_dirs("post"):
        rec = reader.run(d)
        if rec is not None:
            post_info[rec["upstream_id"]] = rec
    rows = []
    for d in tree.run_dirs("ft"):
        rec = reader.run(d)
        if rec is None:
            continue
        pre = pre_info.get(rec.get("pre_id"), {})
        post = post_info.get(rec.get("upstream_id"), {})
        L = rec.get("losses", {})
        n, v, tokens = pre.get("n_params"), pre.get("vocab"), pre.get("tokens")
        lnv = math.log(v) if v else float("nan")
        l_pp, l_ppost, l_pft = _f(L, "L_pre_stage1"), _f(L, "L_pre_stage2"), _f(L, "L_pre")
        l_im, l_ret, l_p1 = _f(L, "L_im"), _f(L, "L_ret"), _f(L, "L_post_stage1")
        ref = min(ref_by_seed.get(rec.get("seed"), float("nan")), lnv)
        gain = lnv - l_pp
        b_pre = base["ngram_bigram_pre"]
        bgain = b_pre - l_pp
        l_ft = _f(L, "L_ft")
        fl = rec.get("floors") or {}
        fpre, fpost, fft = _f(fl, "pre"), _f(fl, "post"), _f(fl, "ft")
        cm = bool(rec.get("compute_matched"))
        stopped = None if cm else (post.get("train") or {}).get("stopped_early")
        rows.append({
            "run_id": rec.get("run_id"), "upstream_id": rec.get("upstream_id"), "pipeline": rec.get("pipeline"),
            "method": rec.get("method"), "mix_fraction": rec.get("mix_fraction"), "compute_matched": cm,
            "seed": rec.get("seed"), "ft_lr": rec.get("ft_lr"), "stage1_tokens": tokens, "n_params": n,
            "tokens_per_param": tokens / n if tokens and n else float("nan"), "vocab_size": v,
            "L_pre_pre": l_pp, "L_pre_pre_over_lnV": l_pp / lnv, "L_pre_post": l_ppost,
            "dL_pre_post": l_ppost - l_pp, "L_pre_ft": l_pft, "dL_pre_ft": l_pft - l_ppost,
            "L_pre_ft_over_lnV": l_pft / lnv,
            "kept_post": (b_pre - l_ppost) / bgain if bgain > 0 else float("nan"),
            "kept_ft": (b_pre - l_pft) / bgain if bgain > 0 else float("nan"),
            "kept_post_uniform": (lnv - l_ppost) / gain if gain > 0 else float("nan"),
            "kept_ft_uniform": (lnv - l_pft) / gain if gain > 0 else float("nan"),
            "stopped_early": stopped, "L_im": l_im, "L_ret": l_ret, "ret_minus_im": l_ret - l_im, "L_ft": l_ft,
            "L_post_stage1": l_p1,
            "forgetting": (l_ret - l_im) / (ref - l_im) if ref - l_im > 0 else float("nan"),
            "margin_pre": b_pre - l_pp, "margin_post": base["ngram_bigram_post"] - l_im,
            "margin_ft": base["ngram_bigram_ft"] - l_ft, **base,
            "floor_pre": fpre, "floor_post": fpost, "floor_ft": fft,
            "to_floor_pre": l_pp - fpre, "to_floor_post": l_im - fpost, "to_floor_ft": l_ft - fft,
            **_items(rec),
            "diverged": bool(rec.get("diverged")),
        })
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    table.attrs["skipped"] = reader.skipped
    if err:
        table.attrs["baselines_error"] = err
    return table


def write_regime(out_dir: str | Path, *, cache_root: str | Path | None = None,
                 table: pd.DataFrame | None = None) -> Path:
    """``OUT/regime.csv`` (atomically)."""
    p = RunTree(out_dir).regime
    table = regime_table(out_dir, cache_root=cache_root) if table is None else table
    atomic_write_bytes(p, table.to_csv(index=False).encode())
    return p


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="python -m paper_checks.lm_regime",
                description="Regime table of an LM results directory (writes DIR/regime.csv).")
    add_results(ap, "an lm_experiments run --out directory (regime.csv is written into it)")
    ap.add_argument("--cache", default=None, metavar="DIR",
                    help="data cache to rebuild the n-gram baselines from (as lm_experiments run --cache)")
    add_version(ap)
    return ap


def _main(argv: list[str] | None) -> int:
    a = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    a.out = str(check_input_dir("--results", results_arg(a)))
    if not RunTree(a.out).looks_like_run_tree():
        raise ConfigError("--results", f"{a.out} is not an LM results directory (no frontier.csv, manifest.json "
                          "or runs/); give the --out of `early-exposure run` (python -m lm_experiments run)")
    df = regime_table(a.out, cache_root=a.cache)
    for s in df.attrs.get("skipped", []):
        print(f"skipped damaged run {s}", file=sys.stderr)
    if df.attrs.get("baselines_error"):
        print(f"no n-gram baselines: {df.attrs['baselines_error']}", file=sys.stderr)
    cols = ["method", "mix_fraction", "compute_matched", "seed", "ft_lr", "tokens_per_param", "margin_pre",
            "margin_post", "margin_ft", "kept_post", "kept_ft", "stopped_early", "L_im", "L_ret", "forgetting"]
    if df["em_stage2_test"].notna().any():
        cols += ["to_floor_post", "em_stage1_test", "em_stage2_test", "em_stage3_test"]
    with pd.option_context("display.width", 250, "display.max_rows", 500):
        print(df[cols].to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    print(f"wrote {write_regime(a.out, table=df)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point (``python -m paper_checks.lm_regime``, ``early-exposure regime``): bad input -> one line, exit 2."""
    return cli_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
