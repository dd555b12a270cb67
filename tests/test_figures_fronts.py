"""Frontier figures draw each seed's own front and name every arm's lambda and seed count."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from figures.frontiers import draw_frontier
from paper_checks.synthetic import frontier_rows


def test_per_seed_fronts_and_labels() -> None:
    df = frontier_rows("lm", "p", {"unmixed": 0.0, "mixed": 0.3}, seeds=[0, 1, 2], mix_fraction=0.5)
    fig, ax = plt.subplots()
    assert draw_frontier(ax, df, "unmixed", "ret_ft") and draw_frontier(ax, df, "mixed", "ret_ft")
    lines = ax.get_lines()
    assert len(lines) == 2 * (3 + 1)  # three per-seed fronts and the pooled front per arm
    labels = [t.get_text() for t in ax.legend().get_texts()]
    assert labels == ["unmixed ($\\lambda$=0, 3 seeds)", "mixed ($\\lambda$=0.5, 3 seeds)"]
    plt.close(fig)
