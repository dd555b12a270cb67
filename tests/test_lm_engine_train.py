"""Training loop, evaluation and checkpoints against independent references.

References: closed-form warmup + cosine values, Hugging Face's own loss and
``torch.nn.functional.cross_entropy`` on HF logits, an uninterrupted run (for resume), a
full-batch run (for gradient accumulation), hand-scaled tensors (layer-wise change).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tokenizers
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from early_exposure.errors import ConfigError
from lm_experiments.engine.evaluate import evaluate, layerwise_change, save_checkpoint
from lm_experiments.engine.optim import OptimConfig, lr_at, make_optimizer
from lm_experiments.engine.train import EarlyStop, train
from lm_tiny import T, V, ArraySource, tiny_model


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

CPU = torch.device("cpu")


def _val_blocks() -> np.ndarray:
    return ArraySource(2, batch=8, seed=99).data.reshape(-1, T)


def test_lr_schedule_matches_closed_form():
    opt = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=4)
    total = 20
    # hand values: warmup lr*(s+1)/4; cosine p=(s-4)/16: s=12 -> p=1/2 -> 1e-4 + 4.5e-4
    expect = {0: 2.5e-4, 1: 5e-4, 3: 1e-3, 4: 1e-3, 12: 5.5e-4,
              8: 1e-4 + 0.45e-3 * (1 + math.cos(math.pi / 4)), 19: 1e-4 + 0.45e-3 * (1 + math.cos(math.pi * 15 / 16))}
    for s, v in expect.items():
        assert lr_at(s, opt, total) == pytest.approx(v, rel=1e-12, abs=0), s
    assert lr_at(0, OptimConfig(lr=2e-3), 10) == 2e-3  # no warmup: starts at the peak
    # and the optimizer really used those rates
    res = train(tiny_model(), ArraySource(6), optim=OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=2),
                ckpt_dir=_tmp_ck(), device=CPU)
    assert [h["lr"] for h in res.history] == pytest.approx(
        [5e-4, 1e-3, 1e-3, 1e-4 + 0.45e-3 * (1 + math.cos(math.pi / 4)), 5.5e-4,
         1e-4 + 0.45e-3 * (1 + math.cos(3 * math.pi / 4))], rel=1e-12)


def _tmp_ck():
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix="ee-ck-")) / "ck"


def test_weight_decay_only_on_matrices():
    model = tiny_model()
    opt = make_optimizer(model, OptimConfig(lr=1e-3, weight_decay=0.1), CPU)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim == 2 for p in decay["params"])
    assert {names[id(p)].rsplit(".", 2)[-2] for p in no_decay["params"]} == {
        "input_layernorm", "post_attention_layernorm", "norm"}
    assert (opt.defaults["betas"]) == (0.9, 0.95)


def test_training_reduces_loss_and_reports_throughput(tmp_path):
    res = train(tiny_model(), ArraySource(30), optim=OptimConfig(lr=3e-3, warmup_steps=3), ckpt_dir=tmp_path / "ck",
                device=CPU)
    assert res.steps == 30 and res.tokens == 30 * 4 * T and not res.diverged and not res.stopped_early
    first, last = res.history[0]["train_loss"], np.mean([h["train_loss"] for h in res.history[-5:]])
    assert first == pytest.approx(math.log(V), abs=0.3)  # near-uniform init
    assert last < first - 1.0
    assert res.tokens_per_s > 0 and res.wall_s > 0
    assert not (tmp_path / "ck").exists()  # checkpoint dir removed at the end


def test_evaluate_matches_hf_loss_and_independent_cross_entropy():
    model = tiny_model(seed=1)
    blocks = _val_blocks()  # (16, T)
    res = evaluate(model, blocks, batch_size=5, device=CPU, return_correct=True)
    x = torch.as_tensor(blocks)
    model.eval()
    with torch.no_grad():
        out = model(input_ids=x, labels=x)  # HF's own shifted loss, mean over all tokens
        logits = out.logits
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, V), x[:, 1:].reshape(-1))
    assert res.mean_loss == pytest.approx(float(ref), rel=1e-6)
    assert res.mean_loss == pytest.approx(float(out.loss), rel=1e-6)
    per = F.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none").mean(1)
    np.testing.assert_allclose(res.per_example, per.numpy(), rtol=1e-5)
    assert res.per_example.dtype == np.float32 and res.per_example.shape == (16,)
    assert res.correct.shape == (16, T - 1)
    np.testing.assert_array_equal(res.correct, (logits[:, :-1].argmax(-1) == x[:, 1:]).numpy())
    with pytest.raises(ConfigError, match="eval.blocks"):
        evaluate(model, blocks[:, :1], batch_size=4, device=CPU)


def test_evaluate_row_chunking_gives_same_numbers(monkeypatch):
    import lm_experiments.engine.evaluate as ev

    model, blocks = tiny_model(seed=1), _val_blocks()
    full = evaluate(model, blocks, batch_size=8, device=CPU, return_correct=True)
    monkeypatch.setattr(ev, "_CE_CHUNK_LOGITS", 3 * T * V)  # 3 rows per chunk, uneven split of 8
    chunked = evaluate(model, blocks, batch_size=8, device=CPU, return_correct=True)
    np.testing.assert_array_equal(chunked.per_example, full.per_example)
    np.testing.assert_array_equal(chunked.correct, full.correct)


def test_early_stopping_stops_and_restores_best_weights(tmp_path):
    model = tiny_model()
    scripted = iter([3.0, 2.0, 2.5, 2.6, 2.7, 2.8, 2.9])  # val loss rises after the 2nd evaluation
    snapshots: list[torch.Tensor] = []

    def eval_fn(m):
        snapshots.append(m.model.layers[0].mlp.up_proj.weight.detach().clone())
        return next(scripted)

    res = train(model, ArraySource(40), optim=OptimConfig(lr=1e-3), ckpt_dir=tmp_path / "ck", device=CPU,
                stopping=EarlyStop(eval_fn, eval_every=3, patience=2))
    assert res.stopped_early and not res.diverged
    assert len(snapshots) == 4  # best at eval 2, then two evaluations without improvement
    assert res.steps == 12 and res.best_step == 6 and res.best_val == 2.0
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, snapshots[1])
    assert not torch.equal(snapshots[1], snapshots[3])
    assert [h.get("val_loss") for h in res.history if "val_loss" in h] == [3.0, 2.0, 2.5, 2.6]


def test_early_stopping_on_real_rising_validation_loss(tmp_path):
    """Validation on a distribution the training data contradicts: its loss rises, the run
    stops, and the restored model scores the best recorded validation loss."""
    val = _val_blocks()
    model = tiny_model()
    # pretrain briefly on the pattern, then "fine-tune" on shuffled tokens: val loss rises
    train(model, ArraySource(25, seed=1), optim=OptimConfig(lr=3e-3), ckpt_dir=tmp_path / "a", device=CPU)
    rng = np.random.default_rng(0)

    class Noise:
        def __len__(self) -> int:
            return 40

        def batch(self, step: int) -> np.ndarray:
            return rng.__class__(np.random.PCG64(step)).integers(0, V, size=(4, T))

    res = train(model, Noise(), optim=OptimConfig(lr=3e-3), ckpt_dir=tmp_path / "b", device=CPU,
                stopping=EarlyStop(lambda m: evaluate(m, val, batch_size=16, device=CPU).mean_loss, eval_every=2,
                                   patience=2))
    vals = [h["val_loss"] for h in res.history if "val_loss" in h]
    assert res.stopped_early and res.steps < 40
    assert res.best_val == min(vals) and vals[-1] > res.best_val
    assert evaluate(model, val, batch_size=16, device=CPU).mean_loss == pytest.approx(res.best_val, abs=1e-6)


@pytest.mark.parametrize("checkpoint_every", [0, 2])
def test_resume_reproduces_uninterrupted_run_with_dropout(tmp_path, checkpoint_every):
    src = ArraySource(9)
    val = _val_blocks()
    kw = dict(optim=OptimConfig(lr=2e-3, min_lr=1e-4, warmup_steps=2), device=CPU, seed=7,
              stopping=EarlyStop(lambda m: evaluate(m, val, batch_size=16, device=CPU).mean_loss, eval_every=3,
                                 patience=5))

    ref_model = tiny_model(dropout=0.1)
    ref = train(ref_model, src, ckpt_dir=tmp_path / "ref", **kw)

    part = train(tiny_model(dropout=0.1), src, ckpt_dir=tmp_path / "ck", stop_after_steps=5,
                 checkpoint_every=checkpoint_every, **kw)
    assert part.steps == 5 and (tmp_path / "ck" / "state.pt").exists()
    # "new process": a fresh model object; its weights come from the checkpoint
    model = tiny_model(seed=123, dropout=0.1)
    res = train(model, src, ckpt_dir=tmp_path / "ck", checkpoint_every=checkpoint_every, **kw)
    assert res.resumed_from == 5 and res.steps == 9
    assert [h["train_loss"] for h in res.history] == [h["train_loss"] for h in ref.history]  # bitwise
    assert [h.get("val_loss") for h in res.history] == [h.get("val_loss") for h in ref.history]
    assert res.best_step == ref.best_step
    for (n, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters()):
        assert torch.equal(p, q), n
    assert not (tmp_path / "ck").exists()
    # dropout mattered: a different training seed gives different losses
    other = train(tiny_model(dropout=0.1), src, ckpt_dir=tmp_path / "o", **{**kw, "seed": 8})
    assert other.history[1]["train_loss"] != ref.history[1]["train_loss"]


def test_checkpoint_of_another_run_is_refused(tmp_path):
    train(tiny_model(), ArraySource(6), optim=OptimConfig(lr=1e-3), ckpt_dir=tmp_path / "ck", device=CPU,
          stop_after_steps=2)
    with pytest.raises(ConfigError, match="ckpt_dir"):
        train(tiny_model(), ArraySource(6), optim=OptimConfig(lr=5e-3), ckpt_dir=tmp_path / "ck", device=CPU)


def test_nan_loss_marks_diverged_without_crash_and_keeps_caller_rng(tmp_path):
    torch.manual_seed(0)
    state = torch.get_rng_state()
    res = train(tiny_model(), ArraySource(30), optim=OptimConfig(lr=1e6), ckpt_dir=tmp_path / "ck", device=CPU)
    assert res.diverged and res.steps < 30
    last = res.history[-1]
    assert not (math.isfinite(last["train_loss"]) and math.isfinite(last.get("grad_norm", 0.0)))
    assert last["step"] == res.steps + 1  # the failed step is recorded, not counted
    assert torch.equal(torch.get_rng_state(), state)
    assert not (tmp_path / "ck").exists()


def test_gradient_accumulation_equals_full_batch(tmp_path):
    a, b = tiny_model(), tiny_model()
    ra = train(a, ArraySource(4), optim=OptimConfig(lr=1e-3), ckpt_dir=tmp_path / "a", device=CPU)
    rb = train(b, ArraySource(4), optim=OptimConfig(lr=1e-3), ckpt_dir=tmp_path / "b", device=CPU, micro_batch=1)
    np.testing.assert_allclose([h["train_loss"] for h in rb.history], [h["train_loss"] for h in ra.history],
                               rtol=1e-6)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5)  # Adam amplifies ~1e-9 grad noise on tiny grads; 1% of one lr=1e-3 update


def test_bad_train_arguments_raise_config_error(tmp_path):
    with pytest.raises(ConfigError, match="optim.lr"):
        OptimConfig(lr=-1.0)
    with pytest.raises(ConfigError, match="optim.min_lr"):
        OptimConfig(lr=1e-3, min_lr=1e-2)
    with pytest.raises(ConfigError, match="eval_every"):
        train(tiny_model(), ArraySource(2), optim=OptimConfig(lr=1e-3), ckpt_dir=tmp_path, device=CPU,
              stopping=EarlyStop(eval_every=2))
    with pytest.raises(ConfigError, match="precision"):
        train(tiny_model(), ArraySource(2), optim=OptimConfig(lr=1e-3), ckpt_dir=tmp_path, device=CPU, precision="fp16")


def test_save_checkpoint_atomic_with_tokenizer_and_extra(tmp_path):
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({f"w{i}": i for i in range(V)}, unk_token="w0"))
    model = tiny_model(seed=2)
    out = tmp_path / "theta_post"
    save_checkpoint(model, tok, out, {"seed": 2, "loss": float("nan")})
    save_checkpoint(tiny_model(seed=4), tok, out, {"seed": 4})  # replaces the previous one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["theta_post"]  # no temp leftovers
    assert json.loads((out / "extra.json").read_text()) == {"seed": 4}
    assert tokenizers.Tokenizer.from_file(str(out / "tokenizer.json")).get_vocab_size() == V
    assert (out / "model.safetensors").exists()
    # a transformers tokenizer goes through its own save_pretrained
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    save_checkpoint(tiny_model(seed=4), PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0"), out, {"seed": 4})
    assert AutoTokenizer.from_pretrained(out).convert_tokens_to_ids("w5") == 5
    loaded = AutoModelForCausalLM.from_pretrained(out)
    ref = tiny_model(seed=4)
    x = torch.as_tensor(_val_blocks()[:2])
    loaded.eval()
    ref.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, ref(x).logits)


def test_layerwise_change_hand_scaled():
    a, b = tiny_model(), tiny_model()
    with torch.no_grad():
        b.model.layers[1].mlp.down_proj.weight.mul_(1.1)
        b.model.layers[1].mlp.up_proj.weight.zero_()
    ch = layerwise_change(a, b)
    assert ch["model.layers.1.mlp.down_proj.weight"] == pytest.approx(0.1, rel=1e-6)
    assert ch["model.layers.1.mlp.up_proj.weight"] == pytest.approx(1.0, rel=1e-12)
    assert ch["model.layers.0.mlp.down_proj.weight"] == 0.0 and ch["group/layers.0.mlp"] == 0.0
    mlp = a.model.layers[1].mlp
    d2 = 0.01 * mlp.down_proj.weight.double().pow(2).sum() + mlp.up_proj.weight.double().pow(2).sum()
    w2 = sum(getattr(mlp, n).weight.double().pow(2).sum() for n in ("gate_proj", "up_proj", "down_proj"))
    assert ch["group/layers.1.mlp"] == pytest.approx(float((d2 / w2).sqrt().detach()), rel=1e-6)  # b = fl32(1.1 w)
    assert {"group/embeddings", "group/head", "group/final_norm", "group/layers.1.attention",
            "group/layers.1.norm"} <= set(ch)
    assert ch["group/embeddings"] == 0.0 and ch["group/head"] == 0.0


def test_restore_best_false_keeps_last_weights(tmp_path):
    model = tiny_model()
    scripted = iter([2.0, 2.5, 2.6])
    snapshots: list[torch.Tensor] = []

    def eval_fn(m):
        snapshots.append(m.model.layers[0].mlp.up_proj.weight.detach().clone())
        return next(scripted)

    res = train(model, ArraySource(9), optim=OptimConfig(lr=1e-3), ckpt_dir=tmp_path / "ck", device=CPU,
                stopping=EarlyStop(eval_fn, eval_every=3, restore_best=False))
    assert res.steps == 9 and res.best_step == 3 and not res.stopped_early
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, snapshots[-1])
    assert not torch.equal(snapshots[0], snapshots[-1])


def test_throughput_benchmark_runs_and_counts_flops(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    from early_exposure.errors import cli_main

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "lm_throughput.py"
    spec = importlib.util.spec_from_file_location("lm_throughput", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # hand count for tiny-1m at vocab 64: non-embedding 2*(4*128^2 + 3*128*512 + 2*128) + 128, head 64*128
    model = tiny_model()
    n = 2 * (4 * 128 * 128 + 3 * 128 * 512 + 2 * 128) + 128 + 64 * 128
    assert bench.train_flops_per_token(model, T) == 6 * n + 12 * 2 * 128 * T
    out = tmp_path / "b.json"
    rc = bench.main(["--preset", "tiny-1m", "--device", "cpu", "--vocab", "64", "--batch", "2", "--seq-len", str(T), "--steps", "2",
                     "--warmup", "1", "--eval-batches", "1", "--threads", "1", "--json", str(out)])
    assert rc == 0
    rec = json.loads(out.read_text())
    assert rec["train_tokens_per_s"] > 0 and rec["eval_tokens_per_s"] > 0 and rec["mfu"] is None
    assert rec["params"]["total"] == model_total(model) and "provenance" in rec
    assert cli_main(bench.main, ["--preset", "nope"]) == 2
    assert "--preset" in capsys.readouterr().err


def model_total(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_non_finite_gradient_stops_before_the_update(tmp_path):
    model = tiny_model()
    w = model.model.layers[0].mlp.up_proj.weight
    calls = {"n": 0}
    after_first: list[torch.Tensor] = []

    def poison(g: torch.Tensor) -> torch.Tensor:  # finite loss, infinite gradient at step 2
        calls["n"] += 1
        if calls["n"] == 1:
            return g
        after_first.append(w.detach().clone())
        return g * float("inf")

    w.register_hook(poison)
    res = train(model, ArraySource(5), optim=OptimConfig(lr=1e-3), ckpt_dir=tmp_path / "ck", device=CPU)
    assert res.diverged and res.steps == 1 and len(res.history) == 2
    assert math.isfinite(res.history[-1]["train_loss"]) and not math.isfinite(res.history[-1]["grad_norm"])
    assert torch.equal(w, after_first[0])  # the poisoned step never touched the weights
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_partial_last_batch_reports_and_trains_on_its_own_mean_loss(tmp_path):
    """A plan's last batch may hold fewer rows than the others (e.g. one epoch of 500 blocks
    at batch 16): its loss is the mean over its own rows, not scaled by rows / batch size.
    Reference: Hugging Face's loss of the (practically unchanged, lr 1e-12) model on that batch."""

    class Ragged:
        def __init__(self) -> None:
            full = ArraySource(2, batch=4, seed=3).data
            self.batches = [full[0], full[1][:2]]  # 4 rows, then 2

        def __len__(self) -> int:
            return 2

        def batch(self, step: int) -> np.ndarray:
            return self.batches[step]

    src = Ragged()
    model = tiny_model(seed=1)
    with torch.no_grad():
        x = torch.as_tensor(src.batch(1))
        ref = float(model(input_ids=x, labels=x).loss)
    res = train(model, src, optim=OptimConfig(lr=1e-12, weight_decay=0.0), ckpt_dir=tmp_path / "ck", device=CPU)
    assert res.history[1]["train_loss"] == pytest.approx(ref, rel=1e-5)
