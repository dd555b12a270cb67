"""The engine's fast path on CPU: chunked cross-entropy, the loss module, torch.compile, FLOPs.

References: ``torch.nn.functional.cross_entropy`` on explicitly materialised logits (values
and autograd gradients), Hugging Face's own ``LlamaForCausalLM(..., labels=...).loss``, the
eager model (for the compiled one), the plain path of the same training loop (for the
chunked one), a hand count of the FLOPs, the run keys of a config without the section.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from early_exposure.errors import ConfigError
from lm_experiments.engine.losses import (
    CausalLMLoss, ChunkedLinearCrossEntropy, causal_lm_loss, linear_cross_entropy, resolve_cross_entropy,
)
from lm_experiments.engine.model import apply_lora
from lm_experiments.engine.optim import OptimConfig
from lm_experiments.config import TrainSection
from lm_experiments.engine.train import train
from lm_tiny import T, V, ArraySource, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

CPU = torch.device("cpu")


def _assert_same_training(a: torch.nn.Module, b: torch.nn.Module, init: torch.nn.Module, rel: float = 1e-3) -> None:
    """Per tensor, ``||W_a - W_b|| <= rel * ||W_b - W_init||``: equal up to a small fraction of
    what training changed. (Element-wise bounds do not suit AdamW: an element whose gradient
    is ~0 gets an update of up to ``lr`` whose sign is set by rounding noise.)"""
    for (n, pa), pb, p0 in zip(a.named_parameters(), b.parameters(), init.parameters()):
        pa, pb, p0 = pa.detach(), pb.detach(), p0.detach()
        moved = float((pb - p0).norm())
        assert moved > 0, n
        assert float((pa - pb).norm()) <= rel * moved, (n, float((pa - pb).norm()), moved)


def _reference(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """F.cross_entropy on the full logits; gradients by autograd."""
    h = h.detach().clone().requires_grad_(True)
    w = w.detach().clone().requires_grad_(True)
    loss = F.cross_entropy((h @ w.t()).float(), t, ignore_index=-100)
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_cross_entropy_equals_f_cross_entropy_values_and_gradients(chunk):
    g = torch.Generator().manual_seed(0)
    n, d, vocab = 50, 24, 3001  # a vocabulary that no chunk size divides
    h = torch.randn(n, d, generator=g, dtype=torch.float32)
    w = torch.randn(vocab, d, generator=g) * 0.3
    t = torch.randint(0, vocab, (n,), generator=g)
    t[[3, 17, 18, 49]] = -100  # ignored targets, also at a chunk edge and at the end
    ref, ref_dh, ref_dw = _reference(h, w, t)
    hh, ww = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    loss = linear_cross_entropy(hh, ww, t, mode="chunked", chunk_tokens=chunk)
    (2.5 * loss).backward()  # the incoming gradient scales the stored ones
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(hh.grad, 2.5 * ref_dh, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ww.grad, 2.5 * ref_dw, rtol=1e-5, atol=1e-7)
    assert float(hh.grad[[3, 17, 18, 49]].abs().max()) == 0.0  # ignored rows get no gradient


def test_chunked_cross_entropy_edge_cases():
    g = torch.Generator().manual_seed(1)
    h, w = torch.randn(5, 8, generator=g), torch.randn(11, 8, generator=g)
    t = torch.full((5,), -100)
    got = linear_cross_entropy(h, w, t, mode="chunked", chunk_tokens=2)
    assert math.isnan(float(got)) and math.isnan(float(F.cross_entropy(h @ w.t(), t)))  # nothing to average
    # no gradient wanted: nothing is stored, values unchanged
    t = torch.randint(0, 11, (5,), generator=g)
    with torch.no_grad():
        got = ChunkedLinearCrossEntropy.apply(h, w, t, 2, -100, torch.float32)
    torch.testing.assert_close(got, F.cross_entropy(h @ w.t(), t), rtol=1e-6, atol=0)
    with pytest.raises(ConfigError, match="train.ce_chunk_tokens"):
        linear_cross_entropy(h, w, t, mode="chunked", chunk_tokens=0)


def test_causal_lm_loss_equals_hugging_face_loss_with_label_shift_and_ignore_index():
    model = tiny_model(seed=3)
    model.eval()
    x = torch.as_tensor(ArraySource(1, batch=3, seed=5).batch(0))
    labels = x.clone()
    labels[0, 5:9] = -100  # masked targets inside a row
    labels[2, -1] = -100   # and the last token (never a target anyway: the shift drops it)
    out = model(input_ids=x, labels=labels)  # HF: logits[:, :-1] predict labels[:, 1:], -100 ignored
    hidden = model.model(input_ids=x).last_hidden_state
    got = causal_lm_loss(hidden, model.lm_head.weight, labels, mode="chunked", chunk_tokens=5)
    logits = out.logits
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(got, out.loss, rtol=1e-6, atol=0)


def test_loss_module_chunked_gradients_equal_plain_through_the_model():
    """Gradients w.r.t. every parameter (the tied embedding/head included, and the hidden
    states through the network) of the chunked loss equal those of HF's plain loss."""
    x = torch.as_tensor(ArraySource(1, batch=4, seed=2).batch(0))
    grads = {}
    for mode in ("plain", "chunked"):
        m = tiny_model(seed=4)
        loss = CausalLMLoss(m, cross_entropy=mode, chunk_tokens=13)(x)
        loss.backward()
        grads[mode] = (float(loss.detach()), {n: p.grad.clone() for n, p in m.named_parameters()})
    assert grads["chunked"][0] == pytest.approx(grads["plain"][0], rel=1e-6)
    for n, gp in grads["plain"][1].items():
        torch.testing.assert_close(grads["chunked"][1][n], gp, rtol=1e-4, atol=1e-7, msg=n)


def test_chunked_under_cpu_bf16_autocast_is_close_to_plain():
    m = tiny_model(seed=6)
    x = torch.as_tensor(ArraySource(1, batch=2, seed=7).batch(0))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = float(CausalLMLoss(m, cross_entropy="plain")(x))
        chunked = float(CausalLMLoss(m, cross_entropy="chunked", chunk_tokens=9)(x))
    assert chunked == pytest.approx(plain, rel=1e-2)  # bf16 matmuls, fp32 softmax in both


def test_resolve_cross_entropy():
    assert resolve_cross_entropy("auto", CPU) == "plain"  # the default keeps today's CPU path
    assert resolve_cross_entropy("plain", CPU) == "plain"
    assert resolve_cross_entropy("chunked", CPU) == "chunked"
    assert resolve_cross_entropy("fused", CPU) == "chunked"  # fused kernels need CUDA
    lora = apply_lora(tiny_model(), rank=2, alpha=4)
    assert resolve_cross_entropy("chunked", CPU, lora) == "plain"  # a LoRA-wrapped head
    with pytest.raises(ConfigError, match="train.cross_entropy"):
        resolve_cross_entropy("fast", CPU)


def test_training_defaults_are_the_plain_path_bitwise_and_chunked_matches(tmp_path):
    src = ArraySource(5)
    kw = dict(optim=OptimConfig(lr=2e-3, warmup_steps=1), device=CPU, micro_batch=2, seed=3)
    runs = {}
    for name, extra in (("default", {}), ("plain", {"cross_entropy": "plain"}),
                        ("chunked", {"cross_entropy": "chunked", "ce_chunk_tokens": 24})):
        m = tiny_model(dropout=0.1)
        res = train(m, src, ckpt_dir=tmp_path / name, **kw, speed=TrainSection(**extra))
        runs[name] = (res, m)
    (d, md), (p, mp), (c, mc) = runs["default"], runs["plain"], runs["chunked"]
    assert d.cross_entropy == p.cross_entropy == "plain" and c.cross_entropy == "chunked" and not d.compiled
    assert [h["train_loss"] for h in d.history] == [h["train_loss"] for h in p.history]
    assert all(torch.equal(a, b) for a, b in zip(md.parameters(), mp.parameters()))
    # same dropout masks (same RNG stream), a different loss kernel: equal up to float rounding
    np.testing.assert_allclose([h["train_loss"] for h in c.history], [h["train_loss"] for h in p.history], rtol=1e-5)
    _assert_same_training(mc, mp, tiny_model())


def test_flops_and_mfu_in_the_result(tmp_path):
    m = tiny_model()
    res = train(m, ArraySource(2), optim=OptimConfig(lr=1e-3), ckpt_dir=tmp_path / "ck", device=CPU)
    # hand count, tiny-1m at vocab 64: non-embedding 2*(4*128^2 + 3*128*512 + 2*128) + 128, head 64*128
    n = 2 * (4 * 128 * 128 + 3 * 128 * 512 + 2 * 128) + 128 + 64 * 128
    assert res.flops_per_token == 6 * n + 12 * 2 * 128 * T
    assert res.flops == res.flops_per_token * 2 * 4 * T
    assert res.mfu is None and res.peak_tflops is None and res.device_name == "cpu" and res.world_size == 1
    summary = res.compute_summary()
    assert summary["flops"] == res.flops and summary["mfu"] is None and summary["cross_entropy"] == "plain"


@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*")  # torch.jit notices inside inductor
def test_compiled_training_matches_eager(tmp_path):
    """torch.compile (inductor, C++ on CPU) of the plain and of the chunked path: same losses
    and weights as eager within float tolerance. The slowest test of the file (cold compile)."""
    src = ArraySource(3)
    kw = dict(optim=OptimConfig(lr=2e-3), device=CPU)
    eager_m = tiny_model()
    eager = train(eager_m, src, ckpt_dir=tmp_path / "e", **kw)
    for mode in ("plain", "chunked"):
        m = tiny_model()
        res = train(m, src, ckpt_dir=tmp_path / mode, speed=TrainSection(compile=True, cross_entropy=mode,
                                                                         ce_chunk_tokens=32), **kw)
        assert res.compiled and res.cross_entropy == mode
        np.testing.assert_allclose([h["train_loss"] for h in res.history], [h["train_loss"] for h in eager.history],
                                   rtol=1e-5, err_msg=mode)
        _assert_same_training(m, eager_m, tiny_model())


def test_train_section_validated_and_outside_run_keys():
    from lm_experiments.config import PipelineConfig, TrainSection, config_from_mapping
    from lm_experiments.data import DataConfig
    from lm_experiments.protocol.plan import make_plan

    base = {"data": {role: {"source": "local", "name": role, "path": f"/nonexistent/{role}.txt"}
                     for role in ("pre", "post", "ft")} | {"seq_len": T},
            "pre": {"tokens": 4 * 4 * T, "batch_size": 4, "mix_fraction": [0.0, 1.0]},
            "post": {"post_train_tokens": 8 * T, "sweep": {"batch_size": [4]}},
            "ft": {"tokens": 2 * 4 * T, "batch_size": 4}}
    for key, value, msg in (("cross_entropy", "fast", "train.cross_entropy"), ("ce_chunk_tokens", 0,
                            "train.ce_chunk_tokens"), ("compile", "yes", "train.compile"), ("other", 1, "train.other")):
        with pytest.raises(ConfigError, match=msg):
            config_from_mapping({**base, "train": {key: value}})
    with pytest.raises(ConfigError, match="^cross_entropy"):  # section-relative when built directly
        TrainSection(cross_entropy="x")
    default = config_from_mapping(base)
    assert default.train == TrainSection(compile=False, cross_entropy="auto", ce_chunk_tokens=8192)
    fast = config_from_mapping({**base, "train": {"compile": True, "cross_entropy": "chunked", "ce_chunk_tokens": 4}})
    assert isinstance(fast, PipelineConfig) and isinstance(fast.data, DataConfig)
    sizes = {"pre": 40, "post": 20, "ft": 20, "pre_val": 2, "post_val": 2, "ft_val": 2, "seq_len": T}
    a, b = make_plan(default, sizes, "fp"), make_plan(fast, sizes, "fp")
    ids = lambda p: ([r.pre_id for r in p.pre], [r.upstream_id for r in p.post], [r.run_id for r in p.ft])  # noqa: E731
    assert ids(a) == ids(b) and len(a.ft) > 0
    assert dataclasses.replace(fast, train=TrainSection()) == default


def test_benchmark_variants_and_ce_memory_run(tmp_path):
    """The throughput benchmark's new modes run on CPU and write their JSON (not timed)."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "lm_throughput.py"
    spec = importlib.util.spec_from_file_location("lm_throughput_fast", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "v.json"
    assert bench.main(["--preset", "tiny-1m", "--device", "cpu", "--vocab", "64", "--batch", "2", "--seq-len", str(T),
                       "--steps", "1", "--warmup", "1", "--eval-batches", "0", "--threads", "1",
                       "--variants", "eager,eager+chunked", "--ce-chunk-tokens", "5", "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    a, b = rec["variants"]
    assert (a["cross_entropy"], b["cross_entropy"]) == ("plain", "chunked") and a["mfu"] is None
    assert b["losses"][0] == pytest.approx(a["losses"][0], rel=1e-6)  # same weights, same first batch
    out = tmp_path / "m.json"
    assert bench.main(["--ce-memory", "--device", "cpu", "--ce-tokens", "64", "--hidden", "8", "--vocab", "500",
                       "--ce-chunk-tokens", "16", "--json", str(out)]) == 0
    mem = json.loads(out.read_text())["ce_memory"]
    assert mem["loss_rel_diff"] < 1e-6 and mem["plain"]["peak_increase_mib"] >= 0
    with pytest.raises(ConfigError, match="--variants"):
        bench.main(["--device", "cpu", "--variants", "turbo"])
