"""Model presets, real dropout and LoRA against Hugging Face references.

References used: a separately constructed ``LlamaForCausalLM`` from a hand-written
``LlamaConfig``, ``AutoModelForCausalLM.from_pretrained`` of a saved checkpoint, the
released SmolLM2-135M parameter count, and hand formulas for parameter counts.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from early_exposure.errors import ConfigError
from lm_experiments.engine.device import autocast_context, resolve_device
from lm_experiments.engine.evaluate import save_checkpoint
from lm_experiments.engine.model import (
    LORA_TARGETS, MODEL_PRESETS, apply_lora, build_model, count_parameters, merge_lora, model_config, set_dropout,
)
from lm_experiments.engine.optim import OptimConfig
from lm_experiments.engine.train import train


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

V, T = 64, 16  # tiny vocabulary and sequence length for fast tests
CPU = torch.device("cpu")


def _tokens(seed: int, n: int = 4, t: int = T) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(seed).integers(0, V, size=(n, t)), dtype=torch.long)


def _hand_config() -> LlamaConfig:
    """tiny-1m written out independently of MODEL_PRESETS."""
    return LlamaConfig(vocab_size=V, hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, hidden_act="silu",
                       max_position_embeddings=T, rms_norm_eps=1e-5, tie_word_embeddings=True,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


def test_forward_matches_separately_built_hf_model_bitwise():
    model = build_model("tiny-1m", vocab_size=V, max_seq_len=T, seed=0)
    ref = LlamaForCausalLM(_hand_config())
    missing, unexpected = ref.load_state_dict(model.state_dict(), strict=True)
    assert not missing and not unexpected
    x = _tokens(1)
    ref.eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x).logits, ref(x).logits)
    # dropout was never set: train mode is the plain HF forward as well
    model.train()
    ref.train()
    with torch.no_grad():
        assert torch.equal(model(x).logits, ref(x).logits)


def test_saved_checkpoint_loads_with_auto_model(tmp_path):
    model = build_model("tiny-1m", vocab_size=V, max_seq_len=T, seed=3, dropout=0.1)
    save_checkpoint(model, None, tmp_path / "ckpt", {"note": "x"})
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    assert loaded.config.attention_dropout == 0.0  # dropout is a training setting, not saved
    assert model.config.attention_dropout == 0.1  # the live model keeps its setting
    x = _tokens(2)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)


def test_build_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = build_model("tiny-1m", vocab_size=V, max_seq_len=T, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    b = build_model("tiny-1m", vocab_size=V, max_seq_len=T, seed=5)
    c = build_model("tiny-1m", vocab_size=V, max_seq_len=T, seed=6)
    wa, wb, wc = (m.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert a.lm_head.weight is a.model.embed_tokens.weight  # tied as SmolLM2


def _meta_count(preset: str, vocab: int, seq: int) -> dict[str, int]:
    with torch.device("meta"):
        model = LlamaForCausalLM(model_config(preset, vocab_size=vocab, max_seq_len=seq))
    return count_parameters(model)


def test_smollm2_135m_matches_released_architecture():
    cfg = model_config("smollm2-135m", vocab_size=49152, max_seq_len=2048)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.intermediate_size, cfg.hidden_act, cfg.tie_word_embeddings, cfg.rms_norm_eps,
            cfg.initializer_range) == (576, 30, 9, 3, 1536, "silu", True, 1e-5, 0.041667)
    assert cfg.rope_parameters["rope_theta"] == 10000.0 and cfg.max_position_embeddings == 2048
    # hand formula: embedding + 30 * (q,o: d^2 each; k,v: d*192 each; MLP 3*d*1536; 2 norms) + final norm
    d = 576
    per_layer = 2 * d * d + 2 * d * 192 + 3 * d * 1536 + 2 * d
    expect = 49152 * d + 30 * per_layer + d
    counts = _meta_count("smollm2-135m", 49152, 2048)
    assert counts["total"] == expect == 134_515_008  # released model: ~134.5M
    assert counts["non_embedding"] == expect - 49152 * d


def test_paper_1b_and_tiny_presets_sizes():
    d = 1728
    per_layer = 4 * d * d + 3 * d * 4608 + 2 * d  # MHA: q, k, v, o all d x d
    assert _meta_count("smollm2-1b-paper", 49152, 2048)["total"] == 49152 * d + 24 * per_layer + d
    sizes = {p: _meta_count(p, 4096, 128)["total"] for p in ("tiny-1m", "tiny-3m", "tiny-10m")}
    assert 0.8e6 < sizes["tiny-1m"] < 1.3e6
    assert 2.5e6 < sizes["tiny-3m"] < 3.8e6
    assert 8e6 < sizes["tiny-10m"] < 12e6
    assert set(MODEL_PRESETS) >= {"smollm2-135m", "smollm2-1b-paper", "tiny-1m", "tiny-3m", "tiny-10m"}


def test_bad_model_inputs_raise_config_error():
    with pytest.raises(ConfigError, match="model.preset"):
        build_model("gpt-5", vocab_size=V, max_seq_len=T, seed=0)
    with pytest.raises(ConfigError, match="dropout"):
        build_model("tiny-1m", vocab_size=V, max_seq_len=T, seed=0, dropout=1.5)
    with pytest.raises(ConfigError, match="vocab_size"):
        build_model("tiny-1m", vocab_size=0, max_seq_len=T, seed=0)


def test_dropout_active_in_train_off_in_eval_and_zero_is_exact_hf():
    p = 0.2
    model = build_model("tiny-1m", vocab_size=V, max_seq_len=T, seed=0, dropout=p)
    ref = LlamaForCausalLM(_hand_config())
    ref.load_state_dict(model.state_dict())
    ref.eval()
    x = _tokens(4)
    with torch.no_grad():
        expect = ref(x).logits
        model.eval()
        assert torch.equal(model(x).logits, expect)  # eval: no dropout at all
        model.train()
        y1, y2 = model(x).logits, model(x).logits
        assert not torch.allclose(y1, y2) and not torch.allclose(y1, expect)
        set_dropout(model, 0.0)  # p = 0 removes everything: exactly HF's forward in train mode
        assert torch.equal(model(x).logits, expect)
        assert all(layer.self_attn.attention_dropout == 0.0 for layer in model.model.layers)


def test_residual_branch_dropout_rate_and_scaling():
    """Dropout on attention / MLP outputs: a fraction ~p of exact zeros, survivors scaled 1/(1-p)."""
    p = 0.25
    model = build_model("tiny-1m", vocab_size=V, max_seq_len=T, seed=0, dropout=p)
    seen: dict[str, list[torch.Tensor]] = {"attn": [], "mlp": []}
    layer = model.model.layers[1]
    # hooks registered after set_dropout's run after them and see the dropped outputs
    layer.self_attn.register_forward_hook(lambda m, a, o: seen["attn"].append(o[0].detach()))
    layer.mlp.register_forward_hook(lambda m, a, o: seen["mlp"].append(o.detach()))
    model.train()
    with torch.no_grad():
        model(_tokens(5, n=16))
    for key in ("attn", "mlp"):
        frac = float((seen[key][0] == 0).float().mean())  # 16*16*128 = 32768 elements
        assert abs(frac - p) < 0.02, (key, frac)  # binomial sd ~ 0.0024
    # kept values: exactly the eval-mode MLP output / (1 - p); mean preserved in expectation
    h = torch.randn(64, T, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.mlp.eval()
        clean = layer.mlp(h)
        layer.mlp.train()
        dropped = layer.mlp(h)
    kept = dropped != 0
    torch.testing.assert_close(dropped[kept], clean[kept] / (1 - p), rtol=1e-6, atol=1e-7)
    # mean preserved: averaged over 400 draws each element is within ~sd/sqrt(400) of clean
    torch.manual_seed(0)
    with torch.no_grad():
        avg = torch.stack([layer.mlp(h[:2]) for _ in range(400)]).mean(0)
    rel = float(torch.linalg.norm(avg - clean[:2]) / torch.linalg.norm(clean[:2]))
    assert rel < 0.06, rel  # expected sqrt(p / (1 - p) / 400) = 0.029


def test_attention_probability_dropout_is_active_in_train_mode():
    p = 0.3
    model = build_model("tiny-1m", vocab_size=V, max_seq_len=T, seed=0)
    model.set_attn_implementation("eager")  # eager attention returns the (dropped) probabilities
    set_dropout(model, p)
    probs: list[torch.Tensor] = []
    model.model.layers[0].self_attn.register_forward_hook(lambda m, a, o: probs.append(o[1].detach()))
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    with torch.no_grad():
        model.train()
        model(_tokens(6, n=32))
        model.eval()
        model(_tokens(6, n=32))
    train_p, eval_p = probs[0][..., causal], probs[1][..., causal]  # (b, h, #causal)
    assert float((eval_p == 0).float().mean()) == 0.0
    assert abs(float((train_p == 0).float().mean()) - p) < 0.02


def test_lora_targets_exactly_paper_modules():
    import peft

    model = apply_lora(build_model("tiny-1m", vocab_size=V, max_seq_len=T, seed=0), rank=4, alpha=8)
    wrapped = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)}
    assert wrapped == set(LORA_TARGETS) == {"o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"}
    n_wrapped = sum(isinstance(m, peft.tuners.lora.LoraLayer) for m in model.modules())
    assert n_wrapped == 2 * 4 + 1  # per layer o, gate, up, down; plus the head
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any(k in n for n in trainable for k in ("q_proj", "k_proj", "v_proj"))
    # rank r, alpha/r scaling
    head = model.base_model.model.lm_head
    assert head.lora_A["default"].weight.shape == (4, 128) and head.scaling["default"] == 2.0


def test_lora_targets_without_head_keep_the_tie_and_wrap_only_what_is_named():
    import peft

    from early_exposure.errors import ConfigError

    base = build_model("tiny-1m", vocab_size=V, max_seq_len=T, seed=0)
    model = apply_lora(base, rank=4, alpha=8, targets=("o_proj", "down_proj"))
    wrapped = [name for name, m in model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    assert sorted(w.rsplit(".", 1)[-1] for w in wrapped) == ["down_proj", "down_proj", "o_proj", "o_proj"]
    inner = model.base_model.model
    assert inner.lm_head.weight is inner.model.embed_tokens.weight  # not untied: no adapter on the head
    merged = merge_lora(model)
    assert merged.config.tie_word_embeddings and merged.lm_head.weight is merged.model.embed_tokens.weight
    with pytest.raises(ConfigError, match="lora.targets"):
        apply_lora(build_model("tiny-1m", vocab_size=V, max_seq_len=T, seed=0), targets=("o_proj", "wq"))


def test_lora_trains_only_adapters_and_merge_keeps_input_embedding(tmp_path):
    base = build_model("tiny-1m", vocab_size=V, max_seq_len=T, seed=0)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = apply_lora(base, rank=4, alpha=8)
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    class Src:
        def __len__(self) -> int:
            return 3

        def batch(self, step: int) -> np.ndarray:
            return _tokens(10 + step).numpy()

    res = train(model, Src(), optim=OptimConfig(lr=1e-2), ckpt_dir=tmp_path / "ck", device=CPU)
    assert res.steps == 3 and not res.diverged
    # every base tensor bitwise unchanged (the head got its own frozen copy of the embedding)
    after = {k.replace(".base_layer", ""): v for k, v in base.state_dict().items() if "lora_" not in k}
    assert set(before) == set(after)
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, lora_before[n])]
    assert len(changed) == len(lora_before)  # every adapter tensor moved
    x = _tokens(7)
    model.eval()
    with torch.no_grad():
        lora_logits = model(x).logits
    merged = merge_lora(model)
    assert isinstance(merged, LlamaForCausalLM) and not merged.config.tie_word_embeddings
    assert torch.equal(merged.model.embed_tokens.weight, before["model.embed_tokens.weight"])
    assert not torch.equal(merged.lm_head.weight, before["model.embed_tokens.weight"])
    merged.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(x).logits, lora_logits, rtol=1e-5, atol=1e-5)
    # the merged, untied model round-trips through save_pretrained
    save_checkpoint(merged, None, tmp_path / "merged", {})
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, lora_logits, rtol=1e-5, atol=1e-5)


def test_device_and_precision_policy():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="device"):
        resolve_device("tpu:0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match="precision"):
        autocast_context(CPU, "fp8")
    model = build_model("tiny-1m", vocab_size=V, max_seq_len=T, seed=0)
    x = _tokens(8)
    with torch.no_grad():
        with autocast_context(CPU, "bf16"):  # CPU: falls back to fp32
            assert model(x).logits.dtype == torch.float32
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with autocast_context(CPU, "bf16", cpu_bf16=True):  # explicitly asked
                assert model(x).logits.dtype == torch.bfloat16
