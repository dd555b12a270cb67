"""End-to-end three-stage pipeline on tiny local corpora (CLI in-process, CPU, ~tens of s).

References used: the saved theta_post is reloaded with Hugging Face's own
``AutoModelForCausalLM.from_pretrained`` and its loss on the held-out D_post blocks is
recomputed with ``torch.nn.functional.cross_entropy`` (a second code path) to check the
recorded L_im; token counts are checked against the configured budgets; the frontier is
read back through the shared schema validator.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from early_exposure.frontier import read_frontier
from lm_experiments.cli import run
from lm_tiny import write_corpora as _write_corpora

SEQ = 16


def _config(paths: dict[str, str]) -> dict:
    return {
        "data": {role: {"source": "local", "name": role, "path": p} for role, p in paths.items()}
        | {"vocab_size": 300, "seq_len": SEQ, "val_tokens": 128, "val_fraction": 0.1, "bpe_sample_chars": 20000},
        "model": {"preset": "tiny-1m"},
        "pre": {"tokens": 6 * 4 * SEQ, "batch_size": 4, "mix_fraction": [0.0, 1.0], "optim": {"warmup_steps": 1},
                "checkpoint_every": 0},
        "post": {"sweep": {"lr": [1.0e-3], "batch_size": [4]}, "extra": [{"replay": 0.1}, {"lora": True, "dropout": 0.05}],
                 "max_epochs": 2, "lora_rank": 4, "lora_alpha": 8,
                 "eval_every_epochs": 1.0, "patience": 1, "post_train_tokens": 20 * SEQ,
                 "compute_matched": [0.5], "optim": {"warmup_steps": 1, "min_lr": 1.0e-4}},
        "ft": {"lr": [1.0e-3, 1.0e6], "tokens": 3 * 4 * SEQ, "batch_size": 4, "optim": {"warmup_steps": 0}},
        "eval": {"batch_size": 8},
        "seeds": [0],
        "device": "cpu",
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.set_num_threads(1)  # tiny model: threads only add overhead (and contend in CI)
    root = tmp_path_factory.mktemp("lm_pipeline")
    paths = _write_corpora(root)
    cfg_path = root / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(paths)))
    out = root / "out"
    cache = root / "cache"
    rc = run(["run", "--config", str(cfg_path), "--out", str(out), "--cache", str(cache), "--no-progress"])
    return {"root": root, "cfg": cfg_path, "out": out, "cache": cache, "rc": rc}


def _results(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/result.json"))]


def test_end_to_end_writes_valid_frontier_and_run_json(setup: dict) -> None:
    assert setup["rc"] == 0
    out = setup["out"]
    df = read_frontier(out / "frontier.csv")  # shared schema validation
    assert not (out / "frontier.partial.csv").exists()  # only a complete sweep leaves frontier.csv
    # runs: lambda {0, 1} x (base, replay, lora) + compute-matched lambda 0.5, each at 2 ft lrs
    assert len(df) == 7 * 2
    assert set(df["side"]) == {"lm"} and set(df["pipeline"]) == {"pre>post>ft"}
    assert set(df["method"]) == {"unmixed", "unmixed+replay", "unmixed+dropout+lora", "mixed", "mixed+replay",
                                 "mixed+dropout+lora"}
    assert df["compute_matched"].sum() == 2 and set(df.loc[df["compute_matched"], "mix_fraction"]) == {0.5}
    assert df["run_id"].is_unique and df["upstream_id"].nunique() == 7
    # lr 1e6 diverges (AdamW decay factor 1 - 1e5 per step overflows): recorded, sweep continued
    bad = df[df["ft_lr"] == 1e6]
    good = df[df["ft_lr"] == 1e-3]
    assert bad["diverged"].all() and bad["L_ret"].isna().all()
    assert not good["diverged"].any()
    assert np.isfinite(good[["L_im", "L_ret", "L_ft", "L_pre"]].to_numpy()).all()
    # every loss is a plausible cross-entropy: below uniform over the vocabulary + margin
    assert (good[["L_im", "L_ret", "L_ft", "L_pre"]].to_numpy() < math.log(300) + 1).all()

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"]["complete"] and manifest["status"]["ft"]["done"] == 14
    for res in _results(out):
        assert res["seed"] == 0 and res["config"]["ft"]["lr"] == [1.0e-3, 1.0e6]
        assert "git_commit" in res["provenance"] and res["provenance"]["versions"]["torch"]
        assert res["data_fingerprint"] == manifest["data_fingerprint"]
        # tokens per stage: budgets rounded to full batches of 4 x SEQ
        assert res["tokens"]["pre"].get("pre", 0) + res["tokens"]["pre"].get("post", 0) == 6 * 4 * SEQ
        if res["mix_fraction"] == 1.0:
            assert res["tokens"]["pre"]["post"] == 20 * SEQ  # lambda = 1: one pass over D_post
        if res["compute_matched"]:  # 10 blocks in stage 1 + the other 10 in stage 2: one pass
            assert res["tokens"]["pre"]["post"] + res["tokens"]["post"]["post"] == 20 * SEQ
        if not res["diverged"]:
            assert res["tokens"]["ft"] == {"ft": 3 * 4 * SEQ}
            assert res["stages"]["ft"]["tokens_per_s"] > 0
            assert res["layerwise_change"] and all(v >= 0 for v in res["layerwise_change"].values())
            z = np.load(out / "runs" / res["run_id"] / "eval.npz")
            n_val = 128 // SEQ
            assert z["post_correct_stage3"].shape == (n_val, SEQ - 1) and z["post_correct_stage2"].dtype == bool
            # per-example losses average (equal-length blocks) to the recorded mean losses
            np.testing.assert_allclose(z["post_loss_stage3"].mean(), res["losses"]["L_ret"], rtol=1e-5)
            np.testing.assert_allclose(z["post_loss_stage2"].mean(), res["losses"]["L_im"], rtol=1e-5)


def test_theta_post_loads_in_hf_and_reproduces_L_im(setup: dict) -> None:
    from transformers import AutoModelForCausalLM

    from lm_experiments.data import prepare_data
    from lm_experiments.config import load_config

    out = setup["out"]
    res = next(r for r in _results(out) if not r["diverged"] and r["method"] == "mixed")
    model = AutoModelForCausalLM.from_pretrained(out / "upstream" / f"post-{res['upstream_id']}" / "model")
    model.eval()
    cfg = load_config(setup["cfg"])
    val = prepare_data(cfg.data, cache_root=setup["cache"], progress=False).splits["post"].val
    x = torch.as_tensor(val, dtype=torch.long)
    with torch.no_grad():
        logits = model(input_ids=x).logits  # (n, T, V)
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
    assert float(ce) == pytest.approx(res["losses"]["L_im"], rel=1e-4)
    # theta_pre is saved too and differs from theta_post (stage 2 trained)
    pre = AutoModelForCausalLM.from_pretrained(out / "upstream" / f"pre-{res['pre_id']}" / "model")
    assert not torch.equal(pre.model.norm.weight, model.model.norm.weight) or not torch.equal(
        pre.lm_head.weight, model.lm_head.weight)


def test_lora_upstream_is_merged_and_loads(setup: dict) -> None:
    from transformers import AutoModelForCausalLM

    out = setup["out"]
    res = next(r for r in _results(out) if r["method"] == "mixed+dropout+lora" and not r["diverged"])
    post_dir = out / "upstream" / f"post-{res['upstream_id']}"
    merged = AutoModelForCausalLM.from_pretrained(post_dir / "model")  # plain Llama: no adapters left
    assert not any("lora" in n for n, _ in merged.named_parameters())
    pre = AutoModelForCausalLM.from_pretrained(out / "upstream" / f"pre-{res['pre_id']}" / "model")
    # LoRA leaves q/k/v (not targeted, paper Table 9) untouched and changes o_proj
    layer_pre, layer_post = pre.model.layers[0].self_attn, merged.model.layers[0].self_attn
    assert torch.equal(layer_pre.q_proj.weight, layer_post.q_proj.weight)
    assert not torch.equal(layer_pre.o_proj.weight, layer_post.o_proj.weight)


def test_fallback_corpora_when_primary_unavailable(setup: dict, capsys, tmp_path: Path) -> None:
    cfg = yaml.safe_load(setup["cfg"].read_text())
    cfg["data_fallback"] = cfg["data"]
    cfg["data"] = {**cfg["data"], "pre": {"source": "hf", "name": "nobody/none", "path": str(tmp_path / "no.jsonl")}}
    cfg["fallback_set"] = ["ft.lr=[0.001]"]
    p = tmp_path / "fb.yaml"
    p.write_text(yaml.safe_dump(cfg))
    rc = run(["run", "--config", str(p), "--out", str(tmp_path / "o"), "--cache", str(setup["cache"]),
              "--no-progress", "--dry-run", "--probe"])
    text = capsys.readouterr().out
    assert rc == 0 and "using data_fallback" in text and "stage 3: 7 runs (lr [0.001])" in text


def test_rerun_skips_finished_and_recomputes_missing_identically(setup: dict, monkeypatch) -> None:
    out = setup["out"]
    before = (out / "frontier.csv").read_text()
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("**/result.json")}
    import lm_experiments.engine.train as engine

    def no_training(*a, **k):
        raise AssertionError("a finished run was retrained")

    monkeypatch.setattr(engine, "train", no_training)
    args = ["run", "--config", str(setup["cfg"]), "--out", str(out), "--cache", str(setup["cache"]), "--no-progress"]
    assert run(args) == 0
    assert (out / "frontier.csv").read_text() == before
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    monkeypatch.undo()
    # an interrupted stage-3 run (no result.json) is redone with the same losses (seeded)
    victim = next(r for r in _results(out) if not r["diverged"])
    (out / "runs" / victim["run_id"] / "result.json").unlink()
    assert run(args) == 0
    again = json.loads((out / "runs" / victim["run_id"] / "result.json").read_text())
    for k in ("L_ret", "L_ft", "L_pre"):
        assert again["losses"][k] == pytest.approx(victim["losses"][k], rel=1e-6)


@pytest.mark.parametrize("override, field", [
    ("pre.mix_fraction=[0.0,1.5]", "pre.mix_fraction[1]"),
    ("post.bogus=1", "post.bogus"),
    ("post.post_train_tokens=100000000", "post.post_train_tokens"),
    ("post.sweep.replay=[1.0]", "post.sweep.replay[0]"),
    ("data.post.path=/nonexistent/music.txt", "data.post.path"),
    ("pre.tokens=200", "pre.tokens"),
])
def test_bad_input_exits_2_before_training_and_writes_nothing(setup: dict, override: str, field: str,
                                                              capsys, monkeypatch, tmp_path: Path) -> None:
    import lm_experiments.engine.train as engine

    monkeypatch.setattr(engine, "train", lambda *a, **k: pytest.fail("training started"))
    out = tmp_path / "never"
    rc = run(["run", "--config", str(setup["cfg"]), "--out", str(out), "--cache", str(setup["cache"]),
              "--no-progress", "--set", override])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith(f"error: {field}:")
    assert not out.exists()


def test_dry_run_prints_plan_and_writes_nothing(setup: dict, capsys, tmp_path: Path) -> None:
    out = tmp_path / "dry"
    for probe in ([], ["--probe"]):  # from the config alone; with the data prepared and a timing probe
        rc = run(["run", "--config", str(setup["cfg"]), "--out", str(out), "--cache", str(setup["cache"]),
                  "--no-progress", "--dry-run", *probe])
        text = capsys.readouterr().out
        assert rc == 0 and not out.exists()
        assert "stage 1: 3 runs" in text and "stage 2: 7 runs" in text and "stage 3: 14 runs" in text
        assert ("estimated time on this machine" in text) == bool(probe)
        assert ("estimated disk" in text) != bool(probe)


@pytest.mark.parametrize("preset", ["cpu-quick", "cpu-seeds", "cpu-full", "gpu-135m", "gpu-1b", "gpu-confirm-synth"])
def test_presets_validate(preset: str) -> None:
    from lm_experiments.config import fallback_config, load_config
    from lm_experiments.engine.model import MODEL_PRESETS

    root = Path(__file__).resolve().parent.parent
    cfg = load_config(root / "configs" / "lm" / f"{preset}.yaml")
    assert cfg.model.preset in MODEL_PRESETS
    assert 0.0 in cfg.pre.mix_fraction and any(f > 0 for f in cfg.pre.mix_fraction)
    assert len(cfg.ft.lr) >= 3
    if preset == "cpu-seeds":  # the seed study: one stage-2 setting, >= 3 seeds, >= 3 lambdas (Sec. 4.1)
        assert len(cfg.seeds) >= 3 and len(cfg.pre.mix_fraction) >= 3
    else:  # a stage-2 sweep
        assert len(cfg.post.settings()) >= 3
    if preset == "gpu-confirm-synth":  # offline by construction: the generated world, no fallback needed
        assert cfg.precision == "bf16" and cfg.data.pre.source == "synthetic" and cfg.data_fallback is None
        assert cfg.train.compile and cfg.model.block == "fast" and cfg.matched.enabled and len(cfg.seeds) >= 3
    elif preset.startswith("gpu"):
        assert cfg.precision == "bf16" and cfg.data.pre.source == "hf"
        fb = fallback_config(cfg)  # the offline fallback is itself a valid config
        assert fb.data.pre.source == "embedded" and fb.data_fallback is None
    else:
        assert cfg.data.pre.source == "embedded" and cfg.device == "cpu"
    if preset == "cpu-full":
        assert len(cfg.seeds) >= 3 and len(cfg.post.compute_matched) >= 3


def test_command_line_set_wins_over_fallback_set(tmp_path: Path) -> None:
    """gpu-135m's fallback_set sizes pretraining for the offline corpora; an explicit --set of the
    same field keeps the user's value after the fallback, the other fallback entries still apply."""
    import yaml

    from lm_experiments.config import fallback_config, load_config

    path = Path(__file__).resolve().parent.parent / "configs" / "lm" / "gpu-135m.yaml"
    raw = yaml.safe_load(path.read_text())
    preset_fb = dict(item.split("=", 1) for item in raw["fallback_set"])
    assert "pre.tokens" in preset_fb and "ft.tokens" in preset_fb
    plain = fallback_config(load_config(path))
    assert plain.pre.tokens == int(float(preset_fb["pre.tokens"])) != 12_000_000
    fb = fallback_config(load_config(path, ["pre.tokens=12000000", "seeds=[0]"]))
    assert fb.pre.tokens == 12_000_000 and fb.seeds == (0,)
    assert fb.ft.tokens == int(float(preset_fb["ft.tokens"]))  # untouched entries still apply
    assert load_config(path, ["pre.tokens=12000000"]).pre.tokens == 12_000_000  # primary too


def test_interrupted_sweep_resumes_to_the_same_losses(setup: dict, monkeypatch, tmp_path: Path) -> None:
    """Kill the sweep inside a post-training run (after the engine's checkpoint at step 3),
    rerun: the run resumes from that checkpoint and every loss equals the uninterrupted sweep's."""
    import lm_experiments.engine.train as engine

    real_train = engine.train
    calls = {"n": 0}

    def interrupting_train(model, source, **kw):
        if kw["desc"].startswith("post") and calls["n"] == 0:
            calls["n"] += 1
            real_train(model, source, **{**kw, "stop_after_steps": 3})
            raise KeyboardInterrupt
        return real_train(model, source, **kw)

    out = tmp_path / "resumed"
    args = ["run", "--config", str(setup["cfg"]), "--out", str(out), "--cache", str(setup["cache"]), "--no-progress"]
    monkeypatch.setattr(engine, "train", interrupting_train)
    assert run(args) == 130  # interrupted (cli_main's code), finished work kept
    assert not (out / "frontier.csv").exists()
    assert list(out.glob("upstream/post-*/train_state/state.pt"))
    monkeypatch.setattr(engine, "train", real_train)
    assert run(args) == 0
    resumed = [json.loads(p.read_text()) for p in out.glob("upstream/post-*/result.json")]
    assert sorted(r["train"].get("resumed_from") or 0 for r in resumed)[-1] == 3
    a = read_frontier(setup["out"] / "frontier.csv").set_index("run_id").sort_index()
    b = read_frontier(out / "frontier.csv").set_index("run_id").sort_index()
    assert list(a.index) == list(b.index)
    np.testing.assert_allclose(b[["L_im", "L_ret", "L_ft", "L_pre"]].to_numpy(),
                               a[["L_im", "L_ret", "L_ft", "L_pre"]].to_numpy(), rtol=1e-6, equal_nan=True)
