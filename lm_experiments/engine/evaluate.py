"""Losses, checkpoints and weight-change analysis (paper Sec. 3 "Evaluation", App. B).

* :func:`evaluate` -- mean token cross-entropy (nats) on a fixed set of held-out blocks:
  the paper's L_im, L_ret, L_ft, L_pre are all this function applied to different
  (model, split) pairs (sharded over the ranks of a multi-process job). Per-block losses and, on request, top-1 next-token correctness are
  kept for sample-wise analyses (1->0 forgetting / 0->1 transfer, arXiv 2510.17776).
* :func:`save_checkpoint` -- ``save_pretrained`` (safetensors) + tokenizer + extra JSON +
  generation config + model card, atomically, loadable by
  ``AutoModelForCausalLM.from_pretrained`` and ready for ``generate`` (stops at EOS).
* :func:`layerwise_change` -- relative Frobenius change per tensor and per layer group:
  where in the network fine-tuning acts.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from early_exposure.errors import ConfigError
from early_exposure.io import atomic_write_json
from lm_experiments.engine.device import autocast_context, check_precision
from lm_experiments.engine.model import _eval_mode


_CE_CHUNK_LOGITS = 1 << 26  # fp32 logits materialised at once by evaluate (256 MB)


@dataclass
class EvalResult:
    """``mean_loss``: mean token cross-entropy (nats) over all ``num_blocks * (seq_len - 1)``
    predicted tokens; ``per_example``: float32 (num_blocks,) mean loss per block;
    ``correct``: bool (num_blocks, seq_len - 1) top-1 correctness, when requested."""

    mean_loss: float
    per_example: np.ndarray
    correct: np.ndarray | None = None


def evaluate(model: nn.Module, blocks: np.ndarray, *, batch_size: int, device: torch.device,
             precision: str = "fp32", return_correct: bool = False, shard: bool | None = None) -> EvalResult:
    """Mean next-token cross-entropy of ``model`` on ``blocks`` (int64 (num_blocks, seq_len)).

    Block ``i`` predicts tokens ``blocks[i, 1:]`` from their prefixes; the loss of each
    target is ``-log softmax(logits)[target]`` computed in fp32 (also under bf16 autocast);
    sums are accumulated in float64. The model is evaluated in ``eval()`` mode (no
    dropout) and returned to its previous mode.

    ``shard`` (default: whether a process group of more than one process is initialised,
    e.g. under ``torchrun``): every rank evaluates its contiguous slice of the blocks and
    the per-block results are all-gathered, so every rank returns the full result; it is
    then a collective call that every rank must make. Per-block values are those of the
    unsharded call up to the batching of blocks (float tolerance).
    """
    check_precision(precision)
    blocks = np.asarray(blocks)
    if blocks.ndim != 2 or blocks.shape[1] < 2 or blocks.shape[0] < 1:
        raise ConfigError("eval.blocks", f"need a (num_blocks >= 1, seq_len >= 2) array, got shape {blocks.shape}")
    if not np.issubdtype(blocks.dtype, np.integer):
        raise ConfigError("eval.blocks", f"need integer token ids, got dtype {blocks.dtype}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError("eval.batch_size", f"must be a positive integer, got {batch_size!r}")
    from lm_experiments.engine import distributed

    dctx = distributed.context()
    if shard is None:
        shard = dctx.active
    if shard and dctx.active:
        lo, hi = distributed.shard_bounds(blocks.shape[0], dctx.rank, dctx.world_size)
        part = (_block_losses(model, blocks[lo:hi], batch_size, device, precision, return_correct)
                if hi > lo else (np.empty(0, dtype=np.float64),
                                 np.empty((0, blocks.shape[1] - 1), dtype=bool) if return_correct else None))
        parts = distributed.all_gather_object(part)
        per_example = np.concatenate([p[0] for p in parts])
        correct = np.concatenate([p[1] for p in parts]) if return_correct else None
    else:
        per_example, correct = _block_losses(model, blocks, batch_size, device, precision, return_correct)
    # equal targets per block: the token mean is the mean of block means
    return EvalResult(mean_loss=float(per_example.mean()), per_example=per_example.astype(np.float32),
                      correct=correct)


def _block_losses(model: nn.Module, blocks: np.ndarray, batch_size: int, device: torch.device, precision: str,
                  return_correct: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """float64 (n,) mean loss per block and, on request, bool (n, t-1) top-1 correctness."""
    n, t = blocks.shape
    per_example = np.empty(n, dtype=np.float64)
    correct = np.empty((n, t - 1), dtype=bool) if return_correct else None
    with _eval_mode(model), torch.no_grad():
        for i in range(0, n, batch_size):
            x = torch.as_tensor(blocks[i:i + batch_size], dtype=torch.long).to(device)  # (b, t)
            with autocast_context(device, precision):
                logits = model(input_ids=x).logits  # (b, t, V), bf16 under autocast
            # fp32 cross-entropy in row chunks of <= 2^26 logits, bounding the fp32 copy
            # (a 49152-token vocabulary at t=2048 is 0.4 GB per row in fp32)
            rows = max(1, _CE_CHUNK_LOGITS // (t * logits.shape[-1]))
            for j in range(0, x.shape[0], rows):
                lg = logits[j:j + rows, :-1].float()  # (r, t-1, V) predictions of tokens 1..t-1
                target = x[j:j + rows, 1:]  # (r, t-1)
                # flattened (r * (t-1), V) rows: the (r, V, t-1) "spatial" layout runs a softmax
                # kernel that took 91% of evaluation time on an H100 at t=2048 (11.7x slower overall)
                nll = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), target.reshape(-1),
                                      reduction="none").view(target.shape)  # (r, t-1)
                per_example[i + j:i + j + lg.shape[0]] = nll.double().mean(dim=1).cpu().numpy()
                if correct is not None:
                    correct[i + j:i + j + lg.shape[0]] = (lg.argmax(dim=-1) == target).cpu().numpy()
    return per_example, correct


def special_token_ids(tokenizer: Any) -> dict[str, int | None]:
    """``{"bos_token_id", "eos_token_id", "pad_token_id"}`` of ``tokenizer``: a
    ``transformers`` tokenizer's own ids, a raw ``tokenizers.Tokenizer``'s ids of the
    project's special tokens (``lm_experiments.data.config.SPECIAL_TOKENS``); all None for
    None or a tokenizer without them."""
    out: dict[str, int | None] = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    if tokenizer is None:
        return out
    if hasattr(tokenizer, "eos_token_id"):
        for k in out:
            v = getattr(tokenizer, k, None)
            out[k] = None if v is None else int(v)
    elif hasattr(tokenizer, "token_to_id"):
        from lm_experiments.data.config import SPECIAL_TOKENS

        for k in out:
            v = tokenizer.token_to_id(SPECIAL_TOKENS[k.removesuffix("_id")])
            out[k] = None if v is None else int(v)
    return out


def save_checkpoint(model: nn.Module, tokenizer: Any, out_dir: Path, extra: dict) -> None:
    """Save ``model`` so that ``AutoModelForCausalLM.from_pretrained(out_dir)`` loads it and
    ``generate`` works on it as on a Hugging Face model.

    Writes ``config.json`` + ``model.safetensors`` (``save_pretrained``), the tokenizer
    (``save_pretrained`` for a ``transformers`` tokenizer, ``tokenizer.json`` for a raw
    ``tokenizers.Tokenizer``; skipped when None), ``extra.json`` (``extra``, e.g. the
    run's lineage, :func:`lm_experiments.engine.model_card.card_extra`) and a model card
    ``README.md`` (Hub front matter and the lineage in ``extra``,
    :func:`lm_experiments.engine.model_card.model_card`). Atomic: everything goes
    to a sibling temp directory that is renamed onto ``out_dir`` (an existing ``out_dir``
    is replaced); files and directories get the umask's modes (``early_exposure.io``).
    A ``PeftModel`` is merged on a copy first.

    The saved config differs from the in-memory one (which is left untouched: training
    keeps ``use_cache=False``) in what inference needs: the tokenizer's
    ``bos/eos/pad_token_id`` (so ``generate`` stops at EOS), ``use_cache=True`` (a
    key-value cache for generation; load with ``use_cache=False`` to train,
    :func:`lm_experiments.engine.checkpoints.load_model`) and ``attention_dropout=0`` (dropout
    is a training setting, ``model.set_dropout``; its rate belongs in ``extra``). The same
    ids and ``use_cache`` go into ``generation_config.json`` (``GenerationConfig``).
    """
    from transformers import GenerationConfig

    from early_exposure.io import atomic_dir, atomic_write_text
    from lm_experiments.engine.model_card import model_card

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        import peft

        if isinstance(model, peft.PeftModel):
            from lm_experiments.engine.model import merge_lora

            model = merge_lora(copy.deepcopy(model))
    except ImportError:
        pass
    ids = special_token_ids(tokenizer)
    with atomic_dir(out_dir) as tmp:
        cfg = model.config
        saved_p = cfg.attention_dropout
        cfg.attention_dropout = 0.0
        try:
            model.save_pretrained(tmp, safe_serialization=True)
        finally:
            cfg.attention_dropout = saved_p
        # the inference settings, on a copy of the config (the model's own is not touched)
        saved_cfg = copy.deepcopy(cfg)
        saved_cfg.attention_dropout = 0.0
        saved_cfg.use_cache = True
        for k, v in ids.items():
            if v is not None:
                setattr(saved_cfg, k, v)
        saved_cfg.save_pretrained(tmp)
        GenerationConfig(**{k: v for k, v in ids.items() if v is not None}, use_cache=True).save_pretrained(tmp)
        if tokenizer is not None:
            if hasattr(tokenizer, "save_pretrained"):
                tokenizer.save_pretrained(str(tmp))
            elif hasattr(tokenizer, "save"):
                tokenizer.save(str(tmp / "tokenizer.json"))
            else:
                raise ConfigError("tokenizer", f"cannot save a {type(tokenizer).__name__}; pass a tokenizers.Tokenizer, "
                                  "a transformers tokenizer or None")
        atomic_write_json(tmp / "extra.json", extra)
        atomic_write_text(tmp / "README.md", model_card(extra, config=saved_cfg, special_ids=ids))


_LAYER_RE = re.compile(r"layers\.(\d+)\.(self_attn|mlp|input_layernorm|post_attention_layernorm)\.")


def _group(name: str) -> str:
    m = _LAYER_RE.search(name)
    if m:
        part = {"self_attn": "attention", "mlp": "mlp"}.get(m.group(2), "norm")
        return f"layers.{int(m.group(1))}.{part}"
    if "embed_tokens" in name:
        return "embeddings"
    if "lm_head" in name:
        return "head"
    if name.endswith("norm.weight"):
        return "final_norm"
    return "other"


def layerwise_change(model_a: nn.Module, model_b: nn.Module) -> dict[str, float]:
    """Relative Frobenius change ``||W_b - W_a||_F / ||W_a||_F`` from ``model_a`` to ``model_b``.

    Keys: every floating-point state-dict tensor name (e.g.
    ``model.layers.0.mlp.down_proj.weight``; a tied head appears as ``lm_head.weight`` equal
    to the embedding), and ``group/<g>`` aggregates ``sqrt(sum ||dW||^2) / sqrt(sum ||W||^2)``
    over the tensors of group ``g`` in ``embeddings``, ``layers.<i>.attention``,
    ``layers.<i>.mlp``, ``layers.<i>.norm``, ``final_norm``, ``head``. Models must share
    the architecture (merge LoRA models first).
    """
    sa, sb = model_a.state_dict(), model_b.state_dict()
    keys = [k for k, v in sa.items() if torch.is_floating_point(v)]
    if set(keys) != {k for k, v in sb.items() if torch.is_floating_point(v)}:
        raise ConfigError("model_b", "models have different parameter names; merge LoRA adapters "
                          "(merge_lora) and compare models of the same architecture")
    out: dict[str, float] = {}
    num: dict[str, float] = {}
    den: dict[str, float] = {}
    for k in keys:
        a, b = sa[k].detach().double().cpu(), sb[k].detach().double().cpu()
        if a.shape != b.shape:
            raise ConfigError("model_b", f"shape of {k} differs: {tuple(a.shape)} vs {tuple(b.shape)}")
        d2 = float(torch.sum((b - a) ** 2))
        a2 = float(torch.sum(a ** 2))
        out[k] = (d2 ** 0.5) / (a2 ** 0.5) if a2 > 0 else float("inf") if d2 > 0 else 0.0
        g = _group(k)
        num[g] = num.get(g, 0.0) + d2
        den[g] = den.get(g, 0.0) + a2
    for g in num:
        out[f"group/{g}"] = (num[g] ** 0.5) / (den[g] ** 0.5) if den[g] > 0 else float("inf") if num[g] > 0 else 0.0
    return out
