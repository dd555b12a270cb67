"""Per-example test losses of an LM output directory, for intervals that carry test-set
sampling (a seed x document bootstrap; :func:`early_exposure.stats.seed_doc_bootstrap`).

Every fine-tuning run keeps ``runs/<run_id>/eval.npz`` with its per-example losses:
``post_loss_stage2`` (theta_post on D_post: L_im), ``post_loss_stage3`` (theta_ft on
D_post: L_ret), ``ft_loss_stage3`` (L_ft), ``pre_loss_stage3`` (L_pre). Every run is scored
on the same test sets, so one bootstrap draw of examples per test set is shared by all runs.
A table without them (the theory side, or runs without eval.npz) gets seed-only intervals,
and the evidence says so.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from early_exposure.frontier import VIEWS
from early_exposure.pareto import loss_gap_at_matched_x
from early_exposure.runs import RunTree
from early_exposure.stats import Interval, seed_doc_bootstrap

#: frontier column -> eval.npz key
KEYS = {"L_im": "post_loss_stage2", "L_ret": "post_loss_stage3", "L_ft": "ft_loss_stage3", "L_pre": "pre_loss_stage3"}


class Examples:
    """Lazy reader of the ``eval.npz`` files under ``run_dir/runs``."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self._cache: dict[str, dict[str, np.ndarray] | None] = {}

    @classmethod
    def from_dir(cls, run_dir: Path | None) -> "Examples | None":
        pattern = RunTree(".").ft_eval("*").as_posix()  # runs/*/eval.npz
        if run_dir is None or not any(Path(run_dir).glob(pattern)):
            return None
        return cls(Path(run_dir))

    def run(self, run_id: str) -> dict[str, np.ndarray] | None:
        if run_id not in self._cache:
            p = RunTree(self.run_dir).ft_eval(str(run_id))
            try:
                z = np.load(p)
                self._cache[run_id] = {c: np.asarray(z[k], dtype=np.float64) for c, k in KEYS.items() if k in z}
            except (OSError, ValueError, KeyError):
                self._cache[run_id] = None
        return self._cache[run_id]

    def gap_interval(self, a: pd.DataFrame, b: pd.DataFrame, view: str, seeds: list[Any], opts: Any) -> Interval | None:
        """Seed x document bootstrap interval of the mean over seeds of the per-seed gap at
        matched first loss (baseline rows ``a``, candidate rows ``b``); None when some run of
        those seeds lacks per-example losses or the runs' test sets differ in size."""
        x, y = VIEWS[view]
        runs = {}
        for arm, rows in (("a", a), ("b", b)):
            for s, g in rows.loc[rows["seed"].isin(seeds)].groupby("seed"):
                runs[(arm, s)] = list(g["run_id"])
        mats: dict[str, dict[str, np.ndarray]] = {x: {}, y: {}}
        for rids in runs.values():
            for rid in rids:
                ex = self.run(rid)
                if ex is None or x not in ex or y not in ex:
                    return None
                mats[x][rid], mats[y][rid] = ex[x], ex[y]
        sizes = []
        for col in (x, y):
            lens = {len(v) for v in mats[col].values()}
            if len(lens) != 1:
                return None
            sizes.append(lens.pop())

        def stat(ss: list[Any], docs: tuple[np.ndarray, np.ndarray]) -> float:
            gaps = []
            for s in ss:
                pts = {arm: np.array([[mats[x][r][docs[0]].mean(), mats[y][r][docs[1]].mean()]
                                      for r in runs[(arm, s)]]) for arm in ("a", "b")}
                gaps.append(loss_gap_at_matched_x(pts["a"], pts["b"])["gap"])
            return float(np.mean(gaps))

        return seed_doc_bootstrap(stat, list(seeds), sizes, n_boot=opts.n_boot, level=opts.level, seed=opts.seed)

    def per_seed_interval(self, groups: dict[Any, dict[float, list[str]]], col: str,
                          fn: Callable[[pd.Series], float], opts: Any, level: float | None = None) -> Interval | None:
        """Seed x document bootstrap interval of the mean over seeds of ``fn(series)``, where a
        seed's series maps each key (lambda) to the mean of ``col`` over its runs' examples;
        ``groups``: seed -> key -> run ids. None when some run lacks per-example losses or the
        runs' test sets differ in size."""
        arrs: dict[str, np.ndarray] = {}
        for by_key in groups.values():
            for rids in by_key.values():
                for rid in rids:
                    ex = self.run(rid)
                    if ex is None or col not in ex:
                        return None
                    arrs[rid] = ex[col]
        lens = {len(v) for v in arrs.values()}
        if len(lens) != 1:
            return None

        def stat(ss: list[Any], docs: np.ndarray) -> float:
            vals = []
            for s in ss:
                ser = pd.Series({k: float(np.mean([arrs[r][docs].mean() for r in rids]))
                                 for k, rids in sorted(groups[s].items())})
                vals.append(fn(ser))
            return float(np.mean(vals))

        return seed_doc_bootstrap(stat, sorted(groups), lens.pop(), n_boot=opts.n_boot,
                                  level=opts.level if level is None else level, seed=opts.seed)
