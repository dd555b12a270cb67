"""What is forgotten, on the synthetic world's exact-match items (docs/whatwhere.md): the
analysis scores D_post's and D_ft's capability queries (held-out phrasing) by greedy decoding,
so a 1->0 transition is a lost answer. Checked against the items' scorer applied directly to
the saved models (a second code path) on a tiny synthetic pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lm_experiments.analysis.whatwhere import main as whatwhere_main
from lm_experiments.cli import run
from lm_experiments.config import load_config
from lm_experiments.data import synthetic as S
from lm_experiments.data import synthetic_items as SI
from lm_experiments.engine.checkpoints import load_model
from lm_experiments.protocol.prepared import prepare

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_exact_match_transitions_equal_the_scorer_on_the_saved_models(tmp_path):
    cfg = yaml.safe_load(Path("configs/lm/cpu-quick-synth.yaml").read_text())
    cfg.update(seeds=[0], threads=1)
    cfg["pre"].update(tokens=32000, mix_fraction=[0.0, 1.0])
    cfg["post"].update(compute_matched=[], max_epochs=2)
    cfg["ft"].update(lr=[1.0e-3], tokens=2048, save_checkpoints=True)
    p = tmp_path / "synth.yaml"
    p.write_text(yaml.safe_dump(cfg))
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert run(["run", "--config", str(p), "--out", str(out), "--cache", str(cache), "--no-progress"]) == 0
    assert whatwhere_main([str(out), "--cache", str(cache)]) == 0
    info = json.loads((out / "whatwhere" / "items.json").read_text())
    c = load_config(p)
    world = S.build_world(c.data.synthetic)
    items = SI.synthetic_items(world, "test", "post")
    assert info["sets"]["post"] == {"corpus": "post", "kind": "exact", "n_items": len(items),
                                    "phrasing": "held-out (test)"}
    tok = prepare(c, cache_root=cache, progress=False, log=lambda _: None)[0].tokenizer
    t = pd.read_csv(out / "whatwhere" / "transitions.csv")
    for rec_path in sorted((out / "runs").glob("*/result.json")):
        rec = json.loads(rec_path.read_text())
        post = SI.exact_match(load_model(out / "upstream" / f"post-{rec['upstream_id']}" / "model"), items, tok)
        ft = SI.exact_match(load_model(rec_path.parent / "model"), items, tok)
        row = t.loc[(t["run_id"] == rec["run_id"]) & (t["pair"] == "post->ft") & (t["set"] == "post.em")].iloc[0]
        assert row["n"] == len(items)
        assert row["n_1->0"] == int(np.sum((post == 1) & (ft == 0)))
        assert row["n_0->1"] == int(np.sum((post == 0) & (ft == 1)))
        assert row["n_1->1"] == int(np.sum((post == 1) & (ft == 1)))
