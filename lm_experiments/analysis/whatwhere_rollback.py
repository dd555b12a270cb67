"""Where in the network fine-tuning forgets: layer rollback, update norms, update overlap.

* **Rollback units** (:func:`rollback_units`): named sets of parameters of a decoder-only
  model (Llama layout: ``model.embed_tokens``, ``model.layers.<i>.{self_attn,mlp,*norm}``,
  ``model.norm``, ``lm_head``): ``embeddings`` (tied with the head when the model ties them:
  one tensor), ``layers.<i>`` and its ``.attention`` / ``.mlp`` / ``.norm`` parts,
  ``final_norm``, ``head`` (untied only), module groups over every layer (``attention``,
  ``mlp``, ``norm``), contiguous blocks of transformer layers from the bottom (``bottom.<k>``
  = layers 0..k-1) and the top (``top.<k>`` = layers L-k..L-1), ``all`` and ``none``. Units
  with the same parameter set are listed once (the first name wins).
* **Rollback** (:func:`rolled_back`): a copy of theta_ft whose unit's parameters are
  replaced by theta_post's. ``all`` is theta_post, ``none`` theta_ft, exactly (the same
  tensors), so their losses are those of the two checkpoints bit for bit.
* **Update norms and overlap** (:func:`update_geometry`): per unit, the relative update
  norm ``||theta_b - theta_a|| / ||theta_a||`` of stage 2 (theta_pre -> theta_post) and of
  stage 3 (theta_post -> theta_ft); the cosine of the two flattened updates (concatenated
  over the unit's tensors); and for every 2-D weight the overlap of the top-k left (output)
  and right (input) singular subspaces of the two updates, ``||U_2^T U_3||_F^2 / k`` = the
  mean squared cosine of the k principal angles (1 = same subspace, 0 = orthogonal), with
  k capped by the numerical rank of both updates; a unit's value is the mean over its
  matrices.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from early_exposure.interventions import BASE_METHODS
from lm_experiments.analysis.results import load_checkpoint
from lm_experiments.analysis.whatwhere_tables import RUN_KEYS

__all__ = ["rollback_units", "rolled_back", "rollback_profile", "update_cosine", "subspace_overlap",
           "update_geometry", "depth_order", "where_tables"]

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.(self_attn|mlp|input_layernorm|post_attention_layernorm)\.")


def _part(name: str) -> tuple[int | None, str]:
    m = _LAYER.search(name)
    if m:
        return int(m.group(1)), {"self_attn": "attention", "mlp": "mlp"}.get(m.group(2), "norm")
    if "embed_tokens" in name:
        return None, "embeddings"
    if "lm_head" in name:
        return None, "head"
    if name.endswith("norm.weight") or name.endswith("norm.bias"):
        return None, "final_norm"
    return None, "other"


def rollback_units(model: nn.Module) -> dict[str, list[str]]:
    """Unit name -> parameter names (``named_parameters``: a tied head is its embedding)."""
    names = [n for n, p in model.named_parameters() if torch.is_floating_point(p)]
    layers: dict[int, list[str]] = {}
    parts: dict[str, list[str]] = {}
    for n in names:
        i, part = _part(n)
        if i is None:
            parts.setdefault(part, []).append(n)
        else:
            layers.setdefault(i, []).append(n)
            parts.setdefault(f"layers.{i}.{part}", []).append(n)
            parts.setdefault(part if part != "norm" else "layer_norms", []).append(n)
    L = len(layers)
    units: dict[str, list[str]] = {"none": []}
    cand: list[tuple[str, list[str]]] = [("embeddings", parts.get("embeddings", []))]
    for i in sorted(layers):
        cand.append((f"layers.{i}", layers[i]))
        cand += [(f"layers.{i}.{p}", parts.get(f"layers.{i}.{p}", [])) for p in ("attention", "mlp", "norm")]
    cand += [("final_norm", parts.get("final_norm", [])), ("head", parts.get("head", [])),
             ("other", parts.get("other", [])), ("attention", parts.get("attention", [])),
             ("mlp", parts.get("mlp", [])), ("layer_norms", parts.get("layer_norms", []))]
    for k in range(1, L + 1):
        cand.append((f"bottom.{k}", [n for i in range(k) for n in layers[i]]))
    for k in range(1, L + 1):
        cand.append((f"top.{k}", [n for i in range(L - k, L) for n in layers[i]]))
    cand.append(("all", names))
    seen = {frozenset()}
    for u, ps in cand:
        key = frozenset(ps)
        if ps and key not in seen:
            seen.add(key)
            units[u] = ps
    return units


def depth_order(units: dict[str, list[str]]) -> list[str]:
    """The single-depth units present, in input-to-output order (the depth profile's x axis)."""
    layer = sorted({int(m.group(1)) for u in units for m in [re.fullmatch(r"layers\.(\d+)", u)] if m})
    return [u for u in ["embeddings", *[f"layers.{i}" for i in layer], "final_norm", "head"] if u in units]


def rolled_back(theta_ft: nn.Module, theta_post: nn.Module, names: list[str], work: nn.Module | None = None
                ) -> nn.Module:
    """theta_ft with the parameters ``names`` set to theta_post's (in ``work``, a model of
    the same architecture that is overwritten, or a fresh deep copy of theta_ft)."""
    import copy

    out = work if work is not None else copy.deepcopy(theta_ft)
    src_ft = dict(theta_ft.named_parameters(remove_duplicate=False))
    src_post = dict(theta_post.named_parameters(remove_duplicate=False))
    roll = set(names)
    with torch.no_grad():
        for n, p in out.named_parameters():
            p.copy_((src_post if n in roll else src_ft)[n])
    return out


def rollback_profile(theta_post: nn.Module, theta_ft: nn.Module, measure: Callable[[nn.Module], dict[str, Any]],
                     units: dict[str, list[str]] | None = None) -> dict[str, dict[str, Any]]:
    """``measure(model)`` of theta_ft rolled back unit by unit (every unit of
    :func:`rollback_units` unless ``units``): unit -> its measurements."""
    import copy

    units = rollback_units(theta_ft) if units is None else units
    work = copy.deepcopy(theta_ft)
    out = {}
    for u, names in units.items():
        out[u] = measure(rolled_back(theta_ft, theta_post, names, work))
    return out


# ---- update geometry --------------------------------------------------------------------------
def update_cosine(d2: list[torch.Tensor] | torch.Tensor, d3: list[torch.Tensor] | torch.Tensor) -> float:
    """Cosine of two updates flattened (lists are concatenated); NaN when either is zero."""
    a = torch.cat([t.detach().double().reshape(-1) for t in (d2 if isinstance(d2, list) else [d2])])
    b = torch.cat([t.detach().double().reshape(-1) for t in (d3 if isinstance(d3, list) else [d3])])
    na, nb = float(a.norm()), float(b.norm())
    if na == 0 or nb == 0:
        return float("nan")
    return float(a @ b) / (na * nb)


def _top_subspace(m: np.ndarray, k: int, rtol: float) -> tuple[np.ndarray, np.ndarray, int]:
    # torch's SVD honours torch.set_num_threads (numpy's BLAS may spawn a thread per core)
    u, s, vt = (x.numpy() for x in torch.linalg.svd(torch.from_numpy(np.ascontiguousarray(m)), full_matrices=False))
    rank = int((s > rtol * (s[0] if len(s) else 0)).sum()) if len(s) and s[0] > 0 else 0
    return u, vt.T, rank


def subspace_overlap(a: np.ndarray, b: np.ndarray, k: int = 8, rtol: float = 1e-6) -> dict[str, Any]:
    """Overlap of the top-k singular subspaces of two matrices of one shape: ``left`` (column
    space) and ``right`` (row space) = ||Q_a^T Q_b||_F^2 / k' (mean squared cosine of the
    principal angles), ``cos_left`` / ``cos_right`` the k' cosines (descending), ``k`` =
    k' = min(k, numerical rank of a, numerical rank of b) (singular values above ``rtol``
    times the largest); NaN overlaps when k' = 0."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two matrices of one shape, got {a.shape} and {b.shape}")
    ua, va, ra = _top_subspace(a, k, rtol)
    ub, vb, rb = _top_subspace(b, k, rtol)
    kk = min(k, ra, rb)
    if kk == 0:
        return {"left": float("nan"), "right": float("nan"), "cos_left": [], "cos_right": [], "k": 0}
    out: dict[str, Any] = {"k": kk}
    for side, qa, qb in (("left", ua, ub), ("right", va, vb)):
        cos = torch.linalg.svdvals(torch.from_numpy(qa[:, :kk].T @ qb[:, :kk])).numpy()
        cos = np.clip(cos, 0.0, 1.0)
        out[side] = float((cos ** 2).sum() / kk)
        out[f"cos_{side}"] = cos.tolist()
    return out


def _mean(v: list[float]) -> float:
    f = [x for x in v if np.isfinite(x)]
    return float(np.mean(f)) if f else float("nan")


def _rel(d: list[torch.Tensor], w: list[torch.Tensor]) -> float:
    num = sum(float((t.double() ** 2).sum()) for t in d)
    den = sum(float((t.double() ** 2).sum()) for t in w)
    return (num ** 0.5) / (den ** 0.5) if den > 0 else float("nan")


def update_geometry(theta_pre: nn.Module, theta_post: nn.Module, theta_ft: nn.Module, *, k: int = 8,
                    units: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """One row per rollback unit (``none`` left out): ``rel_update_post`` (stage 2),
    ``rel_update_ft`` (stage 3), ``cosine`` of the two updates, ``overlap_left`` /
    ``overlap_right`` (mean over the unit's 2-D weights of :func:`subspace_overlap`),
    ``n_matrices``."""
    units = rollback_units(theta_ft) if units is None else units
    # remove_duplicate=False: a tied head is listed under its own name too (a LoRA-merged
    # theta_post may be untied while its theta_pre is tied)
    p0, p1, p2 = ({n: p.detach() for n, p in m.named_parameters(remove_duplicate=False)}
                  for m in (theta_pre, theta_post, theta_ft))
    sub_cache: dict[str, dict[str, Any]] = {}
    rows = []
    for u, names in units.items():
        if not names:
            continue
        d2 = [p1[n] - p0[n] for n in names]
        d3 = [p2[n] - p1[n] for n in names]
        ov = []
        for n in names:
            if p1[n].ndim == 2:
                if n not in sub_cache:
                    sub_cache[n] = subspace_overlap((p1[n] - p0[n]).cpu().numpy(), (p2[n] - p1[n]).cpu().numpy(), k)
                ov.append(sub_cache[n])
        rows.append({"unit": u, "rel_update_post": _rel(d2, [p0[n] for n in names]),
                     "rel_update_ft": _rel(d3, [p1[n] for n in names]), "cosine": update_cosine(d2, d3),
                     "overlap_left": _mean([o["left"] for o in ov]), "overlap_right": _mean([o["right"] for o in ov]),
                     "n_matrices": len(ov)})
    return rows


# ---- the tables of lm_experiments.analysis.whatwhere -----------------------------------------------------


def where_tables(res: Any, suite: dict[str, Any], corr: dict[str, dict[str, np.ndarray]], ft_dirs: dict[str, Any], *,
                 rollback_arms: str, rollback_lr: float | None, write: Callable[[Any, str], Any],
                 seed_map: Callable[..., Any], log: Callable[[str], None] = print, all_units: bool = False,
                 tau: dict[str, float] | None = None) -> dict[str, Any]:
    """``update_geometry.csv`` (+ ``update_geometry_map.csv``) for every run of ``res.ft`` and
    ``rollback.csv`` (+ ``depth_profile.csv``) for the runs of the base arms (``rollback_arms
    = "base"``) or of every arm (``"all"``) at ``rollback_lr`` (default: the largest lr);
    returns what was rolled back. ``res`` is a :class:`lm_experiments.analysis.whatwhere.Results`.
    Without ``all_units`` the parts of single layers (``layers.<i>.attention`` / ``.mlp`` /
    ``.norm``) and ``layer_norms`` are left out of the rollback (not of the geometry): the
    module groups ``attention`` / ``mlp`` over all layers stay."""
    import math

    import pandas as pd

    from lm_experiments.analysis import items as it
    from lm_experiments.engine.evaluate import evaluate

    lrs = sorted({float(r["ft_lr"]) for r in res.ft.values()})
    lr_rb = float(rollback_lr) if rollback_lr is not None else (lrs[-1] if lrs else float("nan"))
    sel = {rid for rid, r in res.ft.items() if not r.get("compute_matched")
           and (rollback_arms == "all" or r["method"] in BASE_METHODS) and math.isclose(float(r["ft_lr"]), lr_rb)}
    post_role = suite.get("post")
    tau = tau or {}
    blocks = {role: np.asarray(res.prepared.splits[role].report) for role in ("post", "ft")}
    cpu = torch.device("cpu")

    def losses(m: nn.Module) -> dict[str, float]:
        return {f"L_{role}": evaluate(m, b, batch_size=16, device=cpu, shard=False).mean_loss
                for role, b in blocks.items()}

    geo, rb = [], []
    n_units = 0
    for rid, r in sorted(res.ft.items()):
        base = {c: r.get(c) for c in RUN_KEYS}
        base["pipeline"] = res.pipeline
        m_pre = load_checkpoint(res.model_dir("pre", r["pre_id"]))
        m_post = load_checkpoint(res.model_dir("post", r["upstream_id"]))
        m_ft = load_checkpoint(ft_dirs[rid])
        geo += [{**base, **g} for g in update_geometry(m_pre, m_post, m_ft)]
        if rid not in sel:
            continue
        lost = {}  # item set -> indices of the post->ft 1->0 items
        if post_role is not None and post_role.kind == "instruction":
            for s in ("post.mc", "post.answer"):
                cb, ca = corr[f"post:{r['upstream_id']}"].get(s), corr[f"ft:{rid}"].get(s)
                if cb is not None and ca is not None:
                    lost[s] = np.flatnonzero(cb & ~ca)
        subset = np.union1d(*lost.values()) if len(lost) == 2 else next(iter(lost.values()), np.zeros(0, int))

        def measure(m: nn.Module) -> dict[str, float]:
            out = losses(m)
            if len(subset):
                sc = it.score_mc(m, post_role.mc, subset=subset)
                pos = {int(x): j for j, x in enumerate(subset)}
                for s, idx in lost.items():
                    if len(idx):
                        j = [pos[int(x)] for x in idx]
                        ok = sc["mc"][j] if s == "post.mc" else sc["answer_acc"][j] > tau.get("post.answer", np.inf)
                        out[f"restored:{s}"] = float(np.mean(ok))
            return out

        units = rollback_units(m_ft)
        if not all_units:  # the per-layer norm units are cheap to add but each costs two evaluations
            units = {u: v for u, v in units.items() if u not in ("layer_norms", "other")
                     and not (u.startswith("layers.") and u.count(".") == 2)}
        n_units = len(units)
        prof = rollback_profile(m_post, m_ft, measure, units)
        l_im = float(r["losses"]["L_im"])
        l_ret, l_ft, l_ft2 = prof["none"]["L_post"], prof["none"]["L_ft"], prof["all"]["L_ft"]
        for u, v in prof.items():
            rb.append({**base, "unit": u, "L_ret_rb": v["L_post"], "L_ft_rb": v["L_ft"],
                       "share_ret_undone": (l_ret - v["L_post"]) / (l_ret - l_im) if l_ret != l_im else float("nan"),
                       "cost_ft": v["L_ft"] - l_ft,
                       "share_ft_gain_lost": (v["L_ft"] - l_ft) / (l_ft2 - l_ft) if l_ft2 != l_ft else float("nan"),
                       "share_items_restored": v.get("restored:post.mc", float("nan")),
                       "share_answers_restored": v.get("restored:post.answer", float("nan")),
                       "n_forgotten_items": int(len(lost.get("post.mc", []))),
                       "n_forgotten_answers": int(len(lost.get("post.answer", []))),
                       "reproduced_L_ret_diff": abs(l_ret - float(r["losses"]["L_ret"])),
                       "reproduced_L_im_diff": abs(prof["all"]["L_post"] - l_im)})
    geo_df, rb_df = pd.DataFrame(geo), pd.DataFrame(rb)
    write(geo_df, "update_geometry.csv")
    write(rb_df, "rollback.csv")
    if not rb_df.empty:
        write(seed_map(rb_df, ["pipeline", "method", "mix_fraction", "ft_lr", "unit"],
                       ["share_ret_undone", "share_items_restored", "share_answers_restored", "cost_ft",
                        "share_ft_gain_lost"]),
              "depth_profile.csv")
    if not geo_df.empty:
        write(seed_map(geo_df, ["pipeline", "method", "mix_fraction", "compute_matched", "ft_lr", "unit"],
                       ["rel_update_post", "rel_update_ft", "cosine", "overlap_left", "overlap_right"]),
              "update_geometry_map.csv")
    worst = float(rb_df["reproduced_L_ret_diff"].max()) if not rb_df.empty else float("nan")
    log(f"[whatwhere] rollback: {len(sel)} runs x {n_units} units at ft lr {lr_rb:g}; max |L_ret(none) - recorded| "
        f"= {worst:.2e}")
    return {"arms": rollback_arms, "ft_lr": lr_rb, "runs": len(sel), "units": n_units,
            "reproduced_L_ret_max_diff": worst,
            "reproduced_L_im_max_diff": float(rb_df["reproduced_L_im_diff"].max()) if not rb_df.empty else float("nan")}
