"""The cross-entropy kernels of the GPU path, on CPU: the compiled chunked loss, its fp32
accumulation of the head's gradient, compile reuse, and the fused kernels' arguments and
resolution.

References: ``F.cross_entropy`` on materialised logits with autograd gradients, an fp64
computation, a per-chunk bf16-rounded accumulation written out here (what the previous code
did), the upstream signatures of ``liger-kernel`` 0.8.5 and ``cut-cross-entropy`` 25.4.2
transcribed from their sources (neither is installed here), and stand-in kernels built on
``F.cross_entropy``.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util
import inspect
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from early_exposure.errors import ConfigError
from lm_experiments.engine import losses
from lm_experiments.engine.losses import (
    CausalLMLoss, chunk_sizes, fused_backend, fused_kwargs, linear_cross_entropy, resolve_cross_entropy,
)
from lm_tiny import ArraySource, tiny_model

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*")]  # inductor's torch.jit notices

CUDA = torch.device("cuda")  # only its type is read: nothing runs on a GPU here
CPU = torch.device("cpu")


def _graphs() -> int:
    """Graphs compiled so far in this process (dynamo's own counter)."""
    return int(counters["stats"]["unique_graphs"])


def _reference(h, w, t, dtype=torch.float32):
    """F.cross_entropy on the full logits in ``dtype``; gradients by autograd."""
    h = h.detach().to(dtype).requires_grad_(True)
    w = w.detach().to(dtype).requires_grad_(True)
    loss = F.cross_entropy(h @ w.t(), t, ignore_index=-100)
    loss.backward()
    return loss.detach(), h.grad, w.grad


def _data(n, d, vocab, seed, ignored=()):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g)
    w = torch.randn(vocab, d, generator=g) * 0.3
    t = torch.randint(0, vocab, (n,), generator=g)
    t[list(ignored)] = -100
    return h, w, t


@pytest.mark.parametrize("n, chunk", [(1, 4), (2, 4), (17, 16), (50, 16), (64, 16), (8191, 8192), (8193, 8192)])
def test_chunk_sizes_cover_the_rows_in_near_equal_chunks(n, chunk):
    sizes = chunk_sizes(n, chunk)
    assert sum(sizes) == n and max(sizes) <= chunk and len(sizes) == -(-n // chunk)
    assert max(sizes) - min(sizes) <= 1
    assert n == 1 or min(sizes) >= 2  # a size-1 chunk would specialise the compiled graph


def test_compiled_chunked_equals_f_cross_entropy_and_a_partial_batch_does_not_recompile():
    """Values and gradients (hidden states, head weight) of the compiled kernel equal
    F.cross_entropy's; a partial last batch (fewer rows) and a new weight tensor (a later run)
    reuse the compiled graphs."""
    h, w, t = _data(50, 24, 301, seed=0, ignored=(3, 17, 49))
    ref, ref_dh, ref_dw = _reference(h, w, t)
    hh, ww = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    loss = linear_cross_entropy(hh, ww, t, mode="chunked", chunk_tokens=16, compile=True)
    (1.5 * loss).backward()
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(hh.grad, 1.5 * ref_dh, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ww.grad, 1.5 * ref_dw, rtol=1e-5, atol=1e-7)
    assert float(hh.grad[[3, 17, 49]].abs().max()) == 0.0

    compiled_after_first = _graphs()
    assert compiled_after_first >= 1
    # a partial last batch (37 rows: chunks 13, 12, 12 instead of 13, 13, 12, 12) with a new
    # weight tensor of the same shape, as the next run of the process would bring
    h2, w2, t2 = _data(37, 24, 301, seed=1, ignored=(0,))
    ref2, ref2_dh, ref2_dw = _reference(h2, w2, t2)
    hh, ww = h2.clone().requires_grad_(True), w2.clone().requires_grad_(True)
    loss = linear_cross_entropy(hh, ww, t2, mode="chunked", chunk_tokens=16, compile=True)
    loss.backward()
    torch.testing.assert_close(loss.detach(), ref2, rtol=1e-6, atol=0)
    torch.testing.assert_close(hh.grad, ref2_dh, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ww.grad, ref2_dw, rtol=1e-5, atol=1e-7)
    assert _graphs() == compiled_after_first, "the partial batch recompiled"


def test_head_gradient_accumulates_in_fp32_where_per_chunk_bf16_rounding_fails():
    """bf16 matmuls (CPU autocast), fp32 master weight: the head's weight gradient summed over
    32 chunks matches an fp64 reference to fp32 accuracy, while rounding each chunk's
    gradient to bf16 before summing (the previous code) is measurably off.

    Construction: a zero head makes every logit 0 and the softmax exactly 1/256, so
    ``g = softmax - onehot`` is exact in bf16 and the bf16 hidden states are exact too: the
    only rounding left is in forming and accumulating ``g^T h``.
    """
    n, d, vocab, chunk = 2048, 32, 256, 64
    g = torch.Generator().manual_seed(4)
    h = torch.randn(n, d, generator=g).bfloat16().float()  # bf16 values, fp32 storage
    w = torch.zeros(vocab, d)
    t = torch.randint(0, vocab, (n,), generator=g)
    t[::97] = -100
    _, ref_dh, ref_dw = _reference(h, w, t, dtype=torch.float64)

    hh, ww = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(hh, ww, t, mode="chunked", chunk_tokens=chunk, compile=True)
    loss.backward()
    assert ww.grad.dtype == torch.float32
    scale = float(ref_dw.abs().max())
    ours = float((ww.grad.double() - ref_dw).abs().max()) / scale

    # the previous accumulation: each chunk's g^T h rounded to bf16, then summed in fp32
    valid = t != -100
    tt = torch.where(valid, t, 0)
    old = torch.zeros(vocab, d)
    for s in range(0, n, chunk):
        gc = torch.full((min(chunk, n - s), vocab), 1.0 / vocab)
        gc[torch.arange(gc.shape[0]), tt[s:s + chunk]] -= 1.0
        gc *= valid[s:s + chunk, None]
        old += (gc.bfloat16().t() @ h[s:s + chunk].bfloat16()).float()
    old /= valid.sum()
    previous = float((old.double() - ref_dw).abs().max()) / scale

    print(f"head grad max rel err vs fp64: fp32 accumulation {ours:.2e}, per-chunk bf16 rounding {previous:.2e}")
    assert ours < 1e-5
    assert previous > 1e-4 and ours < previous / 100
    torch.testing.assert_close(hh.grad.double(), ref_dh, rtol=0, atol=0)  # a zero head: dh = g W = 0


# --- the fused kernels: arguments, calls, resolution ------------------------------------------

# Transcribed from the upstream sources (not installed here):
# liger-kernel 0.8.5, liger_kernel/transformers/functional.py
def _liger_upstream(input, weight, target, bias=None, ce_weight=None, ignore_index: int = -100,
                    lse_square_scale: float = 0.0, label_smoothing: float = 0.0, reduction: str = "mean",
                    softcap=None, return_z_loss: bool = False, accum_dtype=None, use_token_scaling: bool = False,
                    return_token_accuracy: bool = False, return_predicted_tokens: bool = False,
                    chunk_mem_const: int = 1):
    raise NotImplementedError


# cut-cross-entropy 25.4.2 (apple/ml-cross-entropy), cut_cross_entropy/linear_cross_entropy.py
def _cce_upstream(e, c, targets, bias=None, ignore_index: int = -100, softcap=None, reduction: str = "mean",
                  shift=0, filter_eps="auto", accum_e_fp32: bool = False, accum_c_fp32: bool = False,
                  filter_e_grad: bool = True, filter_c_grad: bool = True, impl="cce", vocab_parallel_options=None):
    raise NotImplementedError


# cut-cross-entropy 25.1.1 (the newest on PyPI): no accumulation or per-gradient filter options
def _cce_pypi_25_1_1(e, c, targets, ignore_index: int = -100, softcap=None, reduction: str = "mean",
                     shift: bool = False, filter_eps="high", impl="cce"):
    raise NotImplementedError


def test_fused_kwargs_are_exact_fp32_and_bind_to_the_upstream_signatures():
    h, w, t = torch.zeros(4, 8), torch.zeros(16, 8), torch.zeros(4, dtype=torch.long)
    liger = fused_kwargs("liger")
    assert liger["accum_dtype"] is torch.float32  # fp32 accumulator for the head's weight gradient
    assert liger["reduction"] == "mean" and liger["ignore_index"] == -100
    assert liger["label_smoothing"] == 0.0 and liger["lse_square_scale"] == 0.0 and liger["softcap"] is None
    assert liger["return_z_loss"] is False
    inspect.signature(_liger_upstream).bind(h, w, t, **liger)  # every name exists upstream
    cce = fused_kwargs("cce", ignore_index=-7)
    assert cce["filter_eps"] is None  # no gradient filtering: exact gradients
    assert cce["filter_e_grad"] is False and cce["filter_c_grad"] is False
    assert cce["accum_e_fp32"] is True and cce["accum_c_fp32"] is True
    assert cce["reduction"] == "mean" and cce["ignore_index"] == -7 and cce["shift"] == 0 and cce["softcap"] is None
    inspect.signature(_cce_upstream).bind(h, w, t, **cce)
    losses._check_kwargs("liger", _liger_upstream, liger)
    losses._check_kwargs("cce", _cce_upstream, cce)
    with pytest.raises(ConfigError, match="train.cross_entropy.*accum_e_fp32"):  # PyPI's cce is too old
        losses._check_kwargs("cce", _cce_pypi_25_1_1, cce)
    with pytest.raises(ConfigError, match="train.cross_entropy"):
        fused_kwargs("apex")


def _stand_in(record: dict):
    """A fused kernel built on F.cross_entropy that records how it was called."""

    def kernel(inp, weight, target, **kwargs):
        record.update(inp=inp, weight=weight, kwargs=kwargs)
        with torch.autocast(inp.device.type, enabled=False):
            logits = inp.float() @ weight.float().t()
        return F.cross_entropy(logits, target, ignore_index=kwargs["ignore_index"], reduction=kwargs["reduction"])

    return kernel


def _forbid_item(monkeypatch):
    def item(self):
        raise AssertionError(".item() called (a host sync per call)")

    monkeypatch.setattr(torch.Tensor, "item", item)


def test_fused_liger_call_passes_the_fp32_master_weight_and_adds_no_item(monkeypatch):
    record: dict = {}
    mod = types.ModuleType("liger_kernel.transformers.functional")
    mod.liger_fused_linear_cross_entropy = _stand_in(record)
    mod.liger_fused_linear_cross_entropy.__signature__ = inspect.signature(_liger_upstream)
    for name in ("liger_kernel", "liger_kernel.transformers"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.functional", mod)
    h, w, t = _data(40, 16, 97, seed=2, ignored=(5, 6))
    ref, ref_dh, ref_dw = _reference(h, w, t)
    hh, ww = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    with monkeypatch.context() as m:
        _forbid_item(m)
        loss = linear_cross_entropy(hh, ww, t, mode="fused:liger")
    loss.backward()
    assert record["weight"] is ww  # the fp32 parameter itself: its gradient is never rounded to bf16
    assert record["kwargs"] == fused_kwargs("liger")
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(hh.grad, ref_dh, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ww.grad, ref_dw, rtol=1e-5, atol=1e-7)
    # a Liger too old for accum_dtype is refused, naming the setting
    mod.liger_fused_linear_cross_entropy.__signature__ = inspect.signature(
        lambda input, weight, target, ignore_index=-100, reduction="mean": None)
    with pytest.raises(ConfigError, match="train.cross_entropy"):
        linear_cross_entropy(h, w, t, mode="fused:liger")


def test_fused_cce_call_uses_half_operands_under_autocast_and_chunked_in_fp32(monkeypatch):
    record: dict = {}
    mod = types.ModuleType("cut_cross_entropy")
    mod.linear_cross_entropy = _stand_in(record)
    mod.linear_cross_entropy.__signature__ = inspect.signature(_cce_upstream)
    monkeypatch.setitem(sys.modules, "cut_cross_entropy", mod)
    h, w, t = _data(24, 16, 61, seed=3, ignored=(1,))
    ref, _, _ = _reference(h, w, t)
    got = linear_cross_entropy(h, w, t, mode="fused:cce")  # fp32: cce needs bf16/fp16, chunked runs
    assert record == {}
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy(h, w, t, mode="fused:cce")
    assert record["inp"].dtype == record["weight"].dtype == torch.bfloat16
    assert record["kwargs"] == fused_kwargs("cce")
    ref_bf16 = F.cross_entropy(h.bfloat16().float() @ w.bfloat16().float().t(), t)
    torch.testing.assert_close(got, ref_bf16, rtol=1e-5, atol=0)


def _installed(monkeypatch, **versions: str | None):
    """Simulate which fused packages are installed: module name -> version (None: absent)."""
    real_find, real_version = importlib.util.find_spec, importlib.metadata.version
    modules = {"liger_kernel": "liger-kernel", "cut_cross_entropy": "cut-cross-entropy"}

    def find_spec(name, *args, **kwargs):
        if name in modules:
            v = versions.get(name)
            return None if v is None else importlib.machinery.ModuleSpec(name, None)
        return real_find(name, *args, **kwargs)

    def version(dist):
        for module, d in modules.items():
            if dist == d:
                if versions.get(module) is None:
                    raise importlib.metadata.PackageNotFoundError(dist)
                return versions[module]
        return real_version(dist)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(importlib.metadata, "version", version)


@pytest.mark.parametrize("liger, cce, expected", [
    (None, None, None),
    ("0.8.5", None, "liger"),
    ("0.6.2", None, "liger"),
    ("0.6.1", None, None),          # before accum_dtype: bf16 accumulation, not used
    (None, "25.1.1", None),         # PyPI's newest cce: no accum_*_fp32, not used
    (None, "25.4.2", "cce"),
    (None, "25.4.2+gabc123", "cce"),
    ("0.8.5", "25.4.2", "liger"),  # both: Liger first
    ("0.5.0", "25.4.2", "cce"),
])
def test_auto_resolution_with_packages_present_or_absent(monkeypatch, liger, cce, expected):
    _installed(monkeypatch, liger_kernel=liger, cut_cross_entropy=cce)
    assert fused_backend() == expected
    fused = f"fused:{expected}" if expected else "chunked"
    assert resolve_cross_entropy("auto", CUDA) == fused
    assert resolve_cross_entropy("fused", CUDA) == fused
    assert resolve_cross_entropy("chunked", CUDA) == "chunked"
    assert resolve_cross_entropy("plain", CUDA) == "plain"
    assert resolve_cross_entropy("auto", CPU) == "plain"  # CPU results stay the plain path's
    assert resolve_cross_entropy("fused", CPU) == "chunked"  # the kernels need CUDA


def test_resolution_survives_a_broken_find_spec(monkeypatch):
    def find_spec(name, *args, **kwargs):
        raise ValueError(f"{name}.__spec__ is None")

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert fused_backend() is None and resolve_cross_entropy("auto", CUDA) == "chunked"


@pytest.mark.slow
def test_compiled_loss_module_is_reused_by_a_later_run_and_a_partial_batch():
    """CausalLMLoss(compile=True): the second model of the process (a later run) and a partial
    last batch compile nothing new; losses equal the eager plain path's."""
    x = torch.as_tensor(ArraySource(1, batch=4, seed=8).batch(0))
    first = CausalLMLoss(tiny_model(seed=1), cross_entropy="chunked", chunk_tokens=24, compile=True)
    first(x).backward()
    before = _graphs()
    model = tiny_model(seed=2)
    second = CausalLMLoss(model, cross_entropy="chunked", chunk_tokens=24, compile=True)
    for rows in (4, 3):  # a full and a partial batch
        got = second(x[:rows])
        got.backward()
        with torch.no_grad():
            ref = float(tiny_model(seed=2)(input_ids=x[:rows], labels=x[:rows]).loss)
        assert float(got.detach()) == pytest.approx(ref, rel=1e-5)
    assert _graphs() == before, "a later run or a partial batch recompiled"
