"""The figure conventions (docs/figures.md): figures.json lists every figure with a caption
and a relative path, every loss axis carries its unit, one file-name pattern, the 95%
Student-t band over seeds, the style applied, and the forgetting map without empty columns."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from scipy import stats as sps

from early_exposure.frontier import write_frontier
from early_exposure.io import atomic_write_json, atomic_write_text
from figures import common, style
from figures.__main__ import _main, make_figures
from paper_checks.synthetic import frontier_rows, lambda_rows, sweep_frame, trajectory_csv

PIPE = "general>flan_post>chem"


def _matched(side: str, seeds: int = 4) -> pd.DataFrame:
    rows = []
    for s in range(seeds):
        for method, lam, off in (("unmixed", 0.0, 0.0), ("mixed", 1.0, -0.2)):
            for k, im in enumerate(np.linspace(3.0, 2.5, 5)):
                rows.append({"side": side, "pipeline": PIPE, "method": method, "mix_fraction": lam, "seed": s,
                             "upstream_id": f"u{s}{method}", "checkpoint": k, "post_step": 10 * k, "ft_lr": 1e-3,
                             "L_im": im, "L_ret": 1 + 0.8 * im + off + 0.03 * s, "L_ft": 2.0, "L_pre": 4.0,
                             "diverged": False, "run_id": f"r{s}{method}{k}"})
    return pd.DataFrame(rows)


def _fmap(zero_col: bool = True) -> pd.DataFrame:
    """A hand-made forgetting map: post->ft post.em forgets (0.3-0.5), post->ft pre.doc is zero
    in every arm (when ``zero_col``), pre->post ft.em had nothing right before."""
    rows = []
    for i, (m, lam) in enumerate((("unmixed", 0.0), ("mixed", 0.5), ("mixed", 1.0))):
        for pair, st, f, before in (("post->ft", "post.em", 0.3 + 0.1 * i, 0.9),
                                    ("post->ft", "pre.doc", 0.0 if zero_col else 0.05, 0.5),
                                    ("pre->post", "ft.em", 0.0, 0.0)):
            rows.append({"pipeline": "p", "method": m, "mix_fraction": lam, "compute_matched": False,
                         "ft_lr": 3e-3 if pair == "post->ft" else np.nan, "pair": pair, "set": st, "n_seeds": 5,
                         "forgetting": f, "forgetting_lo": f - 0.05, "forgetting_hi": f + 0.05, "acc_before": before})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    d = tmp_path_factory.mktemp("results")
    lm = pd.concat([frontier_rows("lm", PIPE, {"unmixed": 0.0, "mixed": 0.4}, seeds=[0, 1, 2]),
                    lambda_rows("lm", PIPE, [0, 1, 2], compute_matched=True)])
    write_frontier(lm, d / "lm/cpu-quick/frontier.csv")
    write_frontier(frontier_rows("theory", "pre>post>ft", {"unmixed": 0.0, "mixed": 0.4}, seeds=[0, 1]),
                   d / "theory/frontier/frontier.csv")
    write_frontier(lambda_rows("theory", "pre>post>ft", [0, 1, 2], compute_matched=False),
                   d / "theory/compute_matched/frontier.csv")
    for name, mixed in (("unmixed", False), ("mixed", True)):
        atomic_write_text(d / f"theory/trajectories/{name}/trajectory.csv", trajectory_csv(mixed))
        atomic_write_json(d / f"theory/trajectories/{name}/result.json", {"config": {"task": {"n": 6, "k": 2}}})
    (d / "theory/sweep").mkdir(parents=True)
    sweep_frame(8).to_parquet(d / "theory/sweep/sweep.parquet")
    _matched("lm").to_csv(d / "lm/cpu-quick/matched.csv", index=False)
    (d / "theory/matched").mkdir(parents=True)
    _matched("theory").to_csv(d / "theory/matched/matched.csv", index=False)
    (d / "lm/cpu-quick/whatwhere").mkdir(parents=True)
    _fmap().to_csv(d / "lm/cpu-quick/whatwhere/forgetting_map.csv", index=False)
    return d


@pytest.fixture
def seen(monkeypatch):
    """Every figure saved while the test runs: name -> (axis labels, label font sizes, suptitle)."""
    got: dict[str, dict] = {}

    def hook(fig, name):
        got[name] = {"labels": [lab for ax in fig.axes for lab in (ax.get_xlabel(), ax.get_ylabel()) if lab],
                     "sizes": [ax.yaxis.label.get_fontsize() for ax in fig.axes if ax.get_ylabel()],
                     "missing": style.missing_units(fig)}

    monkeypatch.setattr(common, "BEFORE_SAVE", [hook])
    return got


def test_figures_json_lists_every_figure_with_a_caption_and_a_relative_path(results, tmp_path, seen):
    out = tmp_path / "figs"
    assert _main(["all", "--results", str(results), "--out", str(out)]) == 0
    listed = json.loads((out / "figures.json").read_text())
    entries = listed["entries"]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert sorted(e["file"] for e in entries) == pngs and len(pngs) >= 10
    assert {e["family"] for e in entries} == {"frontiers", "lambda", "spectra", "phase", "theory_vs_lm", "matched",
                                              "whatwhere"}
    for e in entries:
        assert not e["file"].startswith("/") and ".." not in e["file"] and str(tmp_path) not in json.dumps(e)
        assert (out / e["file"]).is_file() and (out / e["pdf"]).is_file()
        assert len(e["caption"]) > 80, e
        assert e["sources"] and all((results / s).is_file() for s in e["sources"]), e
    # every figure drawn over seeds states its convention and seed count in the caption
    for e in entries:
        if e["family"] in ("lambda", "matched"):
            assert "95% Student-t" in e["caption"] and "n = " in e["caption"], e
        if e["family"] == "frontiers":
            assert "pooled" in e["caption"] and "seed" in e["caption"]
    assert sorted(listed["figures"]) == sorted(p.name for p in out.iterdir() if p.suffix in (".png", ".pdf"))
    assert not any(f.startswith("/") for f in listed["figures"])
    assert set(seen) == {e["file"][:-4] for e in entries}


def test_every_loss_axis_carries_its_unit(results, tmp_path, seen):
    paths, refused = make_figures(results, tmp_path, "all", log=lambda s: None)
    assert paths and not refused
    loss_labels = [lab for s in seen.values() for lab in s["labels"] if style.LOSS_RE.search(lab)]
    assert len(loss_labels) >= 20
    assert {n: s["missing"] for n, s in seen.items() if s["missing"]} == {}
    for name, s in seen.items():
        want = "squared error" if name.startswith("theory_") else "nats/token"
        for lab in s["labels"]:
            if style.LOSS_RE.search(lab) and not name.startswith("lm-cpu-quick_theory-vs-lm"):
                assert f"({want})" in lab, (name, lab)
        assert min(s["sizes"]) >= style.STYLE["axes.labelsize"] - 1, name  # the style was applied
    # the check itself: a loss label without a unit is caught, the same label with one is not
    fig, ax = plt.subplots()
    ax.set_xlabel("$L_{ret}$ retained loss")
    ax.set_ylabel("mixing fraction")
    assert style.missing_units(fig) == ["$L_{ret}$ retained loss"]
    ax.set_xlabel(style.loss_label("L_ret", "lm"))
    assert style.missing_units(fig) == []
    plt.close(fig)


def test_one_file_name_pattern(results, tmp_path):
    paths, _ = make_figures(results, tmp_path, "all", log=lambda s: None)
    assert paths and all(style.NAME_RE.match(p.name) for p in paths), [p.name for p in paths]
    # the old patterns do not pass
    for old in ("fig2_lm-cpu-quick_general-music-chem.png", "theory_spectra.png", "whatwhere_map_cpu-quick.png",
                "theory_vs_lm_cpu-quick.png", "matched_lm-cpu-quick.png", "Theory_phase_Delta.png"):
        assert not style.NAME_RE.match(old), old
    assert style.fig_name("lm-cpu_quick", "theory_vs_lm", "fig2-general>flan_post") == \
        "lm-cpu-quick_theory-vs-lm_fig2-general-flan-post"
    with pytest.raises(ValueError, match="does not follow"):
        common.save(plt.figure(), tmp_path, "fig2_lm-x_general-music-chem")
    plt.close("all")


def _band(ax):
    """(x, lo, hi) of the single shaded band of ``ax``, read back from its polygon."""
    polys = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(polys) == 1
    v = polys[0].get_paths()[0].vertices
    xs = np.unique(np.round(v[:, 0], 9))
    lo = np.array([v[np.isclose(v[:, 0], x), 1].min() for x in xs])
    hi = np.array([v[np.isclose(v[:, 0], x), 1].max() for x in xs])
    return xs, lo, hi


def _scipy_band(ys):
    ys = np.asarray(ys, dtype=float)
    n = ys.shape[0]
    m = ys.mean(0)
    lo, hi = sps.t.interval(0.95, n - 1, loc=m, scale=ys.std(0, ddof=1) / np.sqrt(n))
    return m, lo, hi


def test_band_is_the_95_percent_t_interval_over_seeds():
    x = np.array([0.0, 0.5, 1.0])
    ys = np.array([[1.0, 2.0, 3.0], [1.5, 2.5, 2.0], [0.5, 2.2, 4.0], [1.2, 1.0, 3.5]])
    fig, ax = plt.subplots()
    style.seed_band(ax, x, ys, "black", "mean")
    bx, lo, hi = _band(ax)
    m, slo, shi = _scipy_band(ys)
    assert np.allclose(bx, x) and np.allclose(lo, slo) and np.allclose(hi, shi)
    # not +- one sd, not min-max
    assert not np.allclose(hi - lo, 2 * ys.std(0, ddof=1)) and not np.allclose(lo, ys.min(0))
    lines = ax.get_lines()
    assert len(lines) == 5 and sum(ln.get_linewidth() == style.LW_SEED for ln in lines) == 4
    assert np.allclose(lines[-1].get_ydata(), m)
    plt.close(fig)


def test_lambda_figure_band_matches_scipy_on_the_table(tmp_path, monkeypatch):
    """Figure 3a's L_im panel: the band is the t-interval over seeds of each seed's best L_im."""
    from figures import lambda_studies

    df = lambda_rows("lm", PIPE, [0, 1, 2, 3], compute_matched=False, noise=0.05)
    axes = {}
    real = lambda_studies.save

    def grab(fig, out, name):
        axes["a1"] = fig.axes[0]
        axes["bx"], axes["lo"], axes["hi"] = _band(fig.axes[0])
        return real(fig, out, name)

    monkeypatch.setattr(lambda_studies, "save", grab)
    paths = lambda_studies._lambda_figure(df, False, "t", tmp_path, "lm-x_lambda_fig3a-p")
    assert paths
    best = df.sort_values("L_im").drop_duplicates(["mix_fraction", "seed"])
    ys = best.pivot(index="seed", columns="mix_fraction", values="L_im").to_numpy()
    _, slo, shi = _scipy_band(ys)
    assert np.allclose(axes["bx"], sorted(df["mix_fraction"].unique()))
    assert np.allclose(axes["lo"], slo) and np.allclose(axes["hi"], shi)
    assert "95% Student-t" in common.CAPTIONS[str(tmp_path / "lm-x_lambda_fig3a-p.png")]["caption"]


def test_matched_band_matches_scipy(tmp_path, monkeypatch):
    from figures import matched

    bands = []

    def grab(fig, out, name):
        bands.append(_band(fig.axes[0]))
        plt.close(fig)
        return []

    monkeypatch.setattr(matched, "save", grab)
    (tmp_path / "lm/q").mkdir(parents=True)
    df = _matched("lm").loc[lambda d: d["method"] == "unmixed"]
    df.to_csv(tmp_path / "lm/q/matched.csv", index=False)
    matched.matched_figures(tmp_path, tmp_path / "f", log=lambda s: None)
    bx, lo, hi = bands[0]
    # L_ret = 1 + 0.8 L_im + 0.03 seed on a shared L_im range: seed values at each grid point
    ys = np.array([1 + 0.8 * bx + 0.03 * s for s in range(4)])
    _, slo, shi = _scipy_band(ys)
    assert np.allclose(lo, slo) and np.allclose(hi, shi)


def test_forgetting_map_drops_all_zero_and_empty_columns(tmp_path, monkeypatch):
    from figures import whatwhere

    t = whatwhere.map_table(_fmap())
    assert t["cols"] == [("post->ft", "post.em")]
    assert t["dropped"] == {("post->ft", "pre.doc"): "zero in every arm", ("pre->post", "ft.em"): "nothing right before"}
    assert np.allclose(t["vals"][:, 0], [0.3, 0.4, 0.5])
    # with some forgetting in that column it is kept
    assert ("post->ft", "pre.doc") in whatwhere.map_table(_fmap(zero_col=False))["cols"]

    drawn = {}

    def grab(fig, out, name):
        ax = fig.axes[0]
        drawn.update(ticks=[x.get_text() for x in ax.get_xticklabels()], title=ax.get_title(),
                     sizes=[x.get_fontsize() for x in ax.texts])
        plt.close(fig)
        return []

    monkeypatch.setattr(whatwhere, "save", grab)
    whatwhere.forgetting_map(_fmap(), "p", tmp_path)
    assert len(drawn["ticks"]) == 1 and drawn["ticks"][0].startswith("D_post exact match")
    assert "\n" not in drawn["title"] and drawn["title"]
    assert len(drawn["sizes"]) == 3 and min(drawn["sizes"]) >= 9
    cap = common.CAPTIONS[str(tmp_path / "lm-p_whatwhere_map.png")]["caption"]
    assert "Left out" in cap and "zero in every arm" in cap and "95% Student-t" in cap


def test_no_min_max_or_sd_bars_in_the_figure_code():
    from pathlib import Path

    import figures

    src = "\n".join(p.read_text() for p in Path(figures.__file__).parent.glob("*.py"))
    assert "errorbar(" not in src and "min-max" not in src and "+- sd" not in src and "std(0" not in src
