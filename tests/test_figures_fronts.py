"""Frontier figures draw each seed's own front (thin) and the pooled front (thick, labelled as
pooled), and name every arm's lambda and seed count."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from figures.frontiers import draw_frontier, legend
from paper_checks.synthetic import frontier_rows


def test_per_seed_fronts_and_labels() -> None:
    df = frontier_rows("lm", "p", {"unmixed": 0.0, "mixed": 0.3}, seeds=[0, 1, 2], mix_fraction=0.5)
    fig, ax = plt.subplots()
    assert draw_frontier(ax, df, "unmixed", "ret_ft") and draw_frontier(ax, df, "mixed", "ret_ft")
    lines = ax.get_lines()
    assert len(lines) == 2 * (3 + 1)  # three per-seed fronts and the pooled front per arm
    thin = [ln for ln in lines if ln.get_label().startswith("_")]
    thick = [ln for ln in lines if not ln.get_label().startswith("_")]
    assert len(thin) == 6 and len(thick) == 2
    assert max(ln.get_linewidth() for ln in thin) < min(ln.get_linewidth() for ln in thick)
    legend(ax)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["unmixed ($\\lambda$=0), front of all 3 seeds pooled",
                      "mixed ($\\lambda$=0.5), front of all 3 seeds pooled", "thin: one seed's own front"]
    # the loss axes carry their unit (the rows are LM rows: nats/token)
    assert ax.get_xlabel() == "$L_{ft}$ fine-tuning loss (nats/token)"
    assert ax.get_ylabel() == "$L_{ret}$ retained post-training loss (nats/token)"
    plt.close(fig)
