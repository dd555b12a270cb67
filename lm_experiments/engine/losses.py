"""Training loss of the engine: next-token cross-entropy, plain, chunked or fused.

The LM head of a 49,152-token vocabulary dominates training memory: Hugging Face's loss
materialises the (tokens x vocab) logits (bf16 under autocast), their fp32 copy, the fp32
log-softmax kept for backward and the fp32 gradient, ~14 bytes per logit: 22 GiB of the
50.8 GiB peak at batch 16 x 2048 for SmolLM2-135M on an H100. Three implementations of the
same number (the mean cross-entropy over every target whose label is not ``ignore_index``,
labels shifted as Hugging Face's ``ForCausalLMLoss`` does):

* ``plain``   -- ``model(input_ids=x, labels=x).loss``: Hugging Face's own path (today's).
* ``chunked`` -- plain torch, everywhere: :class:`ChunkedLinearCrossEntropy` computes the
  head projection and the cross-entropy over chunks of ``chunk_tokens`` tokens and, in the
  same pass, the gradients w.r.t. the hidden states and the head weight; only one chunk's
  logits exist at a time (forward and backward), so the full logits are never materialised.
  Backward only scales the stored gradients by the incoming scalar. Under autocast the
  matmuls run in the autocast dtype (as the head would), the softmax in fp32.
* ``fused``   -- a fused linear cross-entropy kernel, Liger's (``liger-kernel``) or Apple's
  (``cut-cross-entropy``), when one is installed and the model is on CUDA; ``chunked``
  otherwise.

:func:`resolve_cross_entropy` maps the configured name (``auto`` too) to what runs:
``auto`` is ``plain`` off CUDA (CPU results stay bitwise those of the plain path) and
``fused`` / ``chunked`` on CUDA. A head that is not a plain ``nn.Linear`` (a LoRA-wrapped
head, ``peft``; a model that is not a ``LlamaForCausalLM``) always takes ``plain``. :class:`CausalLMLoss` is the loss as a module (what
``torch.compile`` compiles and DDP wraps).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from early_exposure.errors import ConfigError

IGNORE_INDEX = -100
#: configurable names (``train.cross_entropy``); resolved names are plain | chunked | fused:liger | fused:cce
CROSS_ENTROPY_MODES = ("auto", "plain", "chunked", "fused")


def fused_backend() -> str | None:
    """``"liger"`` or ``"cce"`` when ``liger-kernel`` / ``cut-cross-entropy`` is importable, else None."""
    for name, module in (("liger", "liger_kernel"), ("cce", "cut_cross_entropy")):
        try:
            if importlib.util.find_spec(module) is not None:
                return name
        except (ImportError, ValueError):
            continue
    return None


def _plain_head(model: nn.Module) -> nn.Linear | None:
    """The model's output head when it is a bias-free ``nn.Linear`` (not LoRA-wrapped)."""
    from lm_experiments.engine.model import _llama_core

    try:
        head = _llama_core(model).lm_head
    except ConfigError:  # not a Llama model: only the plain path applies
        return None
    return head if type(head) is nn.Linear and head.bias is None else None


def resolve_cross_entropy(mode: str, device: torch.device, model: nn.Module | None = None) -> str:
    """What ``mode`` runs on ``device``: ``plain``, ``chunked``, ``fused:liger`` or ``fused:cce``.

    ``auto``: ``plain`` off CUDA, else ``fused`` when a backend is installed, else ``chunked``.
    ``fused``: the installed backend on CUDA, else ``chunked``. Any mode is ``plain`` for a
    model whose head is not a plain ``nn.Linear`` (LoRA on the head).
    """
    if mode not in CROSS_ENTROPY_MODES:
        raise ConfigError("train.cross_entropy", f"must be one of {CROSS_ENTROPY_MODES}, got {mode!r}")
    if mode == "plain" or (mode == "auto" and device.type != "cuda"):
        return "plain"
    if model is not None and _plain_head(model) is None:
        return "plain"
    backend = fused_backend() if device.type == "cuda" else None
    if mode in ("auto", "fused") and backend is not None:
        return f"fused:{backend}"
    return "chunked"


def _compute_dtype(device_type: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype the head matmul would run in: the autocast dtype when autocast is on."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return dtype


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """``mean_{i: t_i != ignore} CE(h_i W^T, t_i)`` over chunks of tokens, gradients in the same pass.

    Inputs: ``hidden`` (N, d), ``weight`` (V, d), ``targets`` (N,) int64, ``chunk`` tokens per
    chunk, ``ignore_index``, ``compute_dtype`` of the matmuls. Per chunk: logits (c, V) in
    ``compute_dtype``, upcast to fp32, logsumexp; when gradients are needed, ``softmax -
    onehot`` in fp32 (in place), rows of ignored targets zeroed, cast to ``compute_dtype``,
    then ``dh = g W`` and ``dW += g^T h`` (fp32 accumulator). Peak extra memory: one chunk's
    logits (c x V fp32 plus its ``compute_dtype`` copy), ``dW`` (V x d fp32) and ``dh``.
    Returns NaN when every target is ignored (as ``F.cross_entropy``'s mean does).
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                ignore_index: int, compute_dtype: torch.dtype) -> torch.Tensor:
        n = hidden.shape[0]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        valid = targets != ignore_index  # (N,)
        n_valid = valid.sum()
        total = torch.zeros((), device=hidden.device, dtype=torch.float32)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_w else None
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(compute_dtype)  # (V, d)
            for s in range(0, n, chunk):
                h = hidden[s:s + chunk].to(compute_dtype)  # (c, d)
                v = valid[s:s + chunk]  # (c,)
                t = torch.where(v, targets[s:s + chunk], 0).unsqueeze(1)  # (c, 1), ignored -> class 0
                logits = (h @ w.t()).float()  # (c, V) fp32
                lse = torch.logsumexp(logits, dim=1)  # (c,)
                nll = lse - logits.gather(1, t).squeeze(1)  # (c,)
                total += torch.where(v, nll, 0.0).sum()
                if need_h or need_w:
                    g = logits.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place of the logits
                    g.scatter_add_(1, t, torch.full_like(lse, -1.0).unsqueeze(1))  # - onehot
                    g.mul_(v.unsqueeze(1))  # ignored rows contribute nothing
                    g = g.to(compute_dtype)
                    if need_h:
                        grad_h[s:s + chunk] = (g @ w).to(hidden.dtype)
                    if need_w:
                        grad_w += (g.t() @ h).float()
        ctx.save_for_backward(grad_h if need_h else None, grad_w if need_w else None, n_valid)
        ctx.weight_dtype = weight.dtype
        return total / n_valid

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        grad_h, grad_w, n_valid = ctx.saved_tensors
        scale = grad_out.float() / n_valid
        dh = (grad_h * scale).to(grad_h.dtype) if grad_h is not None else None
        dw = (grad_w * scale).to(ctx.weight_dtype) if grad_w is not None else None
        return dh, dw, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                         mode: str = "chunked", chunk_tokens: int = 8192,
                         ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` (N, V) against ``targets`` (N,), never
    materialising the logits (``mode`` ``chunked``, ``fused:liger``, ``fused:cce``)."""
    if not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ConfigError("train.ce_chunk_tokens", f"must be an integer >= 1, got {chunk_tokens!r}")
    dtype = _compute_dtype(hidden.device.type, hidden.dtype)
    if mode == "chunked":
        return ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk_tokens, ignore_index, dtype)
    h, w = hidden.to(dtype), weight.to(dtype)
    if mode == "fused:liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        out = LigerFusedLinearCrossEntropyLoss(ignore_index=ignore_index, reduction="mean")(w, h, targets)
        return (out[0] if isinstance(out, tuple) else out).float()
    if mode == "fused:cce":
        from cut_cross_entropy import linear_cross_entropy as cce

        return cce(h, w, targets, ignore_index=ignore_index, reduction="mean").float()
    raise ConfigError("train.cross_entropy", f"unknown resolved mode {mode!r}")


def shift_labels(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Hugging Face's causal shift: position ``j`` predicts ``labels[:, j + 1]``; the last
    position of every row gets ``ignore_index``. (b, t) -> (b, t)."""
    return F.pad(labels, (0, 1), value=ignore_index)[:, 1:]


def causal_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *, mode: str = "chunked",
                   chunk_tokens: int = 8192, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The loss ``LlamaForCausalLM(input_ids, labels=labels).loss`` would give from the final
    hidden states ``hidden`` (b, t, d) and head ``weight`` (V, d), without the full logits."""
    d = hidden.shape[-1]
    targets = shift_labels(labels, ignore_index).reshape(-1)  # (b * t,)
    return linear_cross_entropy(hidden.reshape(-1, d), weight, targets, mode=mode, chunk_tokens=chunk_tokens,
                                ignore_index=ignore_index)


class CausalLMLoss(nn.Module):
    """``forward(x) -> mean next-token cross-entropy of x`` (b, t) for ``model``.

    ``cross_entropy`` is a *resolved* mode (:func:`resolve_cross_entropy`). ``plain`` calls
    ``model(input_ids=x, labels=x).loss``; the others run the decoder body
    (``LlamaModel``) and :func:`causal_lm_loss` on its hidden states. With ``compile`` the
    part that runs through the network is ``torch.compile``-d: the whole model for ``plain``
    (inductor then fuses the cross-entropy), the body for the others (the chunked loop and
    the fused kernels stay eager). ``model`` is the registered submodule: this module's
    parameters are the model's, so DDP can wrap it.
    """

    def __init__(self, model: nn.Module, *, cross_entropy: str = "plain", chunk_tokens: int = 8192,
                 compile: bool = False) -> None:
        super().__init__()
        from lm_experiments.engine.model import _llama_core

        if cross_entropy not in ("plain", "chunked", "fused:liger", "fused:cce"):
            raise ConfigError("train.cross_entropy", f"expected a resolved mode, got {cross_entropy!r}")
        self.model = model
        self.cross_entropy = cross_entropy
        self.chunk_tokens = int(chunk_tokens)
        self.compiled = bool(compile)
        head = None
        if cross_entropy == "plain":
            run: Any = model
        else:
            head = _plain_head(model)
            if head is None:
                raise ConfigError("train.cross_entropy", f"{cross_entropy} needs a plain nn.Linear head")
            run = _llama_core(model).model
        # kept out of the module tree: the compiled wrapper would register the parameters twice
        self.__dict__["_run"] = torch.compile(run) if compile else run
        self.__dict__["_head"] = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cross_entropy == "plain":
            return self._run(input_ids=x, labels=x).loss
        hidden = self._run(input_ids=x).last_hidden_state  # (b, t, d), after the final norm
        return causal_lm_loss(hidden, self._head.weight, x, mode=self.cross_entropy, chunk_tokens=self.chunk_tokens)
