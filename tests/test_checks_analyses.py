"""Sample-wise forgetting and layerwise summaries read from LM-style run directories."""

import numpy as np
import pandas as pd
import pytest

from early_exposure.frontier import validate_frontier
from early_exposure.io import atomic_write_bytes, atomic_write_json
from paper_checks.analyses import forgetting_analysis, layerwise_analysis
from paper_checks.synthetic import frontier_rows


def _npz(**arrays):
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


@pytest.fixture()
def lm_dir(tmp_path):
    df = frontier_rows("lm", "g>m>c", {"unmixed": 0.0, "mixed": 0.3}, seeds=[0], n_upstream=1, ft_lrs=(1e-4,))
    df = validate_frontier(df)
    # stage-2 vs stage-3 correctness, (blocks, tokens) like lm_experiments writes them
    before = np.array([[1, 1, 1, 1, 0], [0, 0, 1, 1, 1]], bool)            # acc 0.7
    after = {"unmixed": np.array([[0, 0, 1, 1, 0], [0, 0, 0, 1, 1]], bool),  # 3 forgotten, 0 gained
             "mixed": np.array([[1, 1, 1, 0, 1], [0, 0, 1, 1, 1]], bool)}    # 1 forgotten, 1 gained
    for row in df.itertuples():
        d = tmp_path / "runs" / row.run_id
        atomic_write_bytes(d / "eval.npz", _npz(post_correct_stage2=before, post_correct_stage3=after[row.method],
                                                post_loss_stage2=np.zeros(2, np.float32)))
        change = {"group/embeddings": 0.01, "group/layers.0.attention": 0.02, "group/layers.0.mlp": 0.05,
                  "group/layers.1.mlp": 0.2 if row.method == "unmixed" else 0.1, "model.x.weight": 9.0}
        atomic_write_json(d / "result.json", {"layerwise_change": change, "data_fingerprint": "abc"})
    return df, tmp_path


def test_forgetting_per_method_matches_hand_counts(lm_dir):
    df, root = lm_dir
    res = forgetting_analysis(df, root)
    t = pd.DataFrame(res["table"]).set_index("method").rename(index=lambda m: m.split(" ")[0])
    assert t.loc["unmixed", "forgetting"] == pytest.approx(3 / 10)
    assert t.loc["unmixed", "forgetting_relative"] == pytest.approx(3 / 7)
    assert t.loc["unmixed", "backward_transfer"] == 0.0
    assert t.loc["mixed", "forgetting"] == pytest.approx(1 / 10)
    assert t.loc["mixed", "backward_transfer"] == pytest.approx(1 / 10)
    assert t.loc["mixed", "acc_after"] == pytest.approx(0.7) and int(t.loc["mixed", "runs"]) == 1


def test_layerwise_summary(lm_dir):
    df, root = lm_dir
    t = pd.DataFrame(layerwise_analysis(df, root)["table"]).set_index("method").rename(index=lambda m: m.split(" ")[0])
    assert t.loc["unmixed", "most_changed"] == "mlp"
    assert t.loc["unmixed", "mean_mlp"] == pytest.approx((0.05 + 0.2) / 2)
    assert int(t.loc["unmixed", "most_changed_layer"]) == 1
    assert t.loc["mixed", "mean_attention"] == pytest.approx(0.02)


def test_absent_arrays_say_no_data(tmp_path):
    df = validate_frontier(frontier_rows("lm", "p", {"unmixed": 0.0}, seeds=[0], n_upstream=1))
    assert forgetting_analysis(df, tmp_path)["note"].startswith("no data")
    assert layerwise_analysis(df, tmp_path)["note"].startswith("no data")
    assert forgetting_analysis(None, tmp_path)["table"] == []
