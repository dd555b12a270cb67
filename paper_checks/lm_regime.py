"""Regime diagnostics of an LM results directory: is the testbed in the paper's regime?

One row per fine-tuning run, read from the run tree (:class:`early_exposure.runs.RunTree`:
the pre, post and fine-tuning runs' ``result.json`` and theta_pre's safetensors header),
so it works on any finished or partial sweep::

    python -m paper_checks.lm_regime OUT        # print the table (and write OUT/regime.csv)

Columns (losses in nats on the reported held-out split; V = vocabulary size):

- ``stage1_tokens``, ``n_params`` (theta_pre's parameters, tied weights once),
  ``tokens_per_param``, ``vocab_size``;
- ``L_pre_pre`` = L(theta_pre; D_pre) and ``L_pre_pre_over_lnV``;
- ``L_pre_post`` = L(theta_post; D_pre), ``dL_pre_post`` (its change through stage 2),
  ``L_pre_ft`` = L(theta_ft; D_pre), ``dL_pre_ft`` (its change through stage 3),
  ``L_pre_ft_over_lnV``;
- ``kept_post`` / ``kept_ft``: the fraction of pretraining's gain over the uniform
  predictor still held after stage 2 / stage 3, (ln V - L_pre(theta)) / (ln V - L_pre_pre)
  (1 = nothing lost, 0 = back to uniform, negative = worse than uniform);
- ``stopped_early`` (stage 2; None for compute-matched runs, one pass by design);
- ``L_im``, ``L_ret``, ``ret_minus_im``, ``L_post_stage1`` (D_post loss of theta_pre) and
  ``forgetting`` = (L_ret - L_im) / (ref - L_im) with ref = min(L_post_stage1 of the
  unmixed theta_pre of the same seed, ln V): the share of the post-training gain that
  fine-tuning takes back (0 = none, 1 = back to a model that never saw D_post).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from early_exposure.io import atomic_write_bytes
from early_exposure.runs import RunReader, RunTree

COLUMNS = ("run_id", "upstream_id", "pipeline", "method", "mix_fraction", "compute_matched", "seed", "ft_lr",
           "stage1_tokens", "n_params", "tokens_per_param", "vocab_size", "L_pre_pre", "L_pre_pre_over_lnV",
           "L_pre_post", "dL_pre_post", "L_pre_ft", "dL_pre_ft", "L_pre_ft_over_lnV", "kept_post", "kept_ft",
           "stopped_early", "L_im", "L_ret", "ret_minus_im", "L_post_stage1", "forgetting", "diverged")


def _read(p: Path) -> dict[str, Any] | None:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


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


def regime_table(out_dir: str | Path) -> pd.DataFrame:
    """The table of the module docstring for the fine-tuning runs under ``out_dir``. Damaged
    run directories (:mod:`early_exposure.runs`) are left out and listed in
    ``table.attrs["skipped"]`` (``"<dir>: <what is wrong>"``)."""
    tree = RunTree(out_dir)
    reader = RunReader()
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
            "kept_post": (lnv - l_ppost) / gain if gain > 0 else float("nan"),
            "kept_ft": (lnv - l_pft) / gain if gain > 0 else float("nan"),
            "stopped_early": stopped, "L_im": l_im, "L_ret": l_ret, "ret_minus_im": l_ret - l_im,
            "L_post_stage1": l_p1,
            "forgetting": (l_ret - l_im) / (ref - l_im) if ref - l_im > 0 else float("nan"),
            "diverged": bool(rec.get("diverged")),
        })
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    table.attrs["skipped"] = reader.skipped
    return table


def write_regime(out_dir: str | Path) -> Path:
    """``OUT/regime.csv`` (atomically)."""
    p = RunTree(out_dir).regime
    atomic_write_bytes(p, regime_table(out_dir).to_csv(index=False).encode())
    return p


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m paper_checks.lm_regime",
                                 description="Regime table of an LM results directory (writes OUT/regime.csv).")
    ap.add_argument("out", metavar="OUT", help="an lm_experiments run --out directory")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if not Path(a.out).is_dir():
        print(f"OUT: {a.out} is not a directory (give an lm_experiments run --out directory)", file=sys.stderr)
        return 2
    args = [a.out]
    df = regime_table(args[0])
    for s in df.attrs.get("skipped", []):
        print(f"skipped damaged run {s}", file=sys.stderr)
    cols = ["method", "mix_fraction", "compute_matched", "seed", "ft_lr", "tokens_per_param", "L_pre_pre_over_lnV",
            "kept_post", "kept_ft", "stopped_early", "L_im", "L_ret", "forgetting"]
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(df[cols].to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    print(f"wrote {write_regime(args[0])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
