"""Figures of the latent-benefit study (matplotlib, Agg backend). Every function takes the
study's DataFrames and writes one PNG; nothing is computed here beyond reshaping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import SymLogNorm

__all__ = ["heat", "outline", "fig_bottleneck", "fig_spectra", "fig_ft", "fig_finite", "fig_depth", "fig_decay"]

_BLOCK_COLORS = {"invariant": "#eeeeee", "inconsistent": "#fde0c5", "specialized": "#d5e8d4"}


def _fmt(v: float) -> str:
    if not np.isfinite(v):
        return ""
    if abs(v) < 5e-4:
        return "0"
    return f"{v:.2g}" if abs(v) < 10 else f"{v:.0f}"


def outline(ax: Any, mask: np.ndarray, color: str = "black", lw: float = 2.2) -> None:
    """Draw the boundary of the True cells of ``mask`` (rows = y, cols = x, unit cells)."""
    ny, nx = mask.shape
    for i in range(ny):
        for j in range(nx):
            if not mask[i, j]:
                continue
            for di, dj, seg in ((-1, 0, ((j - .5, j + .5), (i - .5, i - .5))), (1, 0, ((j - .5, j + .5), (i + .5, i + .5))),
                                (0, -1, ((j - .5, j - .5), (i - .5, i + .5))), (0, 1, ((j + .5, j + .5), (i - .5, i + .5)))):
                ii, jj = i + di, j + dj
                if not (0 <= ii < ny and 0 <= jj < nx) or not mask[ii, jj]:
                    ax.plot(*seg, color=color, lw=lw, solid_capstyle="round")


def heat(ax: Any, df: pd.DataFrame, x: str, y: str, z: str, title: str, mask_col: str | None = "latent",
         pred_col: str | None = None, xfmt: Any = None, annotate: bool = True) -> None:
    """Heatmap of column ``z`` over (x, y) with the ``mask_col`` region outlined and
    ``pred_col`` cells marked with a dot (the closed form's region)."""
    xs = sorted(df[x].unique())
    ys = sorted(df[y].unique())
    Z = np.full((len(ys), len(xs)), np.nan)
    M = np.zeros_like(Z, dtype=bool)
    P = np.zeros_like(Z, dtype=bool)
    for _, r in df.iterrows():
        i, j = ys.index(r[y]), xs.index(r[x])
        Z[i, j] = r[z]
        if mask_col:
            M[i, j] = bool(r[mask_col])
        if pred_col:
            P[i, j] = bool(r[pred_col])
    vmax = max(float(np.nanmax(np.abs(Z))), 1e-3)
    im = ax.imshow(Z, origin="lower", aspect="auto", cmap="RdBu_r",
                   norm=SymLogNorm(linthresh=1e-2, vmin=-vmax, vmax=vmax, base=10))
    if annotate:
        for i in range(len(ys)):
            for j in range(len(xs)):
                ax.text(j, i, _fmt(Z[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if abs(Z[i, j]) > 0.3 * vmax else "black")
    if mask_col:
        outline(ax, M)
    if pred_col:
        ii, jj = np.nonzero(P)
        ax.scatter(jj, ii - 0.33, s=9, c="gold", edgecolors="black", linewidths=0.4, zorder=5)
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels([xfmt(v) if xfmt else f"{v:g}" for v in xs], rotation=60, fontsize=7)
    ax.set_yticks(range(len(ys)))
    ax.set_yticklabels([f"{v:g}" for v in ys], fontsize=7)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title, fontsize=9)
    plt.colorbar(im, ax=ax, fraction=0.046, pad=0.02)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=130, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def fig_bottleneck(df: pd.DataFrame, path: Path, width: int = 6) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(19, 4.6), gridspec_kw={"width_ratios": [1, 1, 0.9]})
    heat(axes[0], df, "gap", "width", "dL_im", "Delta L_im (mixed - unmixed)", pred_col="pred_latent")
    heat(axes[1], df, "gap", "width", "dL_ret", "Delta L_ret (mixed - unmixed)", pred_col="pred_latent")
    ax = axes[2]
    sub = df[df["width"] == width].sort_values("gap")
    xs = np.arange(len(sub))
    ax.plot(xs, sub["dL_ret"], "o", color="tab:blue", label="Delta L_ret, simulation")
    ax.plot(xs, sub["pred_dL_ret"], "-", color="tab:blue", alpha=0.6, label="Delta L_ret, slot model")
    ax.plot(xs, sub["dL_im"], "s", color="tab:red", label="Delta L_im, simulation")
    ax.plot(xs, sub["pred_dL_im"], "-", color="tab:red", alpha=0.6, label="Delta L_im, slot model")
    lat = sub["latent"].to_numpy()
    for j in np.nonzero(lat)[0]:
        ax.axvspan(j - 0.5, j + 0.5, color="gold", alpha=0.25, lw=0)
    ax.axhline(0, color="gray", lw=0.6)
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{g:g}" for g in sub["gap"]], rotation=60, fontsize=7)
    ax.set_xlabel("gap = beta - sigma_inc_post")
    ax.set_title(f"h = {width}: shaded = same L_im (1%) and L_ret lower (1%)", fontsize=9)
    ax.legend(fontsize=7)
    fig.suptitle("Bottleneck x tie gap (depth 2, random init e^-10, post: strict early stopping, budget 20000): "
                 "black outline = latent benefit in simulation, gold dots = predicted by the slot model", fontsize=10)
    return _save(fig, path)


def fig_spectra(cases: dict[str, tuple[Any, Any]], path: Path, k: int = 2) -> Path:
    names = list(cases)
    fig, axes = plt.subplots(len(names), 2, figsize=(13, 2.6 * len(names)), sharey=True)
    stages = ("pre", "post", "ft")
    colors = {"pre": "#9e9e9e", "post": "#1f77b4", "ft": "#d62728"}
    for row, name in enumerate(names):
        for col, (arm, r) in enumerate(zip(("unmixed (alpha = 0)", "mixed (alpha = 0.5)"), cases[name])):
            ax = axes[row, col]
            n = len(r.spectra["post"])
            for b, sl in (("invariant", slice(0, n - 2 * k)), ("inconsistent", slice(n - 2 * k, n - k)),
                          ("specialized", slice(n - k, n))):
                ax.axvspan(sl.start - 0.5, sl.stop - 0.5, color=_BLOCK_COLORS[b], zorder=0)
            for s_i, st in enumerate(stages):
                ax.bar(np.arange(n) + (s_i - 1) * 0.27, r.spectra[st], width=0.27, color=colors[st],
                       label=f"after {st}" if row == 0 and col == 0 else None, zorder=2)
            ax.set_title(f"{name}: {arm}\nL_im = {r.losses['L_im']:.4g}, L_ret = {r.losses['L_ret']:.4g}, "
                         f"L_ft = {r.losses['L_ft']:.3g}", fontsize=8)
            ax.set_xticks(range(n))
            ax.set_xticklabels([f"inv{i}" for i in range(n - 2 * k)] + [f"inc{i}" for i in range(k)]
                               + [f"spec{i}" for i in range(k)], fontsize=7)
            ax.axhline(0, color="black", lw=0.5)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    fig.suptitle("Per-feature spectra diag(U^T theta V): which features carry post-training (blue) and what "
                 "fine-tuning moves (red). Background: invariant / inconsistent / specialized block", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def fig_ft(df: pd.DataFrame, rnd: pd.DataFrame, path: Path) -> Path:
    fig, axes = plt.subplots(2, 3, figsize=(17, 8.5))
    rot = lambda v: f"{v / np.pi:.3g}pi"  # noqa: E731
    for row, h in enumerate(sorted(df["width"].unique())):
        sub = df[df["width"] == h]
        heat(axes[row, 0], sub, "ft_rotation", "ft_spec_var", "dL_im", f"h = {h}: Delta L_im", xfmt=rot)
        heat(axes[row, 1], sub, "ft_rotation", "ft_spec_var", "dL_ret", f"h = {h}: Delta L_ret", xfmt=rot)
    ax = axes[0, 2]
    for h, mk in zip(sorted(df["width"].unique()), ("o", "s")):
        sub = df[(df["width"] == h) & (df["ft_rotation"] == 0.0)].sort_values("ft_spec_var")
        xs = np.arange(len(sub))
        ax.plot(xs, sub["dL_ret"], mk, label=f"h = {h}, simulation")
        ax.plot(xs, sub["pred_dL_ret"], "-", alpha=0.6, label=f"h = {h}, closed form")
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{v:g}" for v in sub["ft_spec_var"]])
    ax.axhline(0, color="gray", lw=0.6)
    ax.set_xlabel("ft_spec_var (D_ft variance along V_spec), rotation 0")
    ax.set_ylabel("Delta L_ret")
    ax.legend(fontsize=7)
    ax.set_title("Protection of the specialized features by D_ft (Lemma C.16) sets the benefit", fontsize=9)
    ax = axes[1, 2]
    rel = (rnd["dL_ret"].abs() / rnd["L_ret_u"]).clip(lower=1e-16)
    for d, mk in ((2, "o"), (3, "^")):
        s = rnd["depth"] == d
        ax.scatter(rnd.loc[s, "case"], rel[s], marker=mk, label=f"depth {d}")
    ax.axhline(0.01, color="red", lw=0.8, ls="--", label="1% (minimum effect)")
    ax.set_yscale("log")
    ax.set_xlabel("random case (h >= n, random task, basis, D_ft variance / rotation)")
    ax.set_ylabel("|Delta L_ret| / L_ret")
    ax.legend(fontsize=7)
    ax.set_title("No bottleneck: converged arms retain identically (Proposition 2)", fontsize=9)
    fig.suptitle("Fine-tuning relaxations at the tie (gap 0): D_ft variance along V_spec x rotation of D_ft's basis",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def fig_finite(agg: pd.DataFrame, path: Path) -> Path:
    protos = sorted(agg["protocol"].unique())
    widths = sorted(agg["width"].unique(), reverse=True)
    fig, axes = plt.subplots(len(protos), 2 * len(widths), figsize=(5.2 * 2 * len(widths), 4.2 * len(protos)))
    axes = np.atleast_2d(axes)
    for r, p in enumerate(protos):
        for c, h in enumerate(widths):
            sub = agg[(agg["protocol"] == p) & (agg["width"] == h)]
            heat(axes[r, 2 * c], sub, "N", "noise", "dL_im", f"{p}, h = {h}: mean Delta L_im")
            heat(axes[r, 2 * c + 1], sub, "N", "noise", "dL_ret", f"{p}, h = {h}: mean Delta L_ret")
    fig.suptitle("Finite D_post (N samples, label noise; seed means): outline = latent benefit of the seed-mean losses",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def fig_depth(dep: pd.DataFrame, relu: pd.DataFrame, path: Path) -> Path:
    fig, axes = plt.subplots(1, 4, figsize=(22, 4.4), gridspec_kw={"width_ratios": [1.3, 1.3, 0.8, 0.8]})
    heat(axes[0], dep, "gap", "width", "dL_im", "depth 3: Delta L_im")
    heat(axes[1], dep, "gap", "width", "dL_ret", "depth 3: Delta L_ret")
    heat(axes[2], relu, "gap", "width", "dL_im", "2-layer ReLU: Delta L_im")
    heat(axes[3], relu, "gap", "width", "dL_ret", "2-layer ReLU: Delta L_ret")
    fig.suptitle("Depth 3 (linear, init e^-3 per layer) and two-layer ReLU (exact Gaussian losses, init e^-4): "
                 "outline = latent benefit", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def fig_decay(df: pd.DataFrame, path: Path) -> Path:
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for r, knob in enumerate(("wd", "reg")):
        sub = df[df["knob"] == knob]
        heat(axes[r, 0], sub, "value", "width", "dL_im", f"post {knob}: Delta L_im", pred_col="pred_latent")
        heat(axes[r, 1], sub, "value", "width", "dL_ret", f"post {knob}: Delta L_ret", pred_col="pred_latent")
    fig.suptitle("Post-training weight decay (wd sum ||W_l||^2) and theta_pre regulariser (reg ||theta - theta_pre||^2) "
                 "at the tie, post-training to convergence", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
