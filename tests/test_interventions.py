"""The stage-2 intervention registry (early_exposure.interventions): adding an intervention is
one registry entry plus its wiring in the stage function, and the new intervention then shows
in the plan, the frontier table, a figure legend and a check.

The new entry must exist before the LM side builds its post-training axes (at import), so the
end-to-end test runs in a fresh interpreter: the script registers ``noise`` (Gaussian noise
of a given scale added to theta_pre's weights before post-training), wires it around the
post-training stage function, runs a tiny pipeline that sweeps it, and reports what it sees.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from early_exposure import interventions
from early_exposure.frontier import check_method, method_name
from lm_tiny import write_corpora

REPO = Path(__file__).resolve().parent.parent
SEQ = 16

SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    import early_exposure.interventions as iv

    # 1. the registry entry
    iv.INTERVENTIONS = iv.INTERVENTIONS + (iv.Intervention(
        "noise", "weight noise", float, 0.0, "n={:g}", ("tab:red", "tab:pink"),
        {"on_top": "a test's section", "alone_less": "a test's section"}, lo=0.0, hi=1.0),)

    import torch
    from lm_experiments.protocol import stages
    from lm_experiments.protocol.plan import make_plan
    from lm_experiments.protocol.prepared import data_sizes, prepare
    from lm_experiments.config import load_config
    from lm_experiments.cli import run

    # 2. its wiring in the stage function: theta_pre plus noise, then post-training as usual
    real_post = stages.STAGE_FUNCTIONS["post"]
    def post_with_noise(ctx, r):
        scale = r.setting.noise
        if scale:
            load = ctx.load
            def noisy(path):
                m = load(path)
                g = torch.Generator().manual_seed(r.pre.seed)
                with torch.no_grad():
                    for p in m.parameters():
                        p.add_(scale * torch.randn(p.shape, generator=g))
                return m
            ctx.load = noisy
        try:
            return real_post(ctx, r)
        finally:
            ctx.__dict__.pop("load", None)
    stages.STAGE_FUNCTIONS["post"] = post_with_noise

    cfg_path, out, cache, results = map(Path, sys.argv[1:5])
    assert run(["run", "--config", str(cfg_path), "--out", str(out), "--cache", str(cache), "--no-progress"]) == 0

    # what the plan holds
    cfg = load_config(cfg_path)
    prepared, _, cfg = prepare(cfg, cache_root=cache, progress=False, log=lambda _: None)
    plan = make_plan(cfg, data_sizes(prepared), prepared.fingerprint)
    plan_noise = sorted({p.setting.noise for p in plan.post})
    labels = sorted({p.setting.label() for p in plan.post})

    # the frontier table
    import pandas as pd
    df = pd.read_csv(out / "frontier.csv")
    methods = sorted(df["method"].unique())
    noisy_ids = sorted(df.loc[df["method"].str.contains("noise"), "upstream_id"].unique())
    plain_ids = sorted(df.loc[~df["method"].str.contains("noise"), "upstream_id"].unique())

    # a figure legend: the frontier figures of a results tree holding this table
    import figures.frontiers as ff
    legends = []
    def grab(fig, out_dir, name):
        for ax in fig.axes:
            leg = ax.get_legend()
            if leg is not None:
                legends.append([name, [t.get_text() for t in leg.get_texts()]])
        import matplotlib.pyplot as plt
        plt.close(fig)
        return []
    ff.save = grab
    lm_dir = results / "lm" / "tiny"
    lm_dir.mkdir(parents=True)
    (lm_dir / "frontier.csv").write_bytes((out / "frontier.csv").read_bytes())
    ff.frontier_figures(results, results / "figures", log=lambda _: None)

    # a check
    from paper_checks.checks_frontier import frontier_checks
    from paper_checks import CheckOptions
    rows = frontier_checks(df, "lm", "lm.tiny", CheckOptions())
    checks = sorted(r["id"] for r in rows if "noise" in r["id"])
    print(json.dumps({"plan_noise": plan_noise, "labels": labels, "methods": methods, "noisy_ids": noisy_ids,
                      "plain_ids": plain_ids, "legends": legends, "checks": checks}))
''')


def test_a_new_intervention_is_one_entry_plus_its_wiring(tmp_path):
    paths = write_corpora(tmp_path)
    cfg = {
        "data": {role: {"source": "local", "name": role, "path": p} for role, p in paths.items()}
        | {"vocab_size": 300, "seq_len": SEQ, "val_tokens": 128, "val_fraction": 0.1, "bpe_sample_chars": 20000},
        "pre": {"tokens": 4 * 4 * SEQ, "batch_size": 4, "mix_fraction": [0.0, 0.5], "checkpoint_every": 0},
        "post": {"max_epochs": 1, "eval_every_epochs": 1.0, "patience": 1, "post_train_tokens": 12 * SEQ,
                 "checkpoint_every": 0, "sweep": {"lr": [3.0e-3], "batch_size": [4], "noise": [0.0, 0.05]}},
        "ft": {"lr": [1.0e-3], "tokens": 2 * 4 * SEQ, "batch_size": 4, "checkpoint_every": 0},
        "eval": {"batch_size": 8}, "seeds": [0], "device": "cpu", "threads": 1,
    }
    cfg_path = tmp_path / "noise.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(cfg_path), str(tmp_path / "out"), str(tmp_path / "cache"),
                           str(tmp_path / "results")], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    # the plan sweeps the new axis, and its runs carry it in their label
    assert seen["plan_noise"] == [0.0, 0.05]
    assert any("n=0.05" in lab for lab in seen["labels"])
    # the frontier table names it, on both pretraining arms; its runs are other runs than the plain ones
    assert seen["methods"] == ["mixed", "mixed+noise", "unmixed", "unmixed+noise"]
    assert seen["noisy_ids"] and not set(seen["noisy_ids"]) & set(seen["plain_ids"])
    # a figure legend shows it (the registry's per-intervention figure)
    noise_legends = [labels for name, labels in seen["legends"] if "_frontiers_intervention-noise" in name]
    assert noise_legends and {"mixed+noise", "unmixed+noise"} <= {t.split(" ")[0] for t in noise_legends[0]}
    # the (d) checks the entry names exist for it
    assert any(c.endswith("noise_on_top.ret_ft") or "noise_on_top" in c for c in seen["checks"])
    assert any("noise_alone_less" in c for c in seen["checks"])


def test_the_registry_fixes_suffix_order_and_colours():
    """Method names follow the registry order whatever order the flags come in, and every
    registered intervention has a colour on each arm (the figures' legend)."""
    names = [i.name for i in interventions.registry()]
    assert names == ["replay", "dropout", "lora"]
    assert method_name(True, lora=True, replay=True) == "mixed+replay+lora"
    assert method_name(False, dropout=True, replay=True, lora=False) == "unmixed+replay+dropout"
    cols = interventions.colours()
    for i in interventions.registry():
        assert {f"unmixed+{i.name}", f"mixed+{i.name}"} <= set(cols)
    check_method("mixed+replay+dropout")
    import pytest

    with pytest.raises(ValueError, match="suffixes"):
        check_method("mixed+noise")
    with pytest.raises(KeyError, match="registered"):
        method_name(True, noise=True)
