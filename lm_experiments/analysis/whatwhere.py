"""What is forgotten (items) and where (layer rollback), on an LM results directory.

    python -m lm_experiments.analysis.whatwhere OUT [--rollback-arms base|all] [--rollback-lr LR] [--k 4] [--threads 1]

``OUT`` is an ``lm_experiments run --out`` directory (one pipeline). Everything is read from
it (configs, checkpoints, the data cache); nothing there is changed. Written under
``OUT/whatwhere/`` (atomically; docs/whatwhere.md):

- ``items.json``: the item sets (roles, kinds, n, k, thresholds, items left out, families),
  timings and what was restricted;
- ``transitions.csv``: one row per (checkpoint pair, item set) of every fine-tuning run:
  pair ``pre->post`` (theta_pre -> theta_post, one per upstream, ``ft_lr`` NaN) or
  ``post->ft``; the four counts ``n_1->0`` ..., ``forgetting``, ``backward_transfer`` (and
  relative), ``forgetting_chance_adjusted`` / ``backward_transfer_chance_adjusted`` for
  k-way sets (:mod:`lm_experiments.analysis.items`);
- ``families.csv``: the same per instruction family (``post->ft``, instruction sets);
- ``forgetting_map.csv``: per (method, lambda, compute-matched, ft_lr, pair, set) the mean
  over seeds of every rate with its Student-t 95% interval (``early_exposure.stats.t_interval``)
  and the number of seeds;
- ``agreement.csv``: transitions that hold in every seed (:func:`lm_experiments.analysis.items.agreement`),
  and ``protection.csv``: per arm pair (unmixed X vs mixed X, same ft lr) the items that the
  unmixed arm forgets (1->0) and the mixed arm keeps (1->1), in every seed and per seed, with
  the mean Jaccard overlap of the per-seed protected sets across seed pairs;
- ``rollback.csv`` (per run and unit) and ``depth_profile.csv`` (mean over seeds with
  intervals): the share of the L_ret increase undone by restoring a unit to theta_post,
  ``(L_ret(ft) - L_ret(rb)) / (L_ret(ft) - L_im)``, the share of the post->ft 1->0 k-way
  items (``share_items_restored``) and answer items (``share_answers_restored``) right
  again, the cost in L_ft ``L_ft(rb) - L_ft(ft)`` and as a share of
  stage 3's L_ft gain; ``none`` and ``all`` are evaluated too and must reproduce the run's
  recorded L_ret and (L_im, L_ft after stage 2) (``reproduced_*`` columns);
- ``update_geometry.csv``: per fine-tuning run and unit, the relative update norms of stage
  2 and stage 3, their cosine and the principal-angle overlaps (:mod:`lm_experiments.analysis.whatwhere_rollback`).

Fine-tuned models are read from ``runs/<id>/model`` (``ft.save_checkpoints: true``); when a
run did not save its model it is re-fine-tuned into a temporary directory with
:func:`lm_experiments.protocol.stages.run_ft` from its record (deterministic; the recomputed L_ret is
compared with the recorded one and the difference written).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from early_exposure.cliopts import add_results, add_version, results_arg
from early_exposure.configs import check_input_dir
from early_exposure.errors import ConfigError, Parser, cli_main
from early_exposure.io import atomic_write_bytes, atomic_write_json, stable_hash
from early_exposure.runs import RunTree
from lm_experiments.analysis import items as it
from lm_experiments.analysis.results import Results, ResultsError, load_checkpoint, open_results

from lm_experiments.analysis.whatwhere_tables import (  # noqa: F401 - RATE_METRICS, RUN_KEYS: re-exported
    GROUP_KEYS, RATE_METRICS, RUN_KEYS, agreement_rows, correctness, seed_map, thresholds, transition_rows,
)


# ---- item suite --------------------------------------------------------------------------------
@dataclasses.dataclass
class RoleItems:
    role: str
    corpus: str
    kind: str                               # "instruction" | "document" | "exact" (synthetic world)
    mc: it.MCSet | None = None
    exact: list[Any] | None = None          # the synthetic world's exact-match items (held-out phrasing)
    blocks: np.ndarray | None = None
    doc_ids: np.ndarray | None = None
    unparsed: int = 0
    mc_items: int | None = None             # items whose k-way form is scored (the first ones, hash order)

    @property
    def n_mc(self) -> int:
        return self.mc.n if self.mc_items is None else min(self.mc.n, self.mc_items)


def test_documents(res: Results, role: str) -> list[tuple[str, str]]:
    """(sha256 hex, text) of the role's test-split documents, in hash order."""
    from lm_experiments.data import sources
    from lm_experiments.data.prepare import default_cache_root
    from lm_experiments.data.shards import _digest, cut_document

    split = res.prepared.splits[role]
    hashes = split.test_doc_hashes if split.test is not None else split.val_doc_hashes
    spec = getattr(res.cfg.data, role)
    cache = res.cache_root or default_cache_root()
    found = {}
    for d in sources.iter_documents(spec, f"data.{role}", cache):
        for piece in (cut_document(d, res.cfg.data.max_doc_chars) if res.cfg.data.max_doc_chars else [d]):
            h = _digest(piece).hex()
            if h in hashes:
                found[h] = piece
    return sorted(found.items())


def build_suite(res: Results, k: int = it.DEFAULT_K, seed: int = 0, mc_items: int | None = None
                ) -> dict[str, RoleItems]:
    tok = res.prepared.tokenizer
    eos = int(tok.eos_token_id)
    seq_len = int(res.prepared.splits["pre"].train.shape[1])

    def encode(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    suite = {}
    syn = getattr(res.cfg.data, "synthetic", None)
    for role in ("pre", "post", "ft"):
        name = getattr(res.cfg.data, role).name
        fams = it.INSTRUCTION_CORPORA.get(name)
        if syn is not None and role in ("post", "ft"):  # the capability: queries with one right answer
            from lm_experiments.data import synthetic as S
            from lm_experiments.data import synthetic_items as SI

            suite[role] = RoleItems(role, name, "exact", exact=SI.synthetic_items(S.build_world(syn), "test", role))
        elif fams is not None:
            items, bad = it.documents_of(test_documents(res, role), fams)
            suite[role] = RoleItems(role, name, "instruction", mc=it.build_mc(items, encode, eos, seq_len, k=k,
                                                                               seed=seed), unparsed=bad,
                                     mc_items=mc_items)
        else:
            blocks = np.asarray(res.prepared.splits[role].report)
            suite[role] = RoleItems(role, name, "document", blocks=blocks, doc_ids=it.document_ids(blocks, eos))
    return suite


#: bump when measure_items changes what it records (the item cache is keyed by it)
ITEMS_VERSION = 2


def suite_hash(suite: dict[str, RoleItems]) -> str:
    ident: dict[str, Any] = {"version": ITEMS_VERSION}
    for role, ri in suite.items():
        if ri.kind == "exact":
            ident[role] = stable_hash([[list(x.prompt), list(x.answer), x.block] for x in ri.exact], 16)
        elif ri.kind == "instruction":
            ident[role] = [ri.mc.k, ri.mc_items, [x.doc for x in ri.mc.items], ri.mc.answer.tolist(),
                           stable_hash([s.tolist() for s in ri.mc.seqs], 16)]
        else:
            ident[role] = stable_hash(ri.blocks.tolist(), 16)
    return stable_hash(ident, 16)


def measure_items(model, suite: dict[str, RoleItems], *, batch_size: int = 32, min_tokens: int = 8,
                  tokenizer: Any = None) -> dict[str, np.ndarray]:
    """Raw per-item values of one model: ``<role>.mc`` / ``.em`` (bool) and ``.answer_ll``
    for instruction roles, ``<role>.em`` (bool: greedy answer == the one right answer) for the
    synthetic world's exact-match items (``tokenizer`` needed), ``<role>.doc_acc`` /
    ``.block_acc`` (accuracies) for the others."""
    out = {}
    for role, ri in suite.items():
        if ri.kind == "exact":
            from lm_experiments.data import synthetic_items as SI

            out[f"{role}.em"] = SI.exact_match(model, ri.exact, tokenizer).astype(bool)
        elif ri.kind == "instruction":
            s = it.score_mc(model, ri.mc, batch_size=batch_size, mc_items=ri.mc_items)
            out[f"{role}.mc"] = s["mc"][:ri.n_mc]
            out[f"{role}.em"], out[f"{role}.answer_ll"] = s["em"], s["answer_ll"]
            out[f"{role}.answer_acc"] = s["answer_acc"]
        else:
            corr = it.block_token_correct(model, ri.blocks, batch_size=16)
            out[f"{role}.doc_acc"] = it.document_accuracy(corr, ri.doc_ids, min_tokens=min_tokens)[1]
            out[f"{role}.block_acc"] = corr.mean(axis=1)
    return out


# ---- models -----------------------------------------------------------------------------------------
def regenerate_ft(res: Results, run_ids: list[str], work: Path) -> dict[str, Path]:
    """Re-fine-tune runs that did not save their model (``ft.save_checkpoints`` off) into
    ``work`` with :func:`lm_experiments.protocol.stages.run_ft` from their plan records; returns
    run_id -> model dir and writes ``regenerated_L_ret_diff`` into the run records."""
    from lm_experiments.protocol.plan import make_plan
    from lm_experiments.protocol.prepared import data_sizes
    from lm_experiments.protocol.context import StageContext
    from lm_experiments.protocol.stages import run_ft

    cfg = dataclasses.replace(res.cfg, ft=dataclasses.replace(res.cfg.ft, save_checkpoints=True))
    plan = make_plan(res.cfg, data_sizes(res.prepared), res.prepared.fingerprint)
    recs = {r.run_id: r for r in plan.ft}
    work.mkdir(parents=True, exist_ok=True)
    for stage, idents in (("pre", res.pre), ("post", res.post)):  # upstream runs stay where they are: a link each
        for ident in idents:
            link = RunTree(work).run_dir(stage, ident)
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(res.tree.run_dir(stage, ident).resolve())
    import torch

    ctx = StageContext(cfg, res.prepared, work, torch.device("cpu"), res.data_used, progress=False)
    out = {}
    for rid in run_ids:
        if rid not in recs:
            continue
        sr = run_ft(ctx, recs[rid])
        res.ft[rid]["regenerated_L_ret_diff"] = abs(sr.losses["L_ret"] - res.ft[rid]["losses"]["L_ret"])
        out[rid] = RunTree(work).model("ft", rid)
    return out


# ---- tables -------------------------------------------------------------------------------------------
def _csv(df: pd.DataFrame, path: Path) -> Path:
    return atomic_write_bytes(path, df.to_csv(index=False).encode())


def _stamp(res: Results, key: str) -> str:
    """What identifies a checkpoint's evaluation in the cache: its run's result.json (size, mtime)."""
    stage, ident = key.split(":", 1)
    p = RunTree.record(res.tree.run_dir(stage, ident))
    st = p.stat()
    return f"{st.st_size}-{int(st.st_mtime)}"


def evaluate_items(res: Results, suite: dict[str, RoleItems], models: dict[str, Path], cache_path: Path
                   ) -> dict[str, dict[str, np.ndarray]]:
    """Raw item values of every model (``pre:<id>`` / ``post:<id>`` / ``ft:<id>`` -> dir), read
    from / added to the cache file (keyed by the item suite's hash and the run's record)."""
    sh = suite_hash(suite)
    cache: dict[str, np.ndarray] = {}
    if cache_path.is_file():
        with np.load(cache_path) as z:
            cache = {kk: z[kk] for kk in z.files}
    by_ident: dict[str, dict[str, np.ndarray]] = {}
    for kk, v in cache.items():
        ident, name = kk.split("||", 1)
        by_ident.setdefault(ident, {})[name] = v
    raw: dict[str, dict[str, np.ndarray]] = {}
    for key, d in sorted(models.items()):
        ident = f"{sh}|{key}|{_stamp(res, key)}"
        if ident in by_ident:
            raw[key] = by_ident[ident]
            continue
        raw[key] = measure_items(load_checkpoint(d), suite, tokenizer=res.prepared.tokenizer)
        by_ident[ident] = raw[key]
    keep = {f"{i}||{n}": v for i, vals in by_ident.items() if i.startswith(sh) for n, v in vals.items()}
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **keep)
    atomic_write_bytes(cache_path, buf.getvalue())
    return raw


def select_runs(res: Results, include_cm: bool, lrs: list[float] | str | None) -> list[float]:
    """Keep the fine-tuning runs of the analysis (in place) and return their lrs: compute-matched
    arms only with ``include_cm``; the learning rates ``lrs`` (``None``: the largest, where
    fine-tuning forgets most; ``"all"``: every one)."""
    every = sorted({float(r["ft_lr"]) for r in res.ft.values()})
    keep = every if lrs == "all" else (every[-1:] if lrs is None else [float(x) for x in lrs])
    res.ft = {rid: r for rid, r in res.ft.items()
              if (include_cm or not r.get("compute_matched"))
              and any(math.isclose(float(r["ft_lr"]), x) for x in keep)}
    return keep


def analyse(out: Path, *, k: int = it.DEFAULT_K, rollback_arms: str = "base", rollback_lr: float | None = None,
            tau: float | None = None, include_cm: bool = False, lrs: list[float] | str | None = None,
            all_units: bool = False, mc_items: int | None = 100,
            cache_root: Path | None = None, log=print) -> dict[str, Any]:
    """Run the whole analysis on ``out`` and write ``out/whatwhere`` (module docstring)."""
    from lm_experiments.analysis.whatwhere_rollback import where_tables

    t0 = time.perf_counter()
    clock = {}
    res = open_results(out, cache_root)
    lrs_used = select_runs(res, include_cm, lrs)
    wdir = RunTree(out).whatwhere
    wdir.mkdir(parents=True, exist_ok=True)
    suite = build_suite(res, k=k, mc_items=mc_items)
    clock["suite"] = time.perf_counter() - t0
    log(f"[whatwhere] {res.pipeline}: {len(res.ft)} fine-tuning runs; item sets built in {clock['suite']:.1f} s")
    missing = [rid for rid in res.ft if not res.model_dir("ft", rid).is_dir()]
    with tempfile.TemporaryDirectory(prefix="whatwhere-") as tmp:
        ft_dirs = {rid: res.model_dir("ft", rid) for rid in res.ft if rid not in missing}
        t = time.perf_counter()
        if missing:
            log(f"[whatwhere] {len(missing)} runs saved no theta_ft (ft.save_checkpoints off): re-fine-tuning them")
            ft_dirs.update(regenerate_ft(res, missing, Path(tmp)))
        clock["regenerate"] = time.perf_counter() - t
        t = time.perf_counter()
        models = {f"pre:{r['pre_id']}": res.model_dir("pre", r["pre_id"]) for r in res.ft.values()}
        models.update({f"post:{r['upstream_id']}": res.model_dir("post", r["upstream_id"]) for r in res.ft.values()})
        models.update({f"ft:{rid}": d for rid, d in ft_dirs.items()})
        raw = evaluate_items(res, suite, models, wdir / "item_cache.npz")
        clock["items"] = time.perf_counter() - t
        t = time.perf_counter()
        tau_used = thresholds(list(raw.values()), tau)
        corr = {kk: correctness(v, tau_used) for kk, v in raw.items()}
        rows, fam_rows = transition_rows(res, corr, suite, k)
        trans, fam = pd.DataFrame(rows), pd.DataFrame(fam_rows)
        _csv(trans, wdir / "transitions.csv")
        _csv(fam, wdir / "families.csv")
        _csv(seed_map(trans, GROUP_KEYS, RATE_METRICS), wdir / "forgetting_map.csv")
        if not fam.empty:
            _csv(seed_map(fam, ["pipeline", "method", "mix_fraction", "compute_matched", "ft_lr", "set", "family"],
                          RATE_METRICS), wdir / "families_map.csv")
        agree, protect = agreement_rows(res, corr)
        _csv(pd.DataFrame(agree), wdir / "agreement.csv")
        _csv(pd.DataFrame(protect), wdir / "protection.csv")
        clock["tables"] = time.perf_counter() - t
        t = time.perf_counter()
        where = where_tables(res, suite, corr, ft_dirs, rollback_arms=rollback_arms, rollback_lr=rollback_lr,
                             write=lambda df, name: _csv(df, wdir / name), seed_map=seed_map, log=log,
                             all_units=all_units, tau=tau_used)
        clock["where"] = time.perf_counter() - t
    clock["total"] = time.perf_counter() - t0
    info = {"pipeline": res.pipeline, "results": str(out), "k": k, "tau": tau_used,
            "tau_rule": "given" if tau is not None else
            "correct when accuracy > tau; tau = median over every checkpoint evaluated (pooled)",
            "sets": {role: ({"corpus": ri.corpus, "kind": ri.kind, "n_items": ri.mc.n, "n_k_way": ri.n_mc,
                             "left_out": ri.mc.dropped,
                             "unparsed": ri.unparsed,
                             "families": {f: int((ri.mc.families() == f).sum()) for f in sorted(set(ri.mc.families()))}}
                            if ri.kind == "instruction" else
                            {"corpus": ri.corpus, "kind": ri.kind, "n_items": len(ri.exact),
                             "phrasing": "held-out (test)"}
                            if ri.kind == "exact" else
                            {"corpus": ri.corpus, "kind": ri.kind, "n_blocks": int(ri.blocks.shape[0]),
                             "n_documents": int(len(next(iter(raw.values()))[f"{role}.doc_acc"])) if raw else 0})
                     for role, ri in suite.items()},
            "runs": len(res.ft), "compute_matched_included": include_cm, "ft_lrs": lrs_used,
            "models_evaluated": len(models), "regenerated_ft": len(missing),
            "regenerated_L_ret_max_diff": max([res.ft[x].get("regenerated_L_ret_diff", 0.0) for x in missing],
                                              default=0.0),
            "rollback": where, "seconds": {kk: round(v, 2) for kk, v in clock.items()}}
    atomic_write_json(wdir / "items.json", info)
    log(f"[whatwhere] wrote {wdir} in {clock['total']:.1f} s ({info['seconds']})")
    return info


def build_parser() -> argparse.ArgumentParser:
    """The command line of :func:`main`."""
    ap = Parser(prog="python -m lm_experiments.analysis.whatwhere",
                description="What is forgotten (items) and where (layer rollback) on an LM run directory "
                            "(writes DIR/whatwhere/).")
    add_results(ap, "an lm_experiments run --out directory (the tables go to its whatwhere/)")
    ap.add_argument("--k", type=int, default=it.DEFAULT_K, help="options per multiple-choice item (default 4)")
    ap.add_argument("--rollback-arms", choices=("base", "all"), default="base",
                    help="rollback on the base arms (unmixed, mixed) or every non-compute-matched arm")
    ap.add_argument("--rollback-lr", type=float, default=None, help="fine-tuning lr of the rolled-back runs "
                    "(default: the largest)")
    ap.add_argument("--tau", type=float, default=None, help="accuracy threshold of per-document items "
                    "(default: pooled median over every checkpoint)")
    ap.add_argument("--include-cm", action="store_true", help="also the compute-matched arms (more models)")
    ap.add_argument("--lrs", nargs="+", default=None, help="fine-tuning lrs to analyse, or 'all' "
                    "(default: the largest, where fine-tuning forgets most; it is also the rollback lr)")
    ap.add_argument("--mc-items", default="100", help="items whose k-way form is scored (k forward passes "
                    "each; exact match and answer items use every item); 'all' for every one (default 100)")
    ap.add_argument("--all-units", action="store_true", help="roll back every unit (also each layer's "
                    "attention / mlp / norms, not only whole layers and module groups)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--cache", default=None, help="data cache directory")
    add_version(ap)
    return ap


def _main(argv: list[str] | None) -> int:
    a = build_parser().parse_args(argv)
    a.out = str(check_input_dir("--results", results_arg(a)))
    if a.k < 2:
        raise ConfigError("--k", f"must be >= 2, got {a.k}")
    try:
        lrs = None if a.lrs is None else ("all" if a.lrs == ["all"] else [float(x) for x in a.lrs])
    except ValueError:
        raise ConfigError("--lrs", "numbers or 'all'") from None
    try:
        mc_items = None if a.mc_items == "all" else int(a.mc_items)
        if mc_items is not None and mc_items < 1:
            raise ValueError
    except ValueError:
        raise ConfigError("--mc-items", "a positive integer or 'all'") from None
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(max(1, a.threads))
    try:  # numpy's BLAS / OpenMP pools too (they may spin a thread per core)
        from threadpoolctl import threadpool_limits

        threadpool_limits(max(1, a.threads))
    except ImportError:
        pass
    try:
        analyse(Path(a.out), k=a.k, rollback_arms=a.rollback_arms, rollback_lr=a.rollback_lr, tau=a.tau,
                include_cm=a.include_cm, lrs=lrs, all_units=a.all_units, mc_items=mc_items,
                cache_root=Path(a.cache) if a.cache else None)
    except ResultsError as exc:
        raise ConfigError("--results", str(exc)) from None
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point (``python -m lm_experiments.analysis.whatwhere``, ``early-exposure whatwhere``):
    bad input -> one line, exit 2."""
    return cli_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
