"""Heatmaps of a finished sweep (reads the rows only; never simulates).

For the first two grid axes, one PNG each for Delta = L_ret - L_im, L_im and L_ret, with the
region where the closed-form pretraining assumptions C.5 and C.6 hold outlined (C.3/C.4 and
C.6 are jointly infeasible as printed, see :mod:`linear_theory.sweep.flags`; the title
says where C.3/C.4 hold). Further axes
are fixed at their first value (named in the title). A one-axis sweep gets line plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from early_exposure.io import atomic_write_figure

__all__ = ["heatmaps", "QUANTITIES"]

QUANTITIES = ("Delta", "L_im", "L_ret")


def heatmaps(df: pd.DataFrame, axes: list[dict[str, Any]], out: Path) -> list[Path]:
    """Write ``heatmap_<quantity>.png`` (or ``line_<quantity>.png``) into ``out``; return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, path: Path) -> Path:
        atomic_write_figure(path, fig, dpi=110, bbox_inches="tight")
        plt.close(fig)
        return path

    paths: list[Path] = []
    sel = df
    fixed = []
    for a in axes[2:]:
        sel = sel[sel[a["path"]] == a["values"][0]]
        fixed.append(f"{a['path']}={a['values'][0]}")
    note = f" ({', '.join(fixed)})" if fixed else ""
    if len(axes) == 1:
        a = axes[0]
        x = sel[a["path"]].to_numpy()
        for q in QUANTITIES:
            fig, ax = plt.subplots(figsize=(5, 3.5))
            ax.plot(x, sel[q].to_numpy(), marker=".")
            if a["spacing"] == "log":
                ax.set_xscale("log")
            ax.set_xlabel(a["path"])
            ax.set_ylabel(q)
            hold = sel["C5_C6_hold"].to_numpy(bool)
            if hold.any():
                ax.fill_between(x, 0, 1, where=hold, color="tab:green", alpha=0.15,
                                transform=ax.get_xaxis_transform(), label="C.5 & C.6 hold")
                ax.legend(fontsize=8)
            ax.set_title(f"{q}{note}", fontsize=9)
            paths.append(save(fig, out / f"line_{q}.png"))
        return paths
    ax0, ax1 = axes[0], axes[1]
    x = np.asarray(ax0["values"], dtype=float) if not isinstance(ax0["values"][0], str) else np.arange(len(ax0["values"]))
    y = np.asarray(ax1["values"], dtype=float) if not isinstance(ax1["values"][0], str) else np.arange(len(ax1["values"]))
    shape = (len(ax0["values"]), len(ax1["values"]))
    sel = sel.sort_values("point")
    # C.3/C.4 (beta < c_mis / 2) and C.6 cannot hold together (C.6 needs beta > sigma_post_inc
    # >= c_mis > 2 beta), so the outlined region is where the pretraining assumptions C.5 and
    # C.6 hold; the title says where C.3/C.4 hold.
    hold = sel["C5_C6_hold"].to_numpy(bool).reshape(shape)
    c34 = sel["C3_C4"].to_numpy(bool)
    c34_txt = "everywhere" if c34.all() else ("nowhere" if not c34.any() else "in part")
    for q in QUANTITIES:
        Z = sel[q].to_numpy(float).reshape(shape)
        fig, ax = plt.subplots(figsize=(5.5, 4.2))
        kw = {}
        if q == "Delta" and np.isfinite(Z).any():
            v = float(np.nanmax(np.abs(Z))) or 1.0
            kw = {"cmap": "RdBu_r", "vmin": -v, "vmax": v}
        mesh = ax.pcolormesh(x, y, Z.T, shading="nearest", **kw)
        fig.colorbar(mesh, ax=ax, label=q)
        if hold.any() and not hold.all() and min(shape) > 1:
            ax.contour(x, y, hold.T.astype(float), levels=[0.5], colors="k", linewidths=1.5)
        ax.set_xlabel(ax0["path"])
        ax.set_ylabel(ax1["path"])
        if ax0["spacing"] == "log":
            ax.set_xscale("log")
        if ax1["spacing"] == "log":
            ax.set_yscale("log")
        region = "everywhere" if hold.all() else ("nowhere" if not hold.any() else "inside black line")
        ax.set_title(f"{q}{note}\nC.5 & C.6 hold: {region}; C.3/C.4 hold: {c34_txt}", fontsize=9)
        paths.append(save(fig, out / f"heatmap_{q}.png"))
    return paths
