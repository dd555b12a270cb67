"""figures: each family runs on a small synthetic results directory and writes PNG + PDF;
absent data is skipped with a note; incomparable inputs are refused."""

import json

import pandas as pd
import pytest

from early_exposure.frontier import write_frontier
from early_exposure.io import atomic_write_json, atomic_write_text
from figures.__main__ import _main, make_figures
from paper_checks.synthetic import frontier_rows, lambda_rows, sweep_frame, trajectory_csv

PIPE = "general>music>chem"


def _check_files(paths, stem):
    got = {p.name for p in paths}
    assert {f"{stem}.png", f"{stem}.pdf"} <= got, sorted(got)
    for p in paths:
        if p.name == f"{stem}.png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
        if p.name == f"{stem}.pdf":
            assert p.read_bytes()[:4] == b"%PDF"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    d = tmp_path_factory.mktemp("results")
    lm = pd.concat([frontier_rows("lm", PIPE, {"unmixed": 0.0, "mixed": 0.4, "mixed+lora": 0.2}, seeds=[0, 1]),
                    lambda_rows("lm", PIPE, [0, 1], compute_matched=True, ret=(3.5, 0.0, 1.6))])
    write_frontier(lm, d / "lm/cpu-quick/frontier.csv")
    write_frontier(frontier_rows("theory", "theory", {"unmixed": 0.0, "mixed": 0.4}, seeds=[0]),
                   d / "theory/frontier/frontier.csv")
    for name, mixed in (("unmixed", False), ("mixed", True)):
        atomic_write_text(d / f"theory/trajectories/{name}/trajectory.csv", trajectory_csv(mixed))
        atomic_write_json(d / f"theory/trajectories/{name}/result.json", {"config": {"task": {"n": 6, "k": 2}}})
    (d / "theory/sweep").mkdir(parents=True)
    sweep_frame(8).to_parquet(d / "theory/sweep/sweep.parquet")
    return d


def test_frontier_figures(results, tmp_path):
    notes = []
    paths, refused = make_figures(results, tmp_path, "frontiers", log=notes.append)
    assert refused == []
    _check_files(paths, "lm-cpu-quick_frontiers_fig2-general-music-chem")
    _check_files(paths, "lm-cpu-quick_frontiers_fig7-general-music-chem")
    _check_files(paths, "theory_frontiers_fig2-theory")
    # no replay/dropout rows: Figures 4-6 are skipped with a note, not drawn empty
    assert not any(f"_frontiers_{k}-" in p.name for p in paths for k in ("fig4", "fig5", "fig6"))
    assert any("fig4" in n for n in notes)


def test_lambda_theory_and_side_by_side_figures(results, tmp_path):
    notes = []
    paths = []
    for fam in ("lambda", "spectra", "phase", "theory_vs_lm"):
        p, refused = make_figures(results, tmp_path, fam, log=notes.append)
        assert refused == []
        paths += p
    _check_files(paths, "lm-cpu-quick_lambda_fig3b-general-music-chem")
    _check_files(paths, "theory_spectra_staircase")
    _check_files(paths, "theory_phase_delta")
    _check_files(paths, "lm-cpu-quick_theory-vs-lm_frontiers")
    # the LM table has no non-compute-matched lambda study beyond {0, 0.5}: 3a is drawn from it
    assert any(p.name.startswith("lm-cpu-quick_lambda_fig3a-") for p in paths)


def test_missing_data_is_skipped_not_a_crash(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _main(["all", "--results", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "skip" in out and "0 files written" in out
    assert not (tmp_path / "out").exists()


def test_incomparable_eval_sets_are_refused(results, tmp_path, capsys):
    d = tmp_path / "res"
    df = frontier_rows("lm", PIPE, {"unmixed": 0.0, "mixed": 0.4}, seeds=[0])
    write_frontier(df, d / "lm/p/frontier.csv")
    for i, rid in enumerate(df["run_id"].unique()):
        atomic_write_json(d / f"lm/p/runs/{rid}/result.json", {"eval": {"fingerprint": "A" if i else "B"}})
    assert _main(["frontiers", "--results", str(d), "--out", str(tmp_path / "out")]) == 1
    assert "not comparable" in capsys.readouterr().out
    # the same runs with one fingerprint draw fine
    for rid in df["run_id"].unique():
        atomic_write_json(d / f"lm/p/runs/{rid}/result.json", {"eval": {"fingerprint": "A"}})
    assert _main(["frontiers", "--results", str(d), "--out", str(tmp_path / "out")]) == 0
    listed = json.loads((tmp_path / "out/figures.json").read_text())
    assert any(e["file"] == "lm-p_frontiers_fig2-general-music-chem.png" for e in listed["entries"])
    assert "lm-p_frontiers_fig2-general-music-chem.pdf" in listed["figures"]


def test_depth_profile_draws_one_bar_per_arm_when_several_lambdas_are_mixed(tmp_path, monkeypatch):
    """A preset that pretrains at two mixed lambdas (the synthetic world: 0.5 and 1) has two
    ``mixed`` rows per unit: the depth profile draws one bar per (method, lambda), with the
    values of that arm (read back from the bars), instead of failing on duplicate units."""
    import matplotlib.pyplot as plt
    import pandas as pd

    import figures.whatwhere as fw

    rows = []
    for method, lam, base in (("unmixed", 0.0, 0.1), ("mixed", 0.5, 0.2), ("mixed", 1.0, 0.3)):
        for j, unit in enumerate(("embeddings", "layers.0", "layers.1", "final_norm")):
            rows.append({"pipeline": "p", "method": method, "mix_fraction": lam, "ft_lr": 1e-3, "unit": unit,
                         "n_seeds": 5, "share_ret_undone": base + j / 100, "share_ft_gain_lost": base / 2})
    depth = pd.DataFrame(rows)
    seen = {}

    def grab(fig, out, name):
        from matplotlib.container import BarContainer

        ax = fig.axes[0]
        bars = [c for c in ax.containers if isinstance(c, BarContainer)]
        for container, label in zip(bars, [t.get_text() for t in ax.get_legend().get_texts()]):
            seen[label] = [round(float(b.get_height()), 6) for b in container]
        plt.close(fig)
        return []

    monkeypatch.setattr(fw, "save", grab)
    fw.depth_profile(depth, None, "p", tmp_path)
    assert seen == {"unmixed ($\\lambda$=0)": [0.1, 0.11, 0.12, 0.13],
                    "mixed ($\\lambda$=0.5)": [0.2, 0.21, 0.22, 0.23], "mixed ($\\lambda$=1)": [0.3, 0.31, 0.32, 0.33]}
