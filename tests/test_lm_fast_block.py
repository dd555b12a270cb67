"""The fast Llama block against Hugging Face's ``LlamaForCausalLM`` (the reference), on CPU.

References: Hugging Face's own model on the same (random) weights -- logits, loss and
gradients; Hugging Face's own ``save_pretrained`` / ``from_pretrained`` for checkpoints; the
eager Hugging Face loss for the compiled fast path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from early_exposure.errors import ConfigError
from lm_experiments.engine.fast_llama import (
    FastAttention, FastLlamaForCausalLM, FastMLP, check_fast_config, rope_theta, saved_keys,
)
from lm_experiments.engine.losses import CausalLMLoss
from lm_experiments.engine.model import MODEL_PRESETS, build_fast_model, build_model, build_model_for_block, model_config

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*")]  # inductor's torch.jit notices

VOCAB, SEQ = 96, 24
#: MHA (tiny-1m, tiny-300k), GQA 6/3 (tiny-3m) and 9/3 (tiny-10m), SmolLM2-135M (GQA 9/3, 30 layers)
PRESETS = ["tiny-300k", "tiny-1m", "tiny-3m", "tiny-10m", "smollm2-135m"]
REL = 1e-5  # fp32: max |fast - hf| <= REL * max |hf|


def _random_hf(preset: str, seed: int, **overrides) -> LlamaForCausalLM:
    """Hugging Face's model of ``preset`` with every weight random (norm weights too)."""
    cfg = model_config(preset, vocab_size=VOCAB, max_seq_len=SEQ)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(1.0 + 0.2 * torch.randn_like(p) if "norm" in name else 0.08 * torch.randn_like(p))
    return model.eval()


def _batch(seed: int, rows: int = 3):
    """Token ids, a padding mask (row 1 left-padded, row 2 right-padded) and labels with -100
    wherever the label or the position predicting it is padding."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB, (rows, SEQ), generator=g)
    mask = torch.ones(rows, SEQ, dtype=torch.long)
    mask[1, :5] = 0
    mask[2, -7:] = 0
    labels = x.masked_fill(mask == 0, -100)
    labels[1, 5] = -100  # the first token after left padding is predicted from a pad position
    return x, mask, labels


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max()) / float(b.abs().max())


def _hf_named_grads(fast: FastLlamaForCausalLM) -> dict[str, torch.Tensor]:
    """The fast model's gradients under Hugging Face's parameter names (fused ones split here)."""
    cfg = fast.config
    hd = cfg.hidden_size // cfg.num_attention_heads
    q, kv, inter = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd, cfg.intermediate_size
    out = {}
    for name, p in fast.named_parameters():
        if name.endswith("self_attn.qkv.weight"):
            base = name[: -len("qkv.weight")]
            for part, g in zip(("q_proj", "k_proj", "v_proj"), p.grad.split([q, kv, kv])):
                out[f"{base}{part}.weight"] = g
        elif name.endswith("mlp.gate_up.weight"):
            base = name[: -len("gate_up.weight")]
            for part, g in zip(("gate_proj", "up_proj"), p.grad.split([inter, inter])):
                out[f"{base}{part}.weight"] = g
        else:
            out[name] = p.grad
    return out


@pytest.mark.parametrize("preset", PRESETS)
def test_logits_and_gradients_equal_hugging_face(preset):
    hf = _random_hf(preset, seed=1)
    fast = FastLlamaForCausalLM.from_hf(hf)
    attn = fast.model.layers[0].self_attn
    assert isinstance(attn, FastAttention) and isinstance(fast.model.layers[0].mlp, FastMLP)
    assert attn.num_kv_heads == MODEL_PRESETS[preset]["num_key_value_heads"]
    assert fast.tied  # every preset ties the head to the embedding
    x, mask, labels = _batch(seed=2)
    # causal batch, no padding
    ref, got = hf(input_ids=x).logits, fast(input_ids=x).logits
    rel = _rel(got, ref)
    print(f"{preset}: causal logits max rel diff {rel:.2e}")
    assert rel <= REL
    # padded batch: compared where there are tokens (padded positions are undefined in both)
    out_hf = hf(input_ids=x, attention_mask=mask, labels=labels)
    out_fast = fast(input_ids=x, attention_mask=mask, labels=labels)
    keep = mask.bool()
    rel = _rel(out_fast.logits[keep], out_hf.logits[keep])
    print(f"{preset}: padded logits max rel diff {rel:.2e}")
    assert rel <= REL
    assert float(out_fast.loss.detach()) == pytest.approx(float(out_hf.loss.detach()), rel=1e-6)
    # gradients after one backward of the padded batch's loss
    out_hf.loss.backward()
    out_fast.loss.backward()
    ref_grads = {n: p.grad for n, p in hf.named_parameters()}
    got_grads = _hf_named_grads(fast)
    assert set(got_grads) == set(ref_grads)
    worst = max(_rel(got_grads[n], g) for n, g in ref_grads.items())
    print(f"{preset}: gradients max rel diff (per tensor, vs its max) {worst:.2e}")
    for n, g in ref_grads.items():
        torch.testing.assert_close(got_grads[n], g, rtol=1e-4, atol=1e-5 * float(g.abs().max()), msg=n)


def test_rope_theta_and_head_dim_are_read_from_the_config():
    """A non-default RoPE base (SmolLM2's released 100000) in ``rope_parameters`` changes the
    logits, and the fast block follows Hugging Face there too."""
    hf = _random_hf("tiny-3m", seed=3, rope_parameters={"rope_type": "default", "rope_theta": 100000.0})
    fast = FastLlamaForCausalLM.from_hf(hf)
    assert rope_theta(fast.config) == 100000.0
    x, _, _ = _batch(seed=4)
    assert _rel(fast(input_ids=x).logits, hf(input_ids=x).logits) <= REL
    base = FastLlamaForCausalLM.from_hf(_random_hf("tiny-3m", seed=3))
    assert _rel(base(input_ids=x).logits, hf(input_ids=x).logits) > 1e-3  # the base matters


def test_checkpoints_round_trip_with_hugging_face(tmp_path):
    hf = _random_hf("tiny-3m", seed=5)
    fast = FastLlamaForCausalLM.from_hf(hf)
    x, mask, _ = _batch(seed=6)
    # the fast model's state dict has Hugging Face's names and tensors
    ref_state, state = hf.state_dict(), fast.state_dict()
    assert set(state) == set(ref_state)
    assert all(torch.equal(state[k], ref_state[k]) for k in ref_state)
    # fast -> files -> Hugging Face
    fast.save_pretrained(tmp_path / "fast")
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    assert saved_keys(tmp_path / "fast") == saved_keys(tmp_path / "hf")  # same key names in the file
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "fast").eval()
    assert type(loaded) is LlamaForCausalLM
    assert torch.equal(loaded(input_ids=x, attention_mask=mask).logits, hf(input_ids=x, attention_mask=mask).logits)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()  # still tied
    # Hugging Face's files -> fast
    back = FastLlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert _rel(back(input_ids=x).logits, hf(input_ids=x).logits) <= REL
    assert back.tied
    # the pipeline's own checkpoint writer and reader
    from lm_experiments.engine.checkpoints import load_model
    from lm_experiments.engine.evaluate import save_checkpoint

    save_checkpoint(fast, None, tmp_path / "ckpt", {})
    again = load_model(tmp_path / "ckpt", for_training=False)
    assert type(again) is LlamaForCausalLM
    assert torch.equal(again(input_ids=x).logits, hf(input_ids=x).logits)
    # load_state_dict with Hugging Face's keys into a differently initialised fast model
    other = build_fast_model("tiny-3m", vocab_size=VOCAB, max_seq_len=SEQ, seed=9).eval()
    other.load_state_dict(hf.state_dict())
    assert torch.equal(other(input_ids=x).logits, fast(input_ids=x).logits)


def test_untied_head_round_trips(tmp_path):
    hf = _random_hf("tiny-1m", seed=7)
    hf.lm_head.weight = torch.nn.Parameter(hf.model.embed_tokens.weight.detach().clone() * -0.5)
    hf.config.tie_word_embeddings = False
    fast = FastLlamaForCausalLM.from_hf(hf)
    assert not fast.tied
    x, _, _ = _batch(seed=8)
    assert _rel(fast(input_ids=x).logits, hf(input_ids=x).logits) <= REL
    fast.save_pretrained(tmp_path)
    assert "lm_head.weight" in saved_keys(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.lm_head.weight, hf.lm_head.weight)
    assert _rel(loaded(input_ids=x).logits, hf(input_ids=x).logits) <= REL


def test_build_fast_model_starts_from_build_models_weights():
    hf = build_model("tiny-1m", vocab_size=VOCAB, max_seq_len=SEQ, seed=11)
    fast = build_model_for_block("fast", "tiny-1m", vocab_size=VOCAB, max_seq_len=SEQ, seed=11)
    assert fast.training
    ref = hf.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in fast.state_dict().items())
    assert isinstance(build_model_for_block("hf", "tiny-1m", vocab_size=VOCAB, max_seq_len=SEQ, seed=0),
                      LlamaForCausalLM)


def test_bf16_residual_stream_with_fp32_master_weights():
    """Under CPU bf16 autocast: activations bf16 through the residual stream, weights and their
    gradients fp32, the loss close to Hugging Face's autocast loss (which keeps fp32 residuals)."""
    hf = _random_hf("tiny-3m", seed=12)
    fast = FastLlamaForCausalLM.from_hf(hf)
    x, _, labels = _batch(seed=13)
    seen = []
    handle = fast.model.layers[1].register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(input_ids=x, labels=labels)
        ref = hf(input_ids=x, labels=labels).loss
        hidden = fast.model(input_ids=x).last_hidden_state
    handle.remove()
    assert seen[0] == torch.bfloat16 and hidden.dtype == torch.bfloat16
    out.loss.backward()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in fast.parameters())
    assert float(out.loss.detach()) == pytest.approx(float(ref.detach()), rel=2e-2)


def test_loss_module_with_the_fast_model_chunked_equals_hf_plain():
    """CausalLMLoss recognises the fast model (body + plain head): the chunked loss and every
    gradient equal Hugging Face's plain loss on the same weights."""
    hf = _random_hf("tiny-3m", seed=14).train()
    fast = FastLlamaForCausalLM.from_hf(hf)
    x, _, _ = _batch(seed=15, rows=4)
    ref = CausalLMLoss(hf, cross_entropy="plain")(x)
    got = CausalLMLoss(fast, cross_entropy="chunked", chunk_tokens=20)(x)
    assert float(got.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    ref.backward()
    got.backward()
    grads = _hf_named_grads(fast)
    for n, p in hf.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-5 * float(p.grad.abs().max()), msg=n)


@pytest.mark.slow
def test_compiled_fast_model_equals_eager_hugging_face():
    """torch.compile (inductor, C++ on CPU) of the fast body with the compiled chunked loss:
    loss and gradients equal the eager Hugging Face plain loss's. (tiny-3m's GQA 6/3 shape
    cut to 2 layers: compile time grows with the unrolled layers.)"""
    hf = _random_hf("tiny-3m", seed=16, num_hidden_layers=2).train()
    fast = FastLlamaForCausalLM.from_hf(hf)
    x, _, _ = _batch(seed=17, rows=3)
    ref = CausalLMLoss(hf, cross_entropy="plain")(x)
    got = CausalLMLoss(fast, cross_entropy="chunked", chunk_tokens=16, compile=True)(x)
    assert float(got.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    ref.backward()
    got.backward()
    grads = _hf_named_grads(fast)
    for n, p in hf.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-5 * float(p.grad.abs().max()), msg=n)


def test_unsupported_configs_are_refused_naming_the_field():
    base = model_config("tiny-1m", vocab_size=VOCAB, max_seq_len=SEQ)
    for field, value, match in (
        ("hidden_act", "gelu", "model.hidden_act"),
        ("attention_bias", True, "model.attention_bias"),
        ("mlp_bias", True, "model.mlp_bias"),
        ("rope_parameters", {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}, "model.rope_parameters.rope_type"),
        ("rope_parameters", {"rope_type": "default", "rope_theta": -1.0}, "model.rope_parameters.rope_theta"),
        ("num_key_value_heads", 3, "model.num_key_value_heads"),
    ):
        cfg = LlamaConfig.from_dict(base.to_dict())
        setattr(cfg, field, value)
        with pytest.raises(ConfigError, match=match):
            check_fast_config(cfg)
        with pytest.raises(ConfigError, match=match):
            FastLlamaForCausalLM(cfg)
    with pytest.raises(ConfigError, match="model.block"):
        build_model_for_block("turbo", "tiny-1m", vocab_size=VOCAB, max_seq_len=SEQ, seed=0)
    with pytest.raises(ConfigError, match="model.preset"):
        build_fast_model("tiny-7b", vocab_size=VOCAB, max_seq_len=SEQ, seed=0)
    with pytest.raises(ConfigError, match="model"):
        FastLlamaForCausalLM.from_hf(torch.nn.Linear(2, 2))
    fast = build_fast_model("tiny-300k", vocab_size=VOCAB, max_seq_len=SEQ, seed=0)
    x, _, _ = _batch(seed=0)
    with pytest.raises(ConfigError, match="use_cache"):
        fast(input_ids=x, use_cache=True)
    with pytest.raises(ConfigError, match="attention_mask"):
        fast(input_ids=x, attention_mask=torch.ones(3, SEQ + 1))
    # every preset of the project is one the block implements, the 1B one included
    for preset in MODEL_PRESETS:
        check_fast_config(model_config(preset, vocab_size=49152, max_seq_len=2048))


def test_pipeline_with_the_fast_block_matches_the_reference_block(tmp_path):
    """``model.block: fast`` (stages 1 and 3 in the fast decoder) on a tiny CPU pipeline: the
    frontier's losses equal the reference block's run within float tolerance (fp32 on CPU: the
    two decoders compute the same function), the saved theta_pre loads as a plain Hugging Face
    model, and the run keys differ only where the block is named (stage 1, stage 3)."""
    import pandas as pd
    import yaml
    from transformers import AutoModelForCausalLM

    from lm_experiments.cli import run
    from lm_tiny import write_corpora

    paths = write_corpora(tmp_path)
    seq = 16
    base = {
        "data": {role: {"source": "local", "name": role, "path": p} for role, p in paths.items()}
        | {"vocab_size": 300, "seq_len": seq, "val_tokens": 128, "val_fraction": 0.1, "bpe_sample_chars": 20000},
        "pre": {"tokens": 4 * 4 * seq, "batch_size": 4, "mix_fraction": [0.5], "checkpoint_every": 0},
        "post": {"max_epochs": 1, "eval_every_epochs": 1.0, "patience": 1, "post_train_tokens": 12 * seq,
                 "checkpoint_every": 0, "sweep": {"lr": [3.0e-3], "batch_size": [4]}},
        "ft": {"lr": [1.0e-3], "tokens": 2 * 4 * seq, "batch_size": 4, "checkpoint_every": 0},
        "eval": {"batch_size": 8}, "seeds": [0], "device": "cpu", "threads": 1,
    }
    frames = {}
    for block in ("hf", "fast"):
        cfg = {**base, "model": {"preset": "tiny-1m", "block": block}}
        p = tmp_path / f"{block}.yaml"
        p.write_text(yaml.safe_dump(cfg))
        out = tmp_path / block
        assert run(["run", "--config", str(p), "--out", str(out), "--cache", str(tmp_path / "cache"),
                    "--no-progress"]) == 0
        frames[block] = pd.read_csv(out / "frontier.csv")
        pre_dirs = sorted((out / "upstream").glob("pre-*/model"))
        assert type(AutoModelForCausalLM.from_pretrained(pre_dirs[0])).__name__ == "LlamaForCausalLM"
    hf, fast = frames["hf"], frames["fast"]
    for col in ("L_im", "L_ret", "L_ft", "L_pre"):
        np.testing.assert_allclose(fast[col].to_numpy(), hf[col].to_numpy(), rtol=2e-4, err_msg=col)
    assert set(fast["run_id"]).isdisjoint(hf["run_id"])  # the block is part of the keys it changes
