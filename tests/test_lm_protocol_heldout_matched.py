"""Held-out data fit for the question, and the matched-L_im study on the LM side.

- Documents are cut into pieces (hand-made examples); the test split is disjoint from the
  training and validation splits and leaves validation membership where it was.
- Reported losses are measured on the test split (recomputed here with Hugging Face's own
  model and ``torch.nn.functional.cross_entropy``), early stopping on the validation split
  (the engine's recorded validation losses equal the recomputed validation loss of the
  saved trajectory checkpoints).
- The matched-L_im study: the trajectory checkpoints stop at the early-stopping step, the
  early-stopping checkpoint's L_im is theta_post's L_im, and fine-tuning it in the study
  repeats the regular fine-tuning run of theta_post at that lr bit for bit (a second code
  path through the same stage).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from lm_experiments.cli import run
from lm_experiments.data.shards import cut_document
from lm_tiny import write_corpora

SEQ = 16


def test_cut_document_hand_examples() -> None:
    assert cut_document("short", 10) == ["short"]
    # paragraphs gathered greedily up to the limit, separators kept inside a piece
    assert cut_document("aaa\n\nbbb\n\ncccc", 8) == ["aaa\n\nbbb", "cccc"]
    # a paragraph too long alone is cut at line ends, a line too long alone hard
    assert cut_document("x\n\n" + "l1\nl2\nl3", 5) == ["x", "l1\nl2", "l3"]
    assert cut_document("abcdefghij", 4) == ["abcd", "efgh", "ij"]
    text = "\n\n".join(f"paragraph {i} " + "w" * (i % 7) for i in range(50))
    pieces = cut_document(text, 60)
    assert all(len(p) <= 60 for p in pieces)
    assert "\n\n".join(pieces) == text  # no hard cut needed: the pieces rebuild the text


def _config(paths: dict[str, str], test_fraction: float) -> dict:
    data = {role: {"source": "local", "name": role, "path": p} for role, p in paths.items()}
    data |= {"vocab_size": 300, "seq_len": SEQ, "val_tokens": 128, "val_fraction": 0.15, "bpe_sample_chars": 20000}
    if test_fraction:
        data |= {"test_fraction": test_fraction, "test_tokens": 96}
    return {
        "data": data,
        "model": {"preset": "tiny-1m"},
        "pre": {"tokens": 6 * 4 * SEQ, "batch_size": 4, "mix_fraction": [0.0, 1.0], "optim": {"warmup_steps": 1},
                "checkpoint_every": 0},
        "post": {"sweep": {"lr": [3.0e-3], "batch_size": [4]}, "max_epochs": 6, "eval_every_epochs": 0.5,
                 "patience": 2, "post_train_tokens": 20 * SEQ, "optim": {"warmup_steps": 1, "min_lr": 1.0e-4}},
        "ft": {"lr": [1.0e-3, 3.0e-3], "tokens": 3 * 4 * SEQ, "batch_size": 4, "optim": {"warmup_steps": 0}},
        "matched": {"enabled": True, "max_checkpoints": 4},
        "eval": {"batch_size": 8},
        "seeds": [0],
        "device": "cpu",
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("heldout")
    paths = write_corpora(root)
    cfg_path = root / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(paths, 0.15)))
    out, cache = root / "out", root / "cache"
    rc = run(["run", "--config", str(cfg_path), "--out", str(out), "--cache", str(cache), "--no-progress"])
    return {"root": root, "paths": paths, "cfg": cfg_path, "out": out, "cache": cache, "rc": rc}


def _prepared(setup: dict, cfg_path: Path | None = None):
    from lm_experiments.config import load_config
    from lm_experiments.data import prepare_data

    cfg = load_config(cfg_path or setup["cfg"])
    return prepare_data(cfg.data, cache_root=setup["cache"], progress=False)


def test_test_split_disjoint_and_validation_unmoved(setup: dict, tmp_path: Path) -> None:
    data = _prepared(setup)
    plain_cfg = tmp_path / "plain.yaml"
    plain_cfg.write_text(yaml.safe_dump(_config(setup["paths"], 0.0)))
    plain = _prepared(setup, plain_cfg)
    for role in ("pre", "post", "ft"):
        s = data.splits[role]
        assert s.test is not None and s.test.shape == (96 // SEQ, SEQ)
        tr, va, te = s.train_doc_hashes, s.val_doc_hashes, s.test_doc_hashes
        assert te and tr.isdisjoint(te) and va.isdisjoint(te) and tr.isdisjoint(va)
        # the test split takes documents from training only: validation is where it was
        assert plain.splits[role].test is None
        assert va == plain.splits[role].val_doc_hashes
        assert te <= plain.splits[role].train_doc_hashes


def _ce(model_dir: Path, blocks: np.ndarray) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    x = torch.as_tensor(np.asarray(blocks), dtype=torch.long)
    with torch.no_grad():
        logits = model(input_ids=x).logits
    return float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)))


def _posts(out: Path) -> list[tuple[Path, dict]]:
    return [(p.parent, json.loads(p.read_text())) for p in sorted((out / "upstream").glob("post-*/result.json"))]


def test_reported_losses_on_test_split_early_stopping_on_validation(setup: dict) -> None:
    assert setup["rc"] == 0
    data = _prepared(setup)
    post_split = data.splits["post"]
    for d, res in _posts(setup["out"]):
        # L_im: theta_post's loss on the TEST blocks, not on the validation blocks
        assert res["losses"]["L_im"] == pytest.approx(_ce(d / "model", post_split.test), rel=1e-4)
        assert abs(res["losses"]["L_im"] - _ce(d / "model", post_split.val)) > 1e-6
        # each saved trajectory checkpoint: the engine's validation loss at that step is the
        # loss on the VALIDATION blocks; its L_im the loss on the test blocks
        hist = {h["step"]: h["val_loss"] for h in res["train"]["history"] if "val_loss" in h}
        metas = sorted((d / "trajectory").glob("step-*/meta.json"))
        assert len(metas) == len(hist) >= 3
        for mp in metas[:2]:
            m = json.loads(mp.read_text())
            assert m["val_loss"] == hist[m["step"]]
            assert m["val_loss"] == pytest.approx(_ce(mp.parent / "model", post_split.val), rel=1e-4)
            assert m["L_im"] == pytest.approx(_ce(mp.parent / "model", post_split.test), rel=1e-4)


def test_matched_study_repeats_regular_fine_tuning_at_early_stopping_step(setup: dict) -> None:
    out = setup["out"]
    table = pd.read_csv(out / "matched.csv")
    front = pd.read_csv(out / "frontier.csv")
    assert set(table["method"]) == {"unmixed", "mixed"} and (table["ft_lr"] == 1.0e-3).all()
    for d, res in _posts(out):
        best = res["train"]["best_step"]
        rows = table.loc[table["upstream_id"] == res["upstream_id"]].sort_values("post_step")
        assert 2 <= len(rows) <= 4 and rows["post_step"].max() == best  # up to and including early stopping
        assert list(rows["checkpoint"]) == list(range(len(rows)))
        last = rows.iloc[-1]
        assert last["L_im"] == pytest.approx(res["losses"]["L_im"], rel=1e-6)
        regular = front.loc[(front["upstream_id"] == res["upstream_id"]) & (front["ft_lr"] == 1.0e-3)].iloc[0]
        for col in ("L_ret", "L_ft", "L_pre"):
            assert last[col] == regular[col]  # same weights, data order and RNG: bitwise the same run
        # earlier checkpoints are different models: their fine-tuned losses differ
        assert rows.iloc[0]["L_ret"] != last["L_ret"]
