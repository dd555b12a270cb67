"""A Llama decoder built for training speed that reads and writes Hugging Face checkpoints unchanged.

Hugging Face's ``LlamaForCausalLM`` stays the reference model of the project; this module is
the same function with fewer, larger kernels:

* fused projections: one ``qkv`` matmul per attention block (``q_proj``, ``k_proj``,
  ``v_proj`` stacked along the output dimension) and one ``gate_up`` matmul per MLP
  (``gate_proj``, ``up_proj`` stacked);
* ``F.scaled_dot_product_attention`` with ``is_causal=True`` (flash / memory-efficient
  kernels on CUDA; ``enable_gqa`` for grouped-query attention, no repeated K/V tensors);
  with an ``attention_mask`` (padding) an explicit boolean mask instead;
* RoPE cos/sin computed once per forward for all layers (not once per layer);
* under autocast the residual stream is kept in the autocast dtype (bf16 activations,
  fp32 master weights): the embedding output is cast once, every RMSNorm normalises in
  fp32 and returns the activation dtype, and there are no per-layer fp32 round trips (Hugging
  Face keeps an fp32 residual stream under autocast and casts at every norm and rotary
  embedding). Without autocast everything is fp32 and the logits equal Hugging Face's to
  float rounding.

Checkpoints: :meth:`FastLlamaForCausalLM.state_dict` returns Hugging Face's key names and
shapes (the fused weights are split), :meth:`~FastLlamaForCausalLM.load_state_dict` accepts
them (and concatenates), :meth:`~FastLlamaForCausalLM.save_pretrained` writes ``config.json``
+ ``model.safetensors`` that ``AutoModelForCausalLM.from_pretrained`` loads as a
``LlamaForCausalLM``, and :meth:`~FastLlamaForCausalLM.from_pretrained` /
:meth:`~FastLlamaForCausalLM.from_hf` / :meth:`~FastLlamaForCausalLM.to_hf` convert both ways.
The architecture is read from the Hugging Face ``LlamaConfig`` (transformers 5): RoPE theta
from ``rope_parameters`` (``rope_theta`` of older configs as a fallback), RMSNorm eps, head
dimension, grouped-query heads, tied embeddings. What the block does not implement (biases,
non-default RoPE scaling, activations other than SiLU, KV caches) is refused with a
:class:`~early_exposure.errors.ConfigError` naming the field (:func:`check_fast_config`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from early_exposure.errors import ConfigError
from lm_experiments.engine.losses import IGNORE_INDEX, shift_labels


def rope_theta(config: LlamaConfig) -> float:
    """RoPE base of ``config``: ``rope_parameters["rope_theta"]`` (transformers 5), else ``rope_theta``."""
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if not isinstance(theta, (int, float)) or isinstance(theta, bool) or theta <= 0:
        raise ConfigError("model.rope_parameters.rope_theta", f"must be a positive number, got {theta!r}")
    return float(theta)


def head_dim(config: LlamaConfig) -> int:
    """Per-head dimension (``config.head_dim`` when set, else ``hidden_size // num_attention_heads``)."""
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def check_fast_config(config: Any) -> None:
    """Refuse what :class:`FastLlamaForCausalLM` does not implement (``ConfigError`` naming the field)."""
    if not isinstance(config, LlamaConfig):
        raise ConfigError("model", f"the fast block needs a LlamaConfig, got {type(config).__name__}")
    if config.hidden_act != "silu":
        raise ConfigError("model.hidden_act", f"the fast block implements SiLU only, got {config.hidden_act!r}")
    for name in ("attention_bias", "mlp_bias"):
        if getattr(config, name, False):
            raise ConfigError(f"model.{name}", "the fast block has no biases; use model.block=hf")
    params = getattr(config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type != "default":
        raise ConfigError("model.rope_parameters.rope_type",
                          f"the fast block implements the default RoPE only, got {rope_type!r}; use model.block=hf")
    rope_theta(config)
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    if kv < 1 or heads % kv:
        raise ConfigError("model.num_key_value_heads", f"must divide num_attention_heads={heads}, got {kv}")
    if head_dim(config) % 2:
        raise ConfigError("model.head_dim", f"RoPE needs an even head dimension, got {head_dim(config)}")
    if getattr(config, "pretraining_tp", 1) not in (None, 1):
        raise ConfigError("model.pretraining_tp", "the fast block implements pretraining_tp=1 only")


class FastRMSNorm(nn.Module):
    """RMSNorm normalising in fp32 and returning the input's dtype (the weight applied in fp32)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class FastAttention(nn.Module):
    """Multi-head / grouped-query self-attention: one fused QKV matmul, RoPE, SDPA, output projection."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = head_dim(config)
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.attention_dropout = float(config.attention_dropout or 0.0)
        self.qkv = nn.Linear(config.hidden_size, self.q_size + 2 * self.kv_size, bias=False)
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (b, h, t, hd)
        k = k.view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (b, kv, t, hd)
        v = v.view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (b or 1, 1, t, hd)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None,
            dropout_p=self.attention_dropout if self.training else 0.0,
            enable_gqa=self.num_kv_heads != self.num_heads,
        )  # (b, h, t, hd)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.q_size))


class FastMLP(nn.Module):
    """SwiGLU MLP with one fused gate/up matmul: ``down(silu(gate x) * up x)``."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gate_up = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class FastDecoderLayer(nn.Module):
    """Pre-norm block ``h + attn(norm(h))``, then ``h + mlp(norm(h))`` (Hugging Face's module names)."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = FastRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = FastAttention(config)
        self.post_attention_layernorm = FastRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = FastMLP(config)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


def _attention_mask(attention_mask: torch.Tensor | None, t: int, device: torch.device) -> torch.Tensor | None:
    """Boolean SDPA mask (b, 1, t, t) from a (b, t) padding mask (1 = token, 0 = padding):
    causal and no padded keys; every query also sees itself, so a padded row's softmax is
    defined (its output is never used). None when there is no padding (``is_causal`` path)."""
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2 or attention_mask.shape[1] != t:
        raise ConfigError("attention_mask", f"expected a (batch, {t}) padding mask, got {tuple(attention_mask.shape)}")
    keys = attention_mask.to(device=device, dtype=torch.bool)
    if bool(keys.all()):
        return None
    causal = torch.ones(t, t, dtype=torch.bool, device=device).tril()
    eye = torch.eye(t, dtype=torch.bool, device=device)
    return ((causal & keys[:, None, None, :]) | eye).contiguous()


class FastLlamaModel(nn.Module):
    """The decoder body: embedding, layers, final norm (``LlamaModel``'s module names)."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(FastDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = FastRMSNorm(config.hidden_size, config.rms_norm_eps)
        dim = head_dim(config)
        inv_freq = 1.0 / (rope_theta(config) ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # as Hugging Face: not in checkpoints

    def rope(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (b or 1, t, head_dim) of ``position_ids`` in ``dtype``, computed in fp32 once per forward."""
        with torch.autocast(position_ids.device.type, enabled=False):
            freqs = position_ids[..., None].float() * self.inv_freq.float()  # (b, t, hd/2)
            emb = torch.cat((freqs, freqs), dim=-1)
            return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                **kwargs: Any) -> BaseModelOutputWithPast:
        _refuse_cache(kwargs)
        if (input_ids is None) == (inputs_embeds is None):
            raise ConfigError("input_ids", "give exactly one of input_ids or inputs_embeds")
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (b, t, d)
        if torch.is_autocast_enabled(h.device.type):  # bf16 residual stream, fp32 master weights
            h = h.to(torch.get_autocast_dtype(h.device.type))
        t = h.shape[1]
        if position_ids is None:
            position_ids = torch.arange(t, device=h.device).unsqueeze(0)  # (1, t)
        cos, sin = self.rope(position_ids, h.dtype)
        mask = _attention_mask(attention_mask, t, h.device)
        for layer in self.layers:
            h = layer(h, cos, sin, mask)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(h))


def _refuse_cache(kwargs: dict[str, Any]) -> None:
    """Generation caches are not implemented: refuse them instead of silently ignoring them."""
    for name in ("past_key_values", "cache"):
        if kwargs.get(name) is not None:
            raise ConfigError(name, "the fast block has no KV cache; generate with the Hugging Face model (to_hf)")
    if kwargs.get("use_cache"):
        raise ConfigError("use_cache", "the fast block has no KV cache; generate with the Hugging Face model (to_hf)")


#: Hugging Face's names of the fused weights of one layer, in stacking order
_FUSED = {"self_attn.qkv.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
          "mlp.gate_up.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight")}


class FastLlamaForCausalLM(nn.Module):
    """Causal LM with the fast decoder; Hugging Face ``LlamaForCausalLM``'s interface for training.

    ``forward(input_ids, attention_mask=None, position_ids=None, labels=None)`` returns a
    ``CausalLMOutputWithPast`` with ``logits`` and, given ``labels``, ``loss`` (Hugging Face's
    shifted mean cross-entropy, ``-100`` ignored). ``model`` is the body (its output has
    ``last_hidden_state``), ``lm_head`` a bias-free ``nn.Linear`` (tied to the embedding when
    ``config.tie_word_embeddings``), ``config`` the ``LlamaConfig``. Weights are initialised as
    Hugging Face does (normal(0, initializer_range), norms at 1); for the same initial weights
    as a Hugging Face model, convert it (:meth:`from_hf`).
    """

    #: what :func:`lm_experiments.engine.losses._causal_lm` and ``engine.model._llama_core`` look for
    is_fast_llama = True

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        check_fast_config(config)
        config.architectures = ["LlamaForCausalLM"]  # what its saved files are
        self.config = config
        self.model = FastLlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()
        self.reset_parameters()
        self.register_state_dict_post_hook(_split_fused)
        self.register_load_state_dict_pre_hook(_join_fused)

    def tie_weights(self) -> None:
        """Share the embedding matrix with the head when ``config.tie_word_embeddings``."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def tied(self) -> bool:
        return self.lm_head.weight is self.model.embed_tokens.weight

    def reset_parameters(self) -> None:
        std = float(self.config.initializer_range)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, FastRMSNorm):
                nn.init.ones_(module.weight)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs: Any) -> CausalLMOutputWithPast:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            inputs_embeds=inputs_embeds, **kwargs).last_hidden_state
        logits = self.lm_head(hidden)  # (b, t, V)
        loss = None
        if labels is not None:
            targets = shift_labels(labels.to(logits.device), IGNORE_INDEX).reshape(-1)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets, ignore_index=IGNORE_INDEX)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    # --- Hugging Face checkpoints ---------------------------------------------------------

    @classmethod
    def from_hf(cls, hf_model: LlamaForCausalLM) -> FastLlamaForCausalLM:
        """The fast model with ``hf_model``'s config and weights (same dtype and device, same mode)."""
        if not isinstance(hf_model, LlamaForCausalLM):
            raise ConfigError("model", f"from_hf expects a LlamaForCausalLM, got {type(hf_model).__name__}")
        config = LlamaConfig.from_dict(hf_model.config.to_dict())
        check_fast_config(config)
        p = next(hf_model.parameters())
        with torch.device("meta"):
            fast = cls(config)
        fast.to_empty(device=p.device)  # materialises each parameter anew: tie again
        fast.tie_weights()
        fast.to(p.dtype)
        fast.model.inv_freq = _inv_freq(config, p.device)
        fast.load_state_dict(hf_model.state_dict())
        fast.train(hf_model.training)
        return fast

    def to_hf(self) -> LlamaForCausalLM:
        """A Hugging Face ``LlamaForCausalLM`` with this model's config and weights."""
        p = next(self.parameters())
        with torch.random.fork_rng(devices=[]):
            hf = LlamaForCausalLM(LlamaConfig.from_dict(self.config.to_dict()))
        hf.to(device=p.device, dtype=p.dtype)
        hf.load_state_dict(self.state_dict())
        hf.train(self.training)
        return hf

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], **kwargs: Any) -> FastLlamaForCausalLM:
        """Load a Hugging Face Llama checkpoint directory (``LlamaForCausalLM.from_pretrained``) as a fast model."""
        return cls.from_hf(LlamaForCausalLM.from_pretrained(path, **kwargs))

    def save_pretrained(self, path: str | os.PathLike[str], **kwargs: Any) -> None:
        """Write ``config.json`` + ``model.safetensors`` in Hugging Face's format (its key names; a
        tied head saved once, as ``model.embed_tokens.weight``); ``AutoModelForCausalLM.from_pretrained``
        loads the directory as a ``LlamaForCausalLM``. ``safe_serialization=False`` is refused."""
        from safetensors.torch import save_file

        if not kwargs.pop("safe_serialization", True):
            raise ConfigError("safe_serialization", "the fast model saves safetensors only")
        if kwargs:
            raise ConfigError("save_pretrained", f"unsupported arguments {sorted(kwargs)}")
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        config = LlamaConfig.from_dict(self.config.to_dict())
        config.architectures = ["LlamaForCausalLM"]
        config.dtype = next(self.parameters()).dtype
        config.save_pretrained(out)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        if self.tied:
            state.pop("lm_head.weight", None)
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})


def _inv_freq(config: LlamaConfig, device: torch.device) -> torch.Tensor:
    dim = head_dim(config)
    return 1.0 / (rope_theta(config) ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim))


def _split_fused(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """State-dict post-hook: fused weights -> Hugging Face's separate ones (copies, own storage)."""
    for key in [k for k in state_dict if k.startswith(prefix + "model.layers.")]:
        for fused, names in _FUSED.items():
            if key.endswith("." + fused):
                base = key[: -len(fused)]
                w = state_dict.pop(key)
                sizes = _split_sizes(module.config, fused)
                for name, part in zip(names, torch.split(w, sizes, dim=0)):
                    state_dict[base + name] = part.clone()


def _join_fused(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any, strict: bool,
                missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
    """Load-state-dict pre-hook: Hugging Face's separate weights -> the fused ones; a tied head
    missing from the file is the embedding; Hugging Face's rotary buffers are dropped."""
    for i in range(module.config.num_hidden_layers):
        base = f"{prefix}model.layers.{i}."
        for fused, names in _FUSED.items():
            keys = [base + n for n in names]
            if all(k in state_dict for k in keys):
                state_dict[base + fused] = torch.cat([state_dict.pop(k) for k in keys], dim=0)
    embed, head = prefix + "model.embed_tokens.weight", prefix + "lm_head.weight"
    if module.config.tie_word_embeddings and head not in state_dict and embed in state_dict:
        state_dict[head] = state_dict[embed]
    for key in [k for k in state_dict if k.endswith(("rotary_emb.inv_freq", "rotary_emb.original_inv_freq"))]:
        del state_dict[key]


def _split_sizes(config: LlamaConfig, fused: str) -> list[int]:
    if fused == "mlp.gate_up.weight":
        return [config.intermediate_size, config.intermediate_size]
    hd = head_dim(config)
    return [config.num_attention_heads * hd, config.num_key_value_heads * hd, config.num_key_value_heads * hd]


def saved_keys(path: str | os.PathLike[str]) -> list[str]:
    """Tensor names in ``path``/model.safetensors (``safe_open`` reads its header; no tensor is read)."""
    from safetensors import safe_open

    with safe_open(str(Path(path) / "model.safetensors"), framework="numpy") as f:
        return sorted(f.keys())


def apply_fast_llama(model: LlamaForCausalLM) -> FastLlamaForCausalLM:
    """``model`` (a Hugging Face ``LlamaForCausalLM``) in the fast decoder, same weights
    (the hook ``benchmarks/gpu_check.py`` looks for)."""
    return FastLlamaForCausalLM.from_hf(model)
