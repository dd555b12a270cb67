"""Saved checkpoints behave like Hugging Face models (special-token ids, generation config,
KV cache, model card) and a sweep's checkpoints are indexed in ``checkpoints.csv``."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import stat

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from early_exposure.io import atomic_write_json
from lm_experiments.engine.checkpoints import INDEX_COLUMNS, load_model, main, write_checkpoint_index
from lm_experiments.engine.model_card import card_extra, model_card, read_front_matter
from lm_experiments.data.tokenizer import train_bpe
from lm_experiments.engine.evaluate import save_checkpoint
from lm_experiments.engine.model import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

T = 16
EXTRA = {"stage": "post", "upstream_id": "u123", "pre_id": "p456", "seed": 3, "mix_fraction": 0.25,
         "setting": {"lr": 0.002, "dropout": 0.1}, "compute_matched": False, "losses": {"L_im": 2.5}}


@pytest.fixture(scope="module")
def tok():
    texts = ["the cat sat on the mat and the dog ran after it", "a b c d e f g hello world"] * 30
    return train_bpe(texts, 300)


@pytest.fixture(scope="module")
def saved(tok, tmp_path_factory):
    model = build_model("tiny-1m", vocab_size=len(tok), max_seq_len=T, seed=0, dropout=0.1)
    out = tmp_path_factory.mktemp("ck") / "model"
    save_checkpoint(model, tok, out, EXTRA)
    return model, out


def test_checkpoint_has_special_ids_generation_config_and_cache(tok, saved):
    model, out = saved
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)
    loaded = AutoModelForCausalLM.from_pretrained(out)
    c = loaded.config
    assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert c.use_cache is True and c.attention_dropout == 0.0
    g = GenerationConfig.from_pretrained(out)
    assert (g.bos_token_id, g.eos_token_id, g.pad_token_id) == (0, 1, 2) and g.use_cache is True
    assert loaded.generation_config.eos_token_id == tok.eos_token_id
    assert AutoTokenizer.from_pretrained(out).eos_token_id == tok.eos_token_id
    # the in-memory model used for training is untouched
    assert model.config.use_cache is False and model.config.eos_token_id is None
    assert model.config.attention_dropout == 0.1
    # loading to train turns the cache off again; the weights are the same
    t = load_model(out)
    assert t.config.use_cache is False
    x = torch.randint(3, len(tok), (2, T))
    model.eval()
    t.eval()
    with torch.no_grad():
        torch.testing.assert_close(t(x).logits, model(x).logits, rtol=0, atol=0)
    assert json.loads((out / "extra.json").read_text()) == EXTRA


def test_model_card_states_the_lineage(saved):
    _, out = saved
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: mit\nlibrary_name: transformers\n")
    for s in ("Post-training (stage 2) checkpoint", "upstream_id: u123", "pre_id: p456", "seed: 3",
              "mix_fraction: 0.25", "setting: lr=0.002, dropout=0.1", "compute_matched: false", "L_im: 2.5",
              "eos=1"):
        assert s in card, s
    meta = read_front_matter(card)
    assert meta["license"] == "mit" and meta["library_name"] == "transformers"
    lineage = meta["early_exposure"]
    assert {k: lineage[k] for k in EXTRA} == EXTRA  # the whole lineage, machine-readable
    assert lineage["package_version"] == importlib.metadata.version("early-exposure")
    assert len(card.splitlines()) < 80


def test_card_extra_picks_the_lineage_datasets_and_upstream():
    data = {"pre": {"source": "hf", "name": "org/web"}, "post": {"source": "local", "name": "post"},
            "ft": {"source": "synthetic", "name": "ft"}}
    post = {"stage": "post", "upstream_id": "u1", "pre_id": "p1", "seed": 2, "mix_fraction": 0.5,
            "compute_matched": False, "setting": {"lr": 0.001, "replay": 0.1}, "losses": {"L_im": 1.5},
            "train": {"steps": 7, "tokens": 448, "tokens_by_source": {"post": 400, "pre": 48}, "wall_s": 3.2,
                      "history": [1]}, "wall_s": 9.0, "items": {"x": 1}}
    e = card_extra(post, data)
    assert e["datasets"] == ["local:post", "org/web"]  # D_post, and D_pre replayed
    assert e["base_model"] == "upstream/pre-p1/model"
    assert e["train"] == {"steps": 7, "tokens": 448, "tokens_by_source": {"post": 400, "pre": 48}}
    assert "wall_s" not in e and "items" not in e  # deterministic lineage only
    pre = card_extra({"stage": "pre", "pre_id": "p1", "seed": 2, "mix_fraction": 0.0, "losses": {}}, data)
    assert pre["datasets"] == ["org/web"] and "base_model" not in pre
    ft = card_extra({"run_id": "r1", "upstream_id": "u1", "post_hparams": {"lr": 0.001}, "ft_lr": 1e-4}, data,
                    stage="ft")
    assert ft["datasets"] == ["synthetic:ft"] and ft["base_model"] == "upstream/post-u1/model"
    assert ft["setting"] == {"lr": 0.001} and ft["ft_lr"] == 1e-4
    meta = read_front_matter(model_card(e))
    assert meta["datasets"] == e["datasets"] and meta["base_model"] == e["base_model"]


def test_checkpoint_files_follow_the_umask(tok, tmp_path):
    saved_mask = os.umask(0o022)
    try:
        out = tmp_path / "m"
        save_checkpoint(build_model("tiny-1m", vocab_size=len(tok), max_seq_len=T, seed=1), tok, out, {"stage": "pre"})
    finally:
        os.umask(saved_mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert "model.safetensors" in modes and set(modes.values()) == {0o644}, modes


def test_generate_stops_at_eos(tok, saved):
    _, out = saved
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    eos = tok.eos_token_id
    prompt = torch.tensor([tok.encode("the cat sat")] * 2)
    n = prompt.shape[1]
    # logits set by hand (a hook on the head): token 5 for the first three new tokens, then
    # EOS by far the largest; generate must stop on the saved eos_token_id, not run to 50
    def steer(module, args, output):
        steer.calls += 1
        out = output.clone()
        target = 5 if steer.calls <= 3 else eos
        out[:, -1, :] = -1e4
        out[:, -1, target] = 1e4
        return out
    steer.calls = 0
    model.lm_head.register_forward_hook(steer)
    with torch.no_grad():
        y = model.generate(prompt, max_new_tokens=50)
    assert y.shape[1] < n + 50
    assert y.shape[1] == n + 4
    assert (y[:, -1] == eos).all() and (y[:, n:n + 3] == 5).all()


def _tree(out):
    """A hand-made sweep output: 2 pretraining runs (one diverged), a post-training run with a
    trajectory checkpoint, a compute-matched one, 2 fine-tuning runs (one with its model)."""
    def run(d, rec, model=True):
        atomic_write_json(out / d / "result.json", rec)
        if model:
            (out / d / "model").mkdir()

    run("upstream/pre-pa", {"stage": "pre", "pre_id": "pa", "seed": 0, "mix_fraction": 0.5, "diverged": False,
                            "losses": {"L_post_stage1": 4.0}, "model_dir": "model"})
    run("upstream/pre-pb", {"stage": "pre", "pre_id": "pb", "seed": 1, "mix_fraction": 0.0, "diverged": True,
                            "losses": {}, "model_dir": None}, model=False)
    run("upstream/post-ua", {"stage": "post", "upstream_id": "ua", "pre_id": "pa", "seed": 0, "mix_fraction": 0.5,
                             "compute_matched": False, "setting": {"lr": 0.002, "replay": 0.01, "lora": False},
                             "diverged": False, "losses": {"L_im": 2.5}, "model_dir": "model"})
    atomic_write_json(out / "upstream/post-ua/trajectory/step-000010/meta.json",
                      {"step": 10, "val_loss": 3.0, "L_im": 2.9})
    (out / "upstream/post-ua/trajectory/step-000010/model").mkdir()
    run("upstream/post-ub", {"stage": "post", "upstream_id": "ub", "pre_id": "pb", "seed": 1, "mix_fraction": 0.0,
                             "compute_matched": True, "setting": {"batch_size": 16, "lora": True}, "diverged": False,
                             "losses": {"L_im": 3.5}, "model_dir": "model"})
    run("runs/ra", {"run_id": "ra", "upstream_id": "ua", "pre_id": "pa", "seed": 0, "method": "mixed+replay",
                    "mix_fraction": 0.5, "compute_matched": False, "post_hparams": {"lr": 0.002, "replay": 0.01},
                    "ft_lr": 1e-4, "diverged": False, "losses": {"L_im": 2.5, "L_ret": 3.1}})
    run("runs/rb", {"run_id": "rb", "upstream_id": "ub", "pre_id": "pb", "seed": 1, "method": "unmixed+lora",
                    "mix_fraction": 0.0, "compute_matched": True, "post_hparams": {}, "ft_lr": 1e-3,
                    "diverged": False, "losses": {"L_im": 3.5}}, model=False)


def _rows(p):
    with open(p, newline="") as fh:
        return list(csv.DictReader(fh))


def test_checkpoint_index(tmp_path):
    out = tmp_path / "sweep"
    _tree(out)
    p = write_checkpoint_index(out)
    assert p == out / "checkpoints.csv"
    with open(p, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(INDEX_COLUMNS)
    got = [(r["stage"], r["id"], r["run_dir"], r["status"], r["method"], r["mix_fraction"], r["seed"],
            r["compute_matched"], r["L_im"], r["step"], r["model_dir"]) for r in rows]
    assert got == [
        ("pre", "pa", "upstream/pre-pa", "ok", "mixed", "0.5", "0", "", "", "", "upstream/pre-pa/model"),
        ("pre", "pb", "upstream/pre-pb", "diverged", "unmixed", "0.0", "1", "", "", "", ""),
        ("post", "ua", "upstream/post-ua", "ok", "mixed+replay", "0.5", "0", "False", "2.5", "",
         "upstream/post-ua/model"),
        ("post-trajectory", "ua", "upstream/post-ua/trajectory/step-000010", "ok", "mixed+replay", "0.5", "0",
         "False", "2.9", "10", "upstream/post-ua/trajectory/step-000010/model"),
        ("post", "ub", "upstream/post-ub", "ok", "unmixed+lora", "0.0", "1", "True", "3.5", "",
         "upstream/post-ub/model"),
        ("ft", "ra", "runs/ra", "ok", "mixed+replay", "0.5", "0", "False", "2.5", "", "runs/ra/model"),
        ("ft", "rb", "runs/rb", "ok", "unmixed+lora", "0.0", "1", "True", "3.5", "", ""),  # model not kept
    ]
    post = rows[2]
    assert json.loads(post["post_hparams"]) == {"lr": 0.002, "replay": 0.01, "lora": False}
    assert post["pre_id"] == "pa" and post["upstream_id"] == "ua" and post["ft_lr"] == ""
    ra = rows[5]
    assert ra["ft_lr"] == "0.0001" and json.loads(ra["post_hparams"]) == {"lr": 0.002, "replay": 0.01}
    assert (ra["L_ret"], ra["L_ft"]) == ("3.1", "") and json.loads(ra["losses"]) == {"L_im": 2.5, "L_ret": 3.1}
    assert json.loads(rows[0]["losses"]) == {"L_post_stage1": 4.0} and rows[0]["post_hparams"] == ""
    for r in rows:
        assert not r["model_dir"] or (out / r["model_dir"]).is_dir()
        assert (out / r["run_dir"]).is_dir()
    # an empty output directory gives a header-only index
    (tmp_path / "empty").mkdir()
    assert write_checkpoint_index(tmp_path / "empty").read_text().strip() == ",".join(INDEX_COLUMNS)


def test_damaged_run_is_listed_as_damaged(tmp_path):
    out = tmp_path / "sweep"
    _tree(out)
    (out / "runs/ra/result.json").write_text("{not json")
    rows = _rows(write_checkpoint_index(out))
    ra = next(r for r in rows if r["run_dir"] == "runs/ra")
    assert (ra["status"], ra["id"], ra["seed"], ra["model_dir"]) == ("damaged", "ra", "", "")
    assert len(rows) == 7


def test_index_command_rebuilds_every_preset_of_a_results_root(tmp_path, capsys):
    for preset in ("p1", "p2"):
        _tree(tmp_path / "res" / "lm" / preset)
    assert main(["--results", str(tmp_path / "res")]) == 0
    printed = capsys.readouterr().out
    for preset in ("p1", "p2"):
        idx = tmp_path / "res" / "lm" / preset / "checkpoints.csv"
        assert f"{idx}: 7 run(s)" in printed
        assert len(_rows(idx)) == 7
    assert main(["--results", str(tmp_path / "nowhere")]) == 2
    (tmp_path / "bare").mkdir()
    assert main(["--results", str(tmp_path / "bare")]) == 2
    assert "no LM results directory" in capsys.readouterr().err
