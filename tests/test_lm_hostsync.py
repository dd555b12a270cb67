"""Host work off the critical path of the training loop, and the compute summary.

- The loss and gradient norm are read back to the host only at logging steps (a counter of
  the engine's one read function and of ``Tensor.__float__``, not a timer), and the deferred
  reads change nothing: the history and weights equal those of a read at every step.
- Divergence stays exact: found before the update at a logging step; a run that diverged
  between logging steps still ends diverged with the record of an every-step check.
- FLOPs per token against a hand calculation from the architecture (full attention, causal
  half, LoRA with frozen weights at 4 FLOPs per parameter); MFU over the post-warm-up window.
- The SDPA backend is reported, and follows torch's own backend switch.
"""

from __future__ import annotations

import math

import pytest
import torch

import lm_experiments.engine.train as train_mod
from lm_experiments.engine.model import apply_lora, train_flops_per_token, train_flops_per_token_causal
from lm_experiments.engine.optim import OptimConfig
from lm_experiments.engine.train import EarlyStop, sdpa_backend, train
from lm_tiny import T, V, ArraySource, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = torch.device("cpu")


class _Counter:
    """Counts the engine's host reads (``_to_host``) and every ``Tensor.__float__``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads = self.floats = 0
        real_read, real_float = train_mod._to_host, torch.Tensor.__float__

        def read(t: torch.Tensor) -> list[float]:
            self.reads += 1
            return real_read(t)

        def as_float(t: torch.Tensor) -> float:
            self.floats += 1
            return real_float(t)

        monkeypatch.setattr(train_mod, "_to_host", read)
        monkeypatch.setattr(torch.Tensor, "__float__", as_float)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_loss_is_read_back_only_at_logging_steps_and_nothing_changes(tmp_path, monkeypatch) -> None:
    kw = dict(optim=OptimConfig(lr=3e-3, warmup_steps=2), device=CPU, progress=False)
    every = tiny_model()
    ref = train(every, ArraySource(20), ckpt_dir=tmp_path / "a", log_every=1, **kw)  # a read at every step
    every_w = _weights(every)
    count = _Counter(monkeypatch)
    model = tiny_model()
    res = train(model, ArraySource(20), ckpt_dir=tmp_path / "b", log_every=5, **kw)
    assert count.reads == 4  # steps 5, 10, 15, 20: one read each
    assert count.floats == 0  # no per-step float(loss) / float(grad norm)
    assert res.history == ref.history and len(res.history) == 20
    assert all(torch.equal(p, every_w[n]) for n, p in model.named_parameters())


def test_evaluation_and_checkpoint_steps_are_logging_steps(tmp_path, monkeypatch) -> None:
    count = _Counter(monkeypatch)
    stop = EarlyStop(eval_fn=lambda m: 1.0, eval_every=3)  # constant: never improves after the first
    res = train(tiny_model(), ArraySource(12), optim=OptimConfig(lr=1e-3), ckpt_dir=tmp_path / "ck", device=CPU,
                stopping=stop, checkpoint_every=4, log_every=5, progress=False)
    # logging steps: 3 6 9 12 (evaluation), 4 8 (checkpoint), 5 10 (log_every), 12 (last)
    assert count.reads == len({3, 6, 9, 12, 4, 8, 5, 10})
    assert [h["step"] for h in res.history if "val_loss" in h] == [3, 6, 9, 12]


def test_divergence_between_logging_steps_ends_diverged_with_the_every_step_record(tmp_path) -> None:
    kw = dict(optim=OptimConfig(lr=1e6), device=CPU, progress=False)
    ref = train(tiny_model(), ArraySource(30), ckpt_dir=tmp_path / "a", log_every=1, **kw)
    assert ref.diverged and ref.steps < 30
    for log_every in (7, 30):
        res = train(tiny_model(), ArraySource(30), ckpt_dir=tmp_path / f"b{log_every}", log_every=log_every, **kw)
        assert res.diverged and (res.steps, res.tokens) == (ref.steps, ref.tokens)
        assert _same_nan_history(res.history, ref.history)
        assert not (tmp_path / f"b{log_every}").exists()


def _same_nan_history(a: list[dict], b: list[dict]) -> bool:
    """Histories equal with NaN == NaN."""
    def norm(h: dict) -> dict:
        return {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in h.items()}

    return [norm(h) for h in a] == [norm(h) for h in b]


def _poisoned(at: int):
    """A tiny model whose gradient of one weight becomes infinite at step ``at`` (finite loss)."""
    model = tiny_model()
    w = model.model.layers[0].mlp.up_proj.weight
    calls = {"n": 0}
    before: list[torch.Tensor] = []

    def poison(g: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] < at:
            return g
        before.append(w.detach().clone())
        return g * float("inf")

    w.register_hook(poison)
    return model, w, before


def test_non_finite_gradient_at_a_logging_step_stops_before_the_update(tmp_path) -> None:
    model, w, before = _poisoned(4)  # step 4 is a logging step at log_every=2
    res = train(model, ArraySource(9), optim=OptimConfig(lr=1e-3), ckpt_dir=tmp_path / "ck", device=CPU,
                log_every=2, progress=False)
    assert res.diverged and res.steps == 3 and len(res.history) == 4
    assert math.isfinite(res.history[-1]["train_loss"]) and not math.isfinite(res.history[-1]["grad_norm"])
    assert torch.equal(w, before[0])  # the poisoned step never touched the weights
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_non_finite_gradient_between_logging_steps_still_ends_diverged(tmp_path) -> None:
    model, _, _ = _poisoned(3)  # step 3: between the logging steps 2 and 4
    res = train(model, ArraySource(9), optim=OptimConfig(lr=1e-3), ckpt_dir=tmp_path / "ck", device=CPU,
                log_every=2, progress=False)
    ref_model, _, _ = _poisoned(3)
    ref = train(ref_model, ArraySource(9), optim=OptimConfig(lr=1e-3), ckpt_dir=tmp_path / "r", device=CPU,
                log_every=1, progress=False)
    assert res.diverged and res.steps == ref.steps == 2 and res.tokens == ref.tokens
    assert res.history == ref.history and not math.isfinite(res.history[-1]["grad_norm"])


def _hand_flops(model: torch.nn.Module, causal: bool, lora_rank: int | None = None) -> float:
    """Per token: 6 per trainable and 4 per frozen weight (non-embedding, head as V d),
    attention 12 L d T (full) or 6 L d T (causal)."""
    c = model.config
    d, L, ff, vocab = c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.vocab_size
    kv = c.num_key_value_heads * (d // c.num_attention_heads)
    per_layer = d * d + 2 * d * kv + d * d + 3 * d * ff + 2 * d  # q, k, v, o, MLP, two RMSNorms
    base = L * per_layer + d + vocab * d  # + final norm + output head
    attn = (6 if causal else 12) * L * d * T
    if lora_rank is None:
        return 6 * base + attn
    r = lora_rank  # adapters on o, gate, up, down (per layer) and the head
    adapters = L * r * ((d + d) + (d + ff) + (d + ff) + (ff + d)) + r * (d + vocab)
    return 6 * adapters + 4 * base + attn


def test_flops_per_token_full_causal_and_lora_match_a_hand_count() -> None:
    model = tiny_model()
    assert model.config.vocab_size == V
    assert train_flops_per_token(model, T) == _hand_flops(model, causal=False) == 6 * 533_120 + 12 * 2 * 128 * T
    assert train_flops_per_token_causal(model, T) == _hand_flops(model, causal=True)
    lora = apply_lora(tiny_model(), rank=4, alpha=8)
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert trainable == 2 * 4 * (256 + 640 + 640 + 640) + 4 * (128 + 64)  # the adapters only
    assert train_flops_per_token(lora, T) == _hand_flops(model, causal=False, lora_rank=4)
    assert train_flops_per_token_causal(lora, T) == _hand_flops(model, causal=True, lora_rank=4)


def test_mfu_is_measured_after_warm_up_in_both_conventions(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(train_mod, "device_peak_tflops", lambda device: 1.0)  # a pretend peak: 1 TFLOP/s
    res = train(tiny_model(), ArraySource(20), optim=OptimConfig(lr=1e-3), ckpt_dir=tmp_path / "ck", device=CPU,
                log_every=3, warmup_steps=4, progress=False)
    # logging steps 3 6 ... 18 and 20: the window runs from the first at or after step 4 to the last
    assert res.mfu_window == {"from_step": 6, "to_step": 20, "steps": 14, "after_warmup": True}
    assert res.tokens_per_s_measured > 0
    assert res.mfu == pytest.approx(res.tokens_per_s_measured * res.flops_per_token / 1e12, rel=1e-12)
    assert res.mfu_causal / res.mfu == pytest.approx(res.flops_per_token_causal / res.flops_per_token, rel=1e-12)
    s = res.compute_summary()
    assert {"mfu", "mfu_causal", "flops_per_token_causal", "mfu_window", "sdpa_backend"} <= set(s)
    short = train(tiny_model(), ArraySource(2), optim=OptimConfig(lr=1e-3), ckpt_dir=tmp_path / "s", device=CPU,
                  log_every=5, progress=False)  # one read in all: no window after warm-up
    assert short.mfu_window["after_warmup"] is False and short.tokens_per_s_measured == short.tokens_per_s
    assert short.mfu == pytest.approx(short.tokens_per_s * short.flops_per_token / 1e12, rel=1e-12)
    monkeypatch.undo()
    assert train(tiny_model(), ArraySource(2), optim=OptimConfig(lr=1e-3), ckpt_dir=tmp_path / "c", device=CPU,
                 progress=False).mfu is None  # the CPU has no peak


def test_sdpa_backend_is_reported_and_follows_torch_switches() -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = tiny_model()
    assert sdpa_backend(model, CPU, T) in {"flash", "math", "efficient", "cudnn", "overrideable"}
    with sdpa_kernel(SDPBackend.MATH):
        assert sdpa_backend(model, CPU, T) == "math"
    model.config._attn_implementation = "eager"
    assert sdpa_backend(model, CPU, T) == "eager"
