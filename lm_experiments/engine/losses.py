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
  matmuls run in the autocast dtype (as the head would), the softmax in fp32, and the head's
  weight gradient is summed in fp32 (never rounded to bf16 chunk by chunk). On CUDA (or with
  ``compile``) each chunk runs through one process-wide ``torch.compile``-d kernel with
  dynamic shapes: compiled once per process, reused by every run, no recompile for a
  partial last batch.
* ``fused``   -- a fused linear cross-entropy kernel, Liger's (``liger-kernel``, the ``[gpu]``
  extra) or Apple's (``cut-cross-entropy`` >= 25.4), when one is installed and the model is on
  CUDA; ``chunked`` otherwise. Both run with exact gradients and fp32 accumulation of the
  head's weight gradient (:func:`fused_kwargs`).

:func:`resolve_cross_entropy` maps the configured name (``auto`` too) to what runs:
``auto`` is ``plain`` off CUDA (CPU results stay bitwise those of the plain path) and
``fused`` / ``chunked`` on CUDA. A head that is not a plain ``nn.Linear`` (a LoRA-wrapped
head, ``peft``; a model that is neither a ``LlamaForCausalLM`` nor a
:class:`~lm_experiments.engine.fast_llama.FastLlamaForCausalLM`) always takes ``plain``.
:class:`CausalLMLoss` is the loss as a module (what ``torch.compile`` compiles and DDP wraps).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from early_exposure.errors import ConfigError

IGNORE_INDEX = -100
#: configurable names (``train.cross_entropy``); resolved names are plain | chunked | fused:liger | fused:cce
CROSS_ENTROPY_MODES = ("auto", "plain", "chunked", "fused")


#: the fused kernels the ``fused`` mode may run, in order of preference: (name, module, PyPI
#: distribution, oldest version whose API takes the arguments of :func:`fused_kwargs`).
#: liger-kernel >= 0.6.2 passes ``accum_dtype`` through; cut-cross-entropy >= 25.4 has
#: ``accum_e_fp32`` / ``accum_c_fp32`` / ``filter_*_grad`` (PyPI's newest, 25.1.1, has none of
#: them: it accumulates the head's gradient in bf16, so it is not used).
FUSED_BACKENDS: tuple[tuple[str, str, str, tuple[int, ...]], ...] = (
    ("liger", "liger_kernel", "liger-kernel", (0, 6, 2)),
    ("cce", "cut_cross_entropy", "cut-cross-entropy", (25, 4)),
)


def _version_tuple(version: str) -> tuple[int, ...]:
    """``"0.8.5"`` -> (0, 8, 5); ``"25.4.2+g1234"`` -> (25, 4, 2); pre-release tags cut off."""
    out: list[int] = []
    for part in version.split("+")[0].split(".")[:3]:
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        out.append(int(digits.group()))
    return tuple(out)


def fused_backend() -> str | None:
    """``"liger"`` or ``"cce"``: the first of :data:`FUSED_BACKENDS` that is importable and
    installed at (at least) its minimum version; None when there is none.

    Only ``importlib.util.find_spec`` and ``importlib.metadata.version`` are consulted
    (nothing is imported): a package importable without distribution metadata (a bare
    source tree on ``PYTHONPATH``) is not used, as its version cannot be checked.
    """
    for name, module, dist, minimum in FUSED_BACKENDS:
        try:
            if importlib.util.find_spec(module) is None:
                continue
            version = importlib.metadata.version(dist)
        except (ImportError, ValueError, importlib.metadata.PackageNotFoundError):
            continue
        if _version_tuple(version) >= minimum:
            return name
    return None


def fused_kwargs(backend: str, ignore_index: int = IGNORE_INDEX) -> dict[str, Any]:
    """The keyword arguments passed to the fused kernel of ``backend`` (after ``input, weight, target``).

    * ``liger`` -- ``liger_kernel.transformers.functional.liger_fused_linear_cross_entropy``:
      ``accum_dtype=torch.float32`` (the head's weight gradient is accumulated over chunks in
      fp32; without it, in the weight's dtype), plain mean cross-entropy (no z-loss, no label
      smoothing, no soft-capping). The weight passed is the fp32 master weight itself, so the
      gradient is also returned in fp32 (never rounded to bf16). Liger itself synchronises
      once per call (``target_mask.sum().item()`` in its forward, to count the targets); this
      module adds no ``.item()``.
    * ``cce`` -- ``cut_cross_entropy.linear_cross_entropy``: exact gradients (``filter_eps=None``,
      ``filter_e_grad``/``filter_c_grad`` False: no vocabulary entries skipped in backward; the
      default ``"auto"`` filters), fp32 accumulation of both gradients (``accum_e_fp32``,
      ``accum_c_fp32``); the head's gradient is rounded once to the bf16 weight copy cce needs.
    """
    if backend == "liger":
        return {"ignore_index": ignore_index, "reduction": "mean", "lse_square_scale": 0.0, "label_smoothing": 0.0,
                "softcap": None, "return_z_loss": False, "accum_dtype": torch.float32}
    if backend == "cce":
        return {"ignore_index": ignore_index, "reduction": "mean", "softcap": None, "shift": 0, "filter_eps": None,
                "accum_e_fp32": True, "accum_c_fp32": True, "filter_e_grad": False, "filter_c_grad": False,
                "impl": "cce"}
    raise ConfigError("train.cross_entropy", f"unknown fused backend {backend!r}; expected 'liger' or 'cce'")


def _fused_function(backend: str) -> Any:
    """The installed fused kernel of ``backend`` (imported here, on first use)."""
    if backend == "liger":
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        return liger_fused_linear_cross_entropy
    from cut_cross_entropy import linear_cross_entropy as cce_linear_cross_entropy

    return cce_linear_cross_entropy


def _check_kwargs(backend: str, fn: Any, kwargs: dict[str, Any]) -> None:
    """Every keyword of :func:`fused_kwargs` is a parameter of the installed ``fn``."""
    params = inspect.signature(fn).parameters
    missing = [k for k in kwargs if k not in params]
    if missing:
        dist = {b: d for b, _, d, _ in FUSED_BACKENDS}[backend]
        raise ConfigError("train.cross_entropy", f"the installed {dist} takes no {missing}: upgrade it "
                          "(pip install -e '.[gpu]') or set train.cross_entropy=chunked")


def _plain_head(model: nn.Module) -> nn.Linear | None:
    """The model's output head when it is a bias-free ``nn.Linear`` (not LoRA-wrapped)."""
    core = _causal_lm(model)
    if core is None:  # not a Llama model: only the plain path applies
        return None
    head = core.lm_head
    return head if type(head) is nn.Linear and head.bias is None else None


def _causal_lm(model: nn.Module) -> nn.Module | None:
    """The ``LlamaForCausalLM`` or :class:`~lm_experiments.engine.fast_llama.FastLlamaForCausalLM`
    inside ``model`` (itself, or the base of a ``PeftModel``), else None."""
    from transformers import LlamaForCausalLM

    for module in model.modules():  # the fast model says what it is (it imports this module, not the reverse)
        if isinstance(module, LlamaForCausalLM) or getattr(module, "is_fast_llama", False):
            return module
    return None


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


def chunk_sizes(n: int, chunk: int) -> list[int]:
    """``n`` rows in ``ceil(n / chunk)`` chunks of near-equal size (each at most ``chunk``).

    Equal sizes (two distinct values at most, never 1 unless ``n == 1``) keep the compiled
    chunk kernel on one dynamic-shape graph: a partial last batch changes the sizes, not
    the graph (a size-1 chunk would be specialised and recompiled).
    """
    if n <= 0:
        return []
    k = -(-n // chunk)
    base, extra = divmod(n, k)
    return [base + 1] * extra + [base] * (k - extra)


def _chunk_nll(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Sum over the valid rows of one chunk of ``-log softmax(h W^T)[t]`` (fp32 scalar)."""
    logits = (h @ w.t()).float()  # (c, V)
    nll = torch.logsumexp(logits, dim=1) - logits.gather(1, t.unsqueeze(1)).squeeze(1)  # (c,)
    return torch.where(v, nll, 0.0).sum()


def _chunk_grad(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, v: torch.Tensor,
                need_h: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One chunk of the loss and its gradients: (sum of the valid rows' NLL (fp32 scalar),
    ``g = softmax - onehot`` of the valid rows (c, V) in ``h``'s dtype, ``dh = g W`` (c, d) or None).

    ``h`` (c, d) and ``w`` (V, d) in the compute dtype, ``t`` (c,) int64 (ignored rows -> 0),
    ``v`` (c,) bool. Logits and softmax in fp32; ``g`` is cast to the compute dtype for the
    matmuls (as autocast would for the head's backward).
    """
    logits = (h @ w.t()).float()  # (c, V) fp32
    lse = torch.logsumexp(logits, dim=1)  # (c,)
    nll = lse - logits.gather(1, t.unsqueeze(1)).squeeze(1)  # (c,)
    total = torch.where(v, nll, 0.0).sum()
    g = logits.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place of the logits
    g.scatter_add_(1, t.unsqueeze(1), torch.full_like(lse, -1.0).unsqueeze(1))  # - onehot
    g = g.mul_(v.unsqueeze(1)).to(h.dtype)  # ignored rows contribute nothing
    return total, g, (g @ w) if need_h else None


_COMPILED: dict[str, Any] = {}


def _compiled(name: str) -> Any:
    """The process-wide ``torch.compile`` of ``name`` (built on first use, then reused by every
    run of the process: the compiled graphs live with the function, not with a model)."""
    fn = _COMPILED.get(name)
    if fn is None:
        if name == "chunk_grad":
            fn = torch.compile(_chunk_grad)  # rows marked dynamic per call (_mark_rows)
        elif name == "chunk_nll":
            fn = torch.compile(_chunk_nll)
        elif name == "plain":
            fn = torch.compile(_plain_loss)
        elif name == "body":
            fn = torch.compile(_body_hidden)
        else:
            raise KeyError(name)
        _COMPILED[name] = fn
    return fn


def _mark_rows(*tensors: torch.Tensor) -> None:
    """Mark dimension 0 (a chunk's rows) dynamic: one compiled graph serves every chunk size
    (full chunks, the last one, a partial batch's), while the vocabulary and hidden sizes stay
    static (better kernels for the reductions over the vocabulary)."""
    for t in tensors:
        torch._dynamo.maybe_mark_dynamic(t, 0)


#: whether ``torch.addmm(..., out_dtype=torch.float32)`` works for half inputs on this CUDA build
_ADDMM_FP32_OUT: dict[str, bool] = {}


def _accumulate_fp32(acc: torch.Tensor, g: torch.Tensor, h: torch.Tensor) -> None:
    """``acc += g^T h`` with the product summed in fp32 and never rounded to ``g``'s dtype.

    On CUDA (capability >= 8) with half inputs: one ``addmm`` with fp32 output (tensor cores,
    fp32 accumulator and result). Elsewhere: the inputs upcast to fp32 (products of half
    values are exact in fp32), so the result is the same sum.
    """
    half = g.dtype in (torch.bfloat16, torch.float16) and h.dtype == g.dtype
    if half and acc.is_cuda and _ADDMM_FP32_OUT.get(str(acc.device), True):
        try:
            torch.addmm(acc, g.t(), h, out_dtype=torch.float32, out=acc)
            _ADDMM_FP32_OUT[str(acc.device)] = True
            return
        except (RuntimeError, TypeError, NotImplementedError):  # torch < 2.8 or an older GPU
            _ADDMM_FP32_OUT[str(acc.device)] = False
    acc.addmm_(g.t().float(), h.float())


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """``mean_{i: t_i != ignore} CE(h_i W^T, t_i)`` over chunks of tokens, gradients in the same pass.

    Inputs: ``hidden`` (N, d), ``weight`` (V, d), ``targets`` (N,) int64, ``chunk`` tokens per
    chunk (at most; :func:`chunk_sizes`), ``ignore_index``, ``compute_dtype`` of the matmuls and,
    optionally, ``compiled``: run each chunk through the process-wide ``torch.compile``-d
    kernel (dynamic shapes: one graph for every chunk size, full or partial batch; default:
    on CUDA). Per chunk: logits (c, V) in ``compute_dtype``, upcast to fp32, logsumexp; when
    gradients are needed, ``softmax - onehot`` in fp32, rows of ignored targets zeroed, cast
    to ``compute_dtype``, then ``dh = g W`` and ``dW += g^T h`` with the product formed and
    accumulated in fp32 (:func:`_accumulate_fp32`; never rounded to bf16 per chunk). Peak
    extra memory: one chunk's logits (c x V fp32 plus its ``compute_dtype`` copy), ``dW``
    (V x d fp32) and ``dh``. Returns NaN when every target is ignored (as ``F.cross_entropy``'s
    mean does).
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                ignore_index: int, compute_dtype: torch.dtype, *compiled: bool | None) -> torch.Tensor:
        ctx.n_extra = len(compiled)
        use_compiled = compiled[0] if compiled and compiled[0] is not None else hidden.is_cuda
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        valid = targets != ignore_index  # (N,)
        n_valid = valid.sum()
        total = torch.zeros((), device=hidden.device, dtype=torch.float32)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_w else None
        grad_fn = _compiled("chunk_grad") if use_compiled else _chunk_grad
        nll_fn = _compiled("chunk_nll") if use_compiled else _chunk_nll
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(compute_dtype)  # (V, d)
            s = 0
            for c in chunk_sizes(hidden.shape[0], chunk):
                h = hidden[s:s + c].to(compute_dtype)  # (c, d)
                v = valid[s:s + c]  # (c,)
                t = torch.where(v, targets[s:s + c], 0)  # (c,), ignored -> class 0
                if use_compiled:
                    _mark_rows(h, t, v)
                if need_h or need_w:
                    part, g, dh = grad_fn(h, w, t, v, need_h)
                    if need_h:
                        grad_h[s:s + c] = dh
                    if need_w:
                        _accumulate_fp32(grad_w, g, h)
                else:
                    part = nll_fn(h, w, t, v)
                total += part
                s += c
        ctx.save_for_backward(grad_h if need_h else None, grad_w if need_w else None, n_valid)
        ctx.weight_dtype = weight.dtype
        return total / n_valid

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        grad_h, grad_w, n_valid = ctx.saved_tensors
        scale = grad_out.float() / n_valid
        dh = (grad_h * scale).to(grad_h.dtype) if grad_h is not None else None
        dw = (grad_w * scale).to(ctx.weight_dtype) if grad_w is not None else None
        return (dh, dw, None, None, None, None) + (None,) * ctx.n_extra


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                         mode: str = "chunked", chunk_tokens: int = 8192,
                         ignore_index: int = IGNORE_INDEX, compile: bool | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` (N, V) against ``targets`` (N,), never
    materialising the logits (``mode`` ``chunked``, ``fused:liger``, ``fused:cce``).

    ``compile`` (chunked only): run the chunks through the process-wide compiled kernel;
    None = on CUDA. ``fused:cce`` needs half-precision matmuls (autocast on); in fp32 it
    runs ``chunked``.
    """
    if not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ConfigError("train.ce_chunk_tokens", f"must be an integer >= 1, got {chunk_tokens!r}")
    dtype = _compute_dtype(hidden.device.type, hidden.dtype)
    if mode == "fused:cce" and dtype not in (torch.bfloat16, torch.float16):
        mode = "chunked"
    if mode == "chunked":
        return ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk_tokens, ignore_index, dtype, compile)
    if mode in ("fused:liger", "fused:cce"):
        backend = mode.split(":", 1)[1]
        fn = _fused_function(backend)
        kwargs = fused_kwargs(backend, ignore_index)
        _check_kwargs(backend, fn, kwargs)
        if backend == "liger":
            # fp32 master weight as is: under autocast Liger's matmuls run in bf16 while its
            # fp32 gradient accumulator is returned in the weight's dtype (fp32)
            h = hidden if torch.is_autocast_enabled(hidden.device.type) else hidden.to(weight.dtype)
            out = fn(h, weight, targets, **kwargs)
        else:
            out = fn(hidden.to(dtype), weight.to(dtype), targets, **kwargs)
        return (out[0] if isinstance(out, tuple) else out).float()
    raise ConfigError("train.cross_entropy", f"unknown resolved mode {mode!r}")


def shift_labels(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Hugging Face's causal shift: position ``j`` predicts ``labels[:, j + 1]``; the last
    position of every row gets ``ignore_index``. (b, t) -> (b, t)."""
    return F.pad(labels, (0, 1), value=ignore_index)[:, 1:]


def causal_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *, mode: str = "chunked",
                   chunk_tokens: int = 8192, ignore_index: int = IGNORE_INDEX,
                   compile: bool | None = None) -> torch.Tensor:
    """The loss ``LlamaForCausalLM(input_ids, labels=labels).loss`` would give from the final
    hidden states ``hidden`` (b, t, d) and head ``weight`` (V, d), without the full logits."""
    d = hidden.shape[-1]
    targets = shift_labels(labels, ignore_index).reshape(-1)  # (b * t,)
    return linear_cross_entropy(hidden.reshape(-1, d), weight, targets, mode=mode, chunk_tokens=chunk_tokens,
                                ignore_index=ignore_index, compile=compile)


def _plain_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Hugging Face's own loss of ``x`` (b, t): ``model(input_ids=x, labels=x).loss``."""
    return model(input_ids=x, labels=x).loss


def _body_hidden(body: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The decoder body's final hidden states (b, t, d), after the final norm."""
    return body(input_ids=x).last_hidden_state


class CausalLMLoss(nn.Module):
    """``forward(x) -> mean next-token cross-entropy of x`` (b, t) for ``model``.

    ``cross_entropy`` is a *resolved* mode (:func:`resolve_cross_entropy`). ``plain`` calls
    ``model(input_ids=x, labels=x).loss``; the others run the decoder body
    (``LlamaModel``, or the body of a :class:`~lm_experiments.engine.fast_llama.FastLlamaForCausalLM`)
    and :func:`causal_lm_loss` on its hidden states. With ``compile`` the part that runs
    through the network is ``torch.compile``-d: the whole model for ``plain`` (inductor then
    fuses the cross-entropy), the body for the others, and the chunked cross-entropy's
    per-chunk kernel (the fused kernels are Triton already). The compiled functions are
    process-wide (:func:`_compiled`) and take the module as an argument: a later run of the
    same architecture in the same process reuses the graphs instead of compiling anew, and
    the batch dimension is marked dynamic so that a partial last batch does not recompile.
    ``model`` is the registered submodule: this module's parameters are the model's, so DDP
    can wrap it.
    """

    def __init__(self, model: nn.Module, *, cross_entropy: str = "plain", chunk_tokens: int = 8192,
                 compile: bool = False) -> None:
        super().__init__()
        if cross_entropy not in ("plain", "chunked", "fused:liger", "fused:cce"):
            raise ConfigError("train.cross_entropy", f"expected a resolved mode, got {cross_entropy!r}")
        self.model = model
        self.cross_entropy = cross_entropy
        self.chunk_tokens = int(chunk_tokens)
        self.compiled = bool(compile)
        head = body = None
        if cross_entropy != "plain":
            head = _plain_head(model)
            if head is None:
                raise ConfigError("train.cross_entropy", f"{cross_entropy} needs a plain nn.Linear head")
            body = _causal_lm(model).model
        # kept out of the module tree: registered once, as ``model``
        self.__dict__["_head"] = head
        self.__dict__["_body"] = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled:
            torch._dynamo.maybe_mark_dynamic(x, 0)  # a partial last batch: same graph
        if self.cross_entropy == "plain":
            return (_compiled("plain") if self.compiled else _plain_loss)(self.model, x)
        hidden = (_compiled("body") if self.compiled else _body_hidden)(self._body, x)  # (b, t, d)
        return causal_lm_loss(hidden, self._head.weight, x, mode=self.cross_entropy, chunk_tokens=self.chunk_tokens,
                              compile=self.compiled or None)
