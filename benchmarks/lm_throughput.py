"""Training and evaluation throughput of the LM engine (tokens/s, and MFU on a GPU).

Run (CPU, tiny preset, the defaults there):
    python benchmarks/lm_throughput.py
Run (GPU, the paper's 135M model: bf16 autocast, SDPA attention, fused AdamW):
    python benchmarks/lm_throughput.py --preset smollm2-135m --batch 16 --seq-len 2048 [--compile]

The timed step is the engine's own (``lm_experiments.train.loss_and_backward`` + grad clip
+ ``make_optimizer``'s AdamW, fused on CUDA), on random tokens, after ``--warmup`` untimed
steps. MFU = achieved FLOP/s / device peak, with training FLOPs per token
``6 * N + 12 * n_layer * d_model * seq_len`` (PaLM, App. B: N = non-embedding parameters
plus the output head's matmul; the attention term counts the full, not causal, score
matrix, the usual convention). Peaks are dense bf16 figures (H100 SXM 989 TFLOP/s);
``--peak-tflops`` overrides. Speed targets live here, never in timed tests.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # runnable from a checkout

import numpy as np  # noqa: E402
import torch  # noqa: E402

from early_exposure.errors import ConfigError, cli_main  # noqa: E402
from early_exposure.io import atomic_write_json  # noqa: E402
from early_exposure.provenance import provenance  # noqa: E402
from lm_experiments.device import resolve_device, uses_bf16  # noqa: E402
from lm_experiments.evaluate import evaluate  # noqa: E402
from lm_experiments.model import MODEL_PRESETS, build_model, count_parameters  # noqa: E402
from lm_experiments.train import OptimConfig, loss_and_backward, make_optimizer  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s), matched against torch.cuda.get_device_name().
_PEAKS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0), ("A100", 312.0),
          ("L40S", 362.0), ("4090", 165.2), ("A10G", 70.0), ("L4", 121.0))


def device_peak_tflops(device: torch.device) -> float | None:
    """Dense bf16 peak of ``device`` in TFLOP/s, or None when unknown (CPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in _PEAKS:
        if key in name:
            return peak
    return None


def train_flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """6N + 12 L d T (see module docstring)."""
    cfg = model.config
    counts = count_parameters(model)
    n = counts["non_embedding"] + cfg.vocab_size * cfg.hidden_size  # + head matmul (tied or not)
    return 6.0 * n + 12.0 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=None, help="model preset (default: tiny-3m on CPU, smollm2-135m on GPU)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--batch", type=int, default=None, help="sequences per step (default 16)")
    ap.add_argument("--seq-len", type=int, default=None, help="default 128 on CPU, 2048 on GPU")
    ap.add_argument("--vocab", type=int, default=None, help="default 4096 for tiny presets, 49152 otherwise")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10 CPU, 30 GPU)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile, allocator)")
    ap.add_argument("--micro-batch", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--eval-batches", type=int, default=3, help="timed evaluation batches (0: skip)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the device peak for MFU")
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    preset = args.preset or ("smollm2-135m" if gpu else "tiny-3m")
    if preset not in MODEL_PRESETS:
        raise ConfigError("--preset", f"unknown preset {preset!r}; choose one of {sorted(MODEL_PRESETS)}")
    vocab = args.vocab or (4096 if preset.startswith("tiny") else 49152)
    seq = args.seq_len or (2048 if gpu else 128)
    batch = args.batch or 16
    steps = args.steps or (30 if gpu else 10)
    for name, v in (("--batch", batch), ("--seq-len", seq), ("--steps", steps)):
        if v < 1:
            raise ConfigError(name, f"must be >= 1, got {v}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    model = build_model(preset, vocab_size=vocab, max_seq_len=seq, seed=0).to(device)
    counts = count_parameters(model)
    opt = make_optimizer(model, OptimConfig(lr=1e-4), device)
    step_model = torch.compile(model) if args.compile else model
    rng = np.random.default_rng(0)
    xs = [torch.as_tensor(rng.integers(0, vocab, size=(batch, seq)), dtype=torch.long).to(device) for _ in range(4)]
    params = [p for p in model.parameters() if p.requires_grad]

    def step(i: int) -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_and_backward(step_model, xs[i % len(xs)], device, args.precision, args.micro_batch)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss)  # the engine syncs once per step too (NaN check)

    t = time.perf_counter()
    for i in range(args.warmup):
        step(i)
    _sync(device)
    warmup_s = time.perf_counter() - t
    if gpu:
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    for i in range(steps):
        step(i)
    _sync(device)
    dt = time.perf_counter() - t
    tok_s = steps * batch * seq / dt
    flops_tok = train_flops_per_token(model, seq)
    peak = args.peak_tflops or device_peak_tflops(device)
    out: dict[str, Any] = {
        "preset": preset, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if gpu else "cpu",
        "bf16": uses_bf16(device, args.precision), "compile": args.compile, "batch": batch, "seq_len": seq,
        "vocab": vocab, "params": counts, "threads": torch.get_num_threads(), "timed_steps": steps,
        "warmup_s": warmup_s, "step_s": dt / steps, "train_tokens_per_s": tok_s,
        "train_tflops": tok_s * flops_tok / 1e12, "peak_tflops": peak,
        "mfu": (tok_s * flops_tok / 1e12 / peak) if peak else None,
        "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if gpu else None,
    }
    if args.eval_batches > 0:
        blocks = rng.integers(0, vocab, size=(batch * args.eval_batches, seq))
        evaluate(model, blocks[:batch], batch_size=batch, device=device, precision=args.precision)  # warm-up
        _sync(device)
        t = time.perf_counter()
        evaluate(model, blocks, batch_size=batch, device=device, precision=args.precision)
        _sync(device)
        out["eval_tokens_per_s"] = blocks.size / (time.perf_counter() - t)
    print(f"{preset} on {out['device_name']} ({'bf16' if out['bf16'] else 'fp32'}"
          f"{', compiled' if args.compile else ''}, {out['threads']} threads): batch {batch} x seq {seq}, "
          f"{counts['total'] / 1e6:.2f}M params")
    print(f"  train: {tok_s:,.0f} tokens/s ({dt / steps * 1e3:.1f} ms/step), "
          f"{out['train_tflops']:.2f} TFLOP/s" + (f", MFU {out['mfu']:.1%} of {peak:g}" if peak else ", MFU n/a (no peak)"))
    if "eval_tokens_per_s" in out:
        print(f"  eval:  {out['eval_tokens_per_s']:,.0f} tokens/s")
    if out["peak_mem_gb"] is not None:
        print(f"  peak GPU memory: {out['peak_mem_gb']:.1f} GiB")
    if args.json:
        atomic_write_json(args.json, {**out, "provenance": provenance()})
    return 0


if __name__ == "__main__":
    sys.exit(cli_main(main))
