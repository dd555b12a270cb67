"""figures.common's finishing of every figure: log axes for wide loss ranges, suptitles
clear of the panel titles, plain words instead of column names."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from figures import common, theory
from paper_checks.synthetic import sweep_frame


def _frontier_axes(lo, hi):
    fig, ax = plt.subplots()
    x = np.geomspace(lo, hi, 8)
    ax.scatter(x, x[::-1], s=5)
    ax.plot(x, x[::-1] * 2)
    ax.axvline(0.5 * (lo + hi))  # axes coordinates on y: must not count
    ax.set_xlabel("fine-tuning loss $L_{ft}$")
    ax.set_ylabel("retained post-training loss $L_{ret}$")
    return fig, ax


def test_wide_loss_axes_go_log_narrow_ones_stay_linear(tmp_path):
    fig, ax = _frontier_axes(0.01, 40)
    common.save(fig, tmp_path, "theory_test_wide")
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    fig, ax = _frontier_axes(2.5, 4.0)
    common.save(fig, tmp_path, "theory_test_narrow")
    assert (ax.get_xscale(), ax.get_yscale()) == ("linear", "linear")
    # a zero on the axis (or an axis that is not a loss) keeps it linear
    fig, ax = plt.subplots()
    ax.plot([0.0, 0.5, 1.0], [0.01, 1.0, 40.0])
    ax.set_xlabel("mixing fraction $\\lambda$")
    ax.set_ylabel("$L_{im}$")
    assert not common.log_scale_if_wide(ax, "x")
    common.finish(fig)
    assert (ax.get_xscale(), ax.get_yscale()) == ("linear", "log")
    plt.close(fig)


def _overlap(a, b) -> bool:
    return not (a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0)


def test_two_line_suptitle_clears_panel_titles(tmp_path):
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax in axes:
        ax.plot([1, 2], [3, 4])
        ax.set_title("retention vs fine-tuning", fontsize=9)
    fig.suptitle("Figure 2: early exposure shifts the frontiers\nlm-cpu-quick: general>music>chem", fontsize=10)
    common.finish(fig)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    sup = fig._suptitle.get_window_extent(r)
    for ax in axes:
        assert not _overlap(sup, ax.title.get_window_extent(r))
        assert not _overlap(sup, ax.get_window_extent(r))
    plt.close(fig)


def test_plain_words_for_flags():
    for name in ("C5_C6_hold", "assumptions_hold", "C3_C4", "some_new_flag", "stages.pre.mix_fraction"):
        assert "_" not in common.plain(name), name
    assert "C.5 and C.6" in common.plain("C5_C6_hold")


def test_phase_title_names_no_columns(tmp_path, monkeypatch):
    df = sweep_frame(6)
    df["C5_C6_hold"] = df["mix_fraction"] > 0.5
    (tmp_path / "theory/sweep").mkdir(parents=True)
    df.to_parquet(tmp_path / "theory/sweep/sweep.parquet")
    titles = []
    real_save = theory.save

    def spy(fig, out, name):
        titles.extend(ax.get_title() for ax in fig.axes)
        return real_save(fig, out, name)

    monkeypatch.setattr(theory, "save", spy)
    paths = theory.phase_figure(tmp_path, tmp_path / "out", log=lambda s: None)
    assert paths and titles
    text = " ".join(titles)
    assert "C5_C6_hold" not in text and "assumptions_hold" not in text and "mix_fraction" not in text
    assert "C.5 and C.6" in text
