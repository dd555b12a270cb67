"""Llama-style language models of the paper (Sec. 3 / App. B) as Hugging Face modules.

The model IS ``transformers.LlamaForCausalLM``: presets are plain ``LlamaConfig`` keyword
dicts, so every checkpoint loads with ``AutoModelForCausalLM.from_pretrained``. What this
module adds is the project's own part:

* :data:`MODEL_PRESETS` -- SmolLM2-135M as released (but rope_theta 10000 at sequence 2048,
  as the paper pretrained), the paper's 1B model (Table 2 as transcribed)
  and tiny CPU presets.
* :func:`build_model` -- seeded construction that does not disturb the caller's RNG.
* :func:`set_dropout` -- real dropout inside the network for post-training (Sec. 4.4):
  attention-probability dropout (``LlamaConfig.attention_dropout``) plus dropout on the
  outputs of the attention and MLP residual branches (forward hooks on ``self_attn`` and
  ``mlp``), active in ``train()`` and off in ``eval()``.
* :func:`apply_lora` / :func:`merge_lora` -- LoRA through ``peft`` with the paper's Table 9
  targets (o_proj, gate/up/down_proj and lm_head; not q/k/v).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from early_exposure.errors import ConfigError

if TYPE_CHECKING:  # peft is imported lazily: it is slow to import and only LoRA runs need it
    import peft

from lm_experiments.config.models import MODEL_PRESETS

# Paper Table 9: LoRA on the attention output projection, the MLP and the head; not Q/K/V
# (defined with the config, which validates ``post.lora_targets`` against LORA_MODULES).
from lm_experiments.config import LORA_MODULES, LORA_TARGETS


def model_config(preset: str, *, vocab_size: int, max_seq_len: int, dropout: float = 0.0) -> LlamaConfig:
    """The ``LlamaConfig`` of ``preset`` with the tokenizer's vocabulary and the run's length."""
    if preset not in MODEL_PRESETS:
        raise ConfigError("model.preset", f"unknown preset {preset!r}; choose one of {sorted(MODEL_PRESETS)}")
    if not isinstance(vocab_size, int) or vocab_size < 2:
        raise ConfigError("model.vocab_size", f"must be an integer >= 2, got {vocab_size!r}")
    if not isinstance(max_seq_len, int) or max_seq_len < 2:
        raise ConfigError("model.max_seq_len", f"must be an integer >= 2, got {max_seq_len!r}")
    _check_p(dropout)
    kwargs = dict(MODEL_PRESETS[preset])
    kwargs["rope_parameters"] = dict(kwargs["rope_parameters"])
    kwargs.update(vocab_size=vocab_size, max_position_embeddings=max_seq_len, attention_dropout=0.0,
                  use_cache=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return LlamaConfig(**kwargs)


def build_model(preset: str, *, vocab_size: int, max_seq_len: int, seed: int, dropout: float = 0.0) -> LlamaForCausalLM:
    """A freshly initialised ``LlamaForCausalLM`` of ``preset`` (fp32, on CPU, train mode).

    Initialisation is a pure function of ``seed``: it runs under ``torch.random.fork_rng``
    with ``torch.manual_seed(seed)``, so the caller's global RNG state is left untouched.

    Args:
        preset: a key of :data:`MODEL_PRESETS`.
        vocab_size: the tokenizer's vocabulary size.
        max_seq_len: training sequence length (RoPE positions).
        seed: root seed of the initialisation.
        dropout: post-training dropout, applied with :func:`set_dropout`.
    """
    config = model_config(preset, vocab_size=vocab_size, max_seq_len=max_seq_len)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = LlamaForCausalLM(config)
    model.train()
    set_dropout(model, dropout)
    return model


def _check_p(p: float) -> None:
    if not isinstance(p, (int, float)) or not 0.0 <= float(p) < 1.0:
        raise ConfigError("dropout", f"must be a probability in [0, 1), got {p!r}")


def _llama_core(model: nn.Module) -> LlamaForCausalLM:
    """The ``LlamaForCausalLM`` inside ``model`` (itself, or the base of a ``PeftModel``)."""
    for module in model.modules():  # the fast model has the same interface (config, model, lm_head)
        if isinstance(module, LlamaForCausalLM) or getattr(module, "is_fast_llama", False):
            return module
    raise ConfigError("model", f"expected a LlamaForCausalLM (or a PeftModel of one), got {type(model).__name__}")


def _residual_dropout_hook(p: float):
    """Forward hook: dropout on a residual-branch output (tensor, or first tuple element)."""

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        if not module.training:
            return output
        if isinstance(output, tuple):  # LlamaAttention returns (attn_output (b, t, d), attn_weights)
            return (F.dropout(output[0], p, training=True),) + tuple(output[1:])
        return F.dropout(output, p, training=True)  # LlamaMLP output (b, t, d)

    return hook


def set_dropout(model: nn.Module, p: float) -> None:
    """Turn real dropout on (``p > 0``) or off (``p == 0``) inside the network.

    Post-training dropout (paper Sec. 4.4): (i) attention-probability dropout via
    ``LlamaConfig.attention_dropout`` (read by every ``LlamaAttention``), and (ii) dropout
    with rate ``p`` on the outputs of the attention and MLP residual branches, i.e.
    ``h <- h + Dropout(Attn(norm(h)))`` and ``h <- h + Dropout(MLP(norm(h)))``, installed as
    forward hooks on ``self_attn`` and ``mlp`` (so it also works under ``peft``, which
    wraps only the linear layers inside them). Dropout is active in ``train()`` mode only.
    ``p == 0`` removes the hooks: the forward is then exactly Hugging Face's.
    Hooks are not serialised; :func:`lm_experiments.engine.evaluate.save_checkpoint` saves
    ``attention_dropout=0`` so a reloaded model carries no half-applied dropout.
    """
    _check_p(p)
    p = float(p)
    core = _llama_core(model)
    for handle in getattr(core, "_ee_dropout_handles", []):
        handle.remove()
    core._ee_dropout_handles = []
    core.config.attention_dropout = p
    for layer in core.model.layers:
        layer.self_attn.attention_dropout = p
        if p > 0.0:
            core._ee_dropout_handles.append(layer.self_attn.register_forward_hook(_residual_dropout_hook(p)))
            core._ee_dropout_handles.append(layer.mlp.register_forward_hook(_residual_dropout_hook(p)))


def get_dropout(model: nn.Module) -> float:
    """The dropout rate set by :func:`set_dropout` (0.0 if none)."""
    return float(_llama_core(model).config.attention_dropout or 0.0)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts: ``total`` (tied tensors once), ``non_embedding`` (total minus the
    token embedding and an untied head), ``trainable`` (``requires_grad``)."""
    seen: dict[int, tuple[str, nn.Parameter]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        seen.setdefault(id(p), (name, p))
    total = sum(p.numel() for _, p in seen.values())
    embedding = sum(
        p.numel() for name, p in seen.values()
        if name.endswith("embed_tokens.weight") or name.endswith("lm_head.weight")
        or name.endswith("lm_head.base_layer.weight")
    )
    trainable = sum(p.numel() for _, p in seen.values() if p.requires_grad)
    return {"total": total, "non_embedding": total - embedding, "trainable": trainable}


def train_flops_per_token(model: nn.Module, seq_len: int, *, causal: bool = False) -> float:
    """Training FLOPs per token, ``6 N + 12 L d T`` (PaLM, App. B; the usual MFU convention).

    ``N`` = non-embedding parameters plus the output head's matmul (``V d``, tied or not);
    ``12 L d T`` is attention's score and value matmuls over the full (not causal) ``T x T``
    matrix, forward and backward (:func:`train_flops_per_token_causal`: half of it, ``6 L d T``,
    the causal convention). For smollm2-135m at T = 2048: 1.232 GFLOP/token.

    What runs is counted: a trainable weight costs 6 FLOPs per token (forward 2, input gradient
    2, weight gradient 2), a frozen one 4 (no weight gradient), so a LoRA run counts its frozen
    base weights (and the head's frozen copy) at 4 and its adapters at 6. Every frozen weight is
    assumed to pass its input gradient on (the first layer's attention, whose input needs no
    gradient, is over-counted by at most its 2 N share: below 1/L of the attention weights).
    """
    core = _llama_core(model)
    cfg = core.config
    frozen = trainable = 0
    head_trainable = False
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        if name.endswith("embed_tokens.weight"):
            continue  # a lookup, no matmul
        if name.endswith("lm_head.weight") or name.endswith("lm_head.base_layer.weight"):
            head_trainable = p.requires_grad
            continue  # counted as V d below (tied or not)
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    if core.lm_head.weight is core.model.embed_tokens.weight or cfg.tie_word_embeddings:
        head_trainable = core.model.embed_tokens.weight.requires_grad
    head = cfg.vocab_size * cfg.hidden_size
    if head_trainable:
        trainable += head
    else:
        frozen += head
    attention = (6.0 if causal else 12.0) * cfg.num_hidden_layers * cfg.hidden_size * seq_len
    return 6.0 * trainable + 4.0 * frozen + attention


def train_flops_per_token_causal(model: nn.Module, seq_len: int) -> float:
    """:func:`train_flops_per_token` with attention's matmuls over the causal half of the
    ``T x T`` matrix (``6 L d T`` instead of ``12 L d T``): the FLOPs a causal kernel runs."""
    return train_flops_per_token(model, seq_len, causal=True)


def untie_head(model: LlamaForCausalLM) -> None:
    """Give ``lm_head`` its own copy of the (tied) embedding matrix; same function, two tensors."""
    if model.lm_head.weight is model.model.embed_tokens.weight or model.config.tie_word_embeddings:
        model.lm_head.weight = nn.Parameter(model.model.embed_tokens.weight.detach().clone(),
                                            requires_grad=model.model.embed_tokens.weight.requires_grad)
        model.config.tie_word_embeddings = False
        # transformers re-ties on some code paths when this map is non-empty
        model._tied_weights_keys = {}


def apply_lora(model: LlamaForCausalLM, *, rank: int = 64, alpha: int = 128, dropout: float = 0.0,
               targets: tuple[str, ...] = LORA_TARGETS) -> "peft.PeftModel":
    """Wrap ``model`` with LoRA adapters (paper App. B.3, Table 9: rank 64, alpha 128).

    Targets ``targets``, by default ``o_proj``, ``gate_proj``, ``up_proj``, ``down_proj`` and
    ``lm_head`` (not q/k/v); every base weight is frozen, only ``lora_A``/``lora_B`` train.

    Tied embeddings: SmolLM2 ties ``lm_head`` to ``embed_tokens``. An adapter on a tied head
    must change the output projection only; a merge into the shared tensor would silently
    change the input embedding too. We therefore untie first (``lm_head`` gets a frozen copy
    of the embedding matrix, ``tie_word_embeddings=False``): the forward is unchanged,
    the LoRA update ``W + (alpha/r) B A`` acts on the head only, and :func:`merge_lora`
    yields an untied model whose input embedding is bitwise the pre-LoRA one.
    ``model`` is modified in place (untied) and wrapped.
    """
    import peft

    if not isinstance(rank, int) or rank < 1:
        raise ConfigError("lora.rank", f"must be a positive integer, got {rank!r}")
    if not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ConfigError("lora.alpha", f"must be positive, got {alpha!r}")
    _check_p(dropout)
    if not isinstance(model, LlamaForCausalLM):
        raise ConfigError("model", f"apply_lora expects a LlamaForCausalLM, got {type(model).__name__}")
    bad = [t for t in targets if t not in LORA_MODULES]
    if not targets or bad:
        raise ConfigError("lora.targets", f"must be module names from {list(LORA_MODULES)}, got {list(targets)!r}")
    if "lm_head" in targets:
        untie_head(model)
    cfg = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=float(dropout),
                          target_modules=list(targets), bias="none", task_type="CAUSAL_LM")
    return peft.get_peft_model(model, cfg)


def merge_lora(model: nn.Module) -> LlamaForCausalLM:
    """Fold the adapters into the base weights (``W <- W + (alpha/r) B A``) and unwrap."""
    import peft

    if not isinstance(model, peft.PeftModel):
        raise ConfigError("model", f"merge_lora expects a PeftModel from apply_lora, got {type(model).__name__}")
    merged = model.merge_and_unload()
    for p in merged.parameters():
        p.requires_grad_(True)
    return merged


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """Temporarily put ``model`` in eval mode, restoring the previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


# --- the fast block (lm_experiments.engine.fast_llama) ----------------------------------------------
# A separate addition: the functions above are unchanged and stay the reference path.

#: decoder implementations a preset can be built with (the proposed ``model.block`` field)
MODEL_BLOCKS: tuple[str, ...] = ("hf", "fast")


def build_fast_model(preset: str, *, vocab_size: int, max_seq_len: int, seed: int, dropout: float = 0.0):
    """:func:`build_model`'s model with the fast decoder (``lm_experiments.engine.fast_llama``).

    The weights are exactly those :func:`build_model` draws for ``seed`` (the Hugging Face
    model is built, then converted), so a run with the fast block starts where the Hugging
    Face run starts. ``dropout`` sets attention-probability dropout only (the residual
    dropout of :func:`set_dropout` is installed on Hugging Face modules); a preset the block
    does not implement is a ``ConfigError`` naming the field.
    """
    from lm_experiments.engine.fast_llama import FastLlamaForCausalLM, check_fast_config

    check_fast_config(model_config(preset, vocab_size=vocab_size, max_seq_len=max_seq_len))
    hf = build_model(preset, vocab_size=vocab_size, max_seq_len=max_seq_len, seed=seed)
    hf.config.attention_dropout = float(dropout)
    return FastLlamaForCausalLM.from_hf(hf)


def build_model_for_block(block: str, preset: str, *, vocab_size: int, max_seq_len: int, seed: int,
                          dropout: float = 0.0):
    """:func:`build_model` (``block="hf"``) or :func:`build_fast_model` (``block="fast"``)."""
    if block == "hf":
        return build_model(preset, vocab_size=vocab_size, max_seq_len=max_seq_len, seed=seed, dropout=dropout)
    if block == "fast":
        return build_fast_model(preset, vocab_size=vocab_size, max_seq_len=max_seq_len, seed=seed, dropout=dropout)
    raise ConfigError("model.block", f"must be one of {MODEL_BLOCKS}, got {block!r}")
