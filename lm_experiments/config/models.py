"""The model presets: ``LlamaConfig`` keyword arguments by name (configuration, no torch).

``model.preset`` in a pipeline config names one of :data:`MODEL_PRESETS`;
:class:`lm_experiments.config.ModelSection` checks the name when the config is built, and the
engine (:func:`lm_experiments.engine.model.build_model`) builds it.
"""

from __future__ import annotations

from typing import Any

# Keyword arguments of ``LlamaConfig``. ``vocab_size`` and ``max_position_embeddings`` are
# defaults only: :func:`build_model` sets them from the tokenizer and the sequence length.
# What every preset shares with the SmolLM2 family: SiLU MLP, tied embeddings, RMSNorm eps,
# default RoPE at theta 10000.
_SMOLLM2_COMMON: dict[str, Any] = dict(
    hidden_act="silu", tie_word_embeddings=True, rms_norm_eps=1e-5,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
)


def _preset(**kw: Any) -> dict[str, Any]:
    return {**_SMOLLM2_COMMON, **kw}


MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # HuggingFaceTB/SmolLM2-135M config.json, except rope_theta 10000 / 2048 positions
    # (the paper pretrains at sequence 2048; the released file says 100000 / 8192).
    # ~134.5M parameters with vocab 49152.
    "smollm2-135m": _preset(
        hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
        intermediate_size=1536, vocab_size=49152, initializer_range=0.041667, max_position_embeddings=2048,
    ),
    # The paper's 1B model (Table 2, transcribed (T)): 24 layers, hidden 1728, 27 heads MHA,
    # intermediate 4608; SmolLM2 family conventions otherwise. ~0.94B parameters.
    "smollm2-1b-paper": _preset(
        hidden_size=1728, num_hidden_layers=24, num_attention_heads=27, num_key_value_heads=27,
        intermediate_size=4608, vocab_size=49152, initializer_range=0.02, max_position_embeddings=2048,
    ),
    # Tiny CPU presets, SmolLM2-shaped (GQA, SiLU, tied embeddings, head_dim 32).
    # Parameter counts at vocab 4096: 1.05M, 3.2M, 10.0M.
    "tiny-1m": _preset(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        intermediate_size=512, vocab_size=4096, initializer_range=0.041667, max_position_embeddings=256,
    ),
    # the CPU testbed's workhorse: ~3x fewer FLOPs per token than tiny-1m, so a 2-core
    # machine reaches ~2 tokens per parameter in stage 1 within the quick main job
    # (262k parameters at vocab 2048: 131k in the tied embedding, 131k in the blocks)
    "tiny-300k": _preset(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=256, vocab_size=2048, initializer_range=0.041667, max_position_embeddings=256,
    ),
    # the smallest preset with 4 layers (every CPU preset of the testbed has at least 4: a depth
    # profile needs more than two bars); ~1.05M parameters at vocab 4096, ~0.8M in the blocks
    "tiny-4l": _preset(
        hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
        intermediate_size=512, vocab_size=4096, initializer_range=0.041667, max_position_embeddings=256,
    ),
    "tiny-3m": _preset(
        hidden_size=192, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=3,
        intermediate_size=512, vocab_size=4096, initializer_range=0.041667, max_position_embeddings=256,
    ),
    "tiny-10m": _preset(
        hidden_size=288, num_hidden_layers=10, num_attention_heads=9, num_key_value_heads=3,
        intermediate_size=768, vocab_size=4096, initializer_range=0.041667, max_position_embeddings=512,
    ),
}
