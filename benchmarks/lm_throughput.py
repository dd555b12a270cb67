"""Training and evaluation throughput of the LM engine (tokens/s, MFU and peak memory on a GPU).

Run (CPU, tiny preset, the defaults there):
    python benchmarks/lm_throughput.py
Run (GPU, the paper's 135M model: bf16 autocast, SDPA attention, fused AdamW):
    python benchmarks/lm_throughput.py --preset smollm2-135m --batch 16 --seq-len 2048 [--compile] \
        [--cross-entropy plain|chunked|fused|auto]
Several variants of the same shape in one process (fresh model and optimizer each, the same
random batches; eager/compiled x plain/chunked/fused cross-entropy):
    python benchmarks/lm_throughput.py --preset smollm2-135m --batch 16 --seq-len 2048 \
        --variants eager,compiled,eager+chunked,compiled+chunked,compiled+fused --json out.json
Memory of the loss alone (head projection + cross-entropy, forward and backward), plain
versus chunked, at a vocabulary of 49,152 (each in a fresh subprocess):
    python benchmarks/lm_throughput.py --ce-memory [--ce-tokens 4096 --hidden 576 --vocab 49152]

The timed step is the engine's own (``lm_experiments.engine.train.loss_and_backward`` with the
engine's :class:`lm_experiments.engine.losses.CausalLMLoss`, grad clip, ``make_optimizer``'s AdamW,
fused on CUDA), on random tokens, after ``--warmup`` untimed steps (which include the
compilation of compiled variants). MFU = achieved FLOP/s / device peak, with training FLOPs
per token ``6 * N + 12 * n_layer * d_model * seq_len`` (PaLM, App. B: N = non-embedding
parameters plus the output head's matmul; the attention term counts the full, not causal,
score matrix, the usual convention; ``lm_experiments.engine.model.train_flops_per_token``). Peaks are
dense bf16 figures (H100 SXM / H200 989 TFLOP/s; ``lm_experiments.engine.device.device_peak_tflops``);
``--peak-tflops`` overrides. MFU is also reported in the causal-half convention
(``mfu_causal``: attention term ``6 * n_layer * d_model * seq_len``, only the causal half of the
score matrix; computed here from the config, the engine counts only the full one). Peak GPU
memory is ``torch.cuda.max_memory_allocated`` (and ``max_memory_reserved``: what the caching
allocator held) over the timed steps. ``--profile-steps N`` runs N more steps under
``torch.profiler`` and records the top kernels (CUDA) or ops (CPU) by self time and which
scaled-dot-product-attention backend ran. The JSON is rewritten (atomically) after every
variant; a variant that raises is recorded with its error and the others still run. ``--ce-memory`` measures, on CPU, the growth of the process's peak resident set
size (``getrusage`` ``ru_maxrss``, a high-water mark) across one loss + backward, in a fresh
process per implementation, so it counts every page the loss touched (the logits and their
gradients, the gradients of the hidden states and of the head weight, which both
implementations need); on CUDA it reports the growth of ``max_memory_allocated`` instead.
Speed targets live here, never in timed tests.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # runnable from a checkout

import numpy as np
import torch

from early_exposure.errors import ConfigError, cli_main
from early_exposure.io import atomic_write_json
from early_exposure.provenance import provenance
from lm_experiments.engine.device import device_peak_tflops, resolve_device, uses_bf16
from lm_experiments.engine.evaluate import evaluate
from lm_experiments.engine.losses import CausalLMLoss, linear_cross_entropy, resolve_cross_entropy
from lm_experiments.engine.model import MODEL_PRESETS, build_model, count_parameters, train_flops_per_token
from lm_experiments.engine.optim import OptimConfig, make_optimizer
from lm_experiments.engine.train import loss_and_backward

VARIANTS = ("eager", "compiled", "eager+plain", "compiled+plain", "eager+chunked", "compiled+chunked",
            "eager+fused", "compiled+fused", "eager+auto", "compiled+auto")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _parse_variant(v: str, default_ce: str) -> tuple[bool, str]:
    if v not in VARIANTS:
        raise ConfigError("--variants", f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    head, _, ce = v.partition("+")
    return head == "compiled", ce or default_ce


def flops_per_token(model: torch.nn.Module, seq: int) -> dict[str, float]:
    """Training FLOPs per token in both conventions.

    ``full``: the engine's ``train_flops_per_token`` (``6 N + 12 L d T``, PaLM App. B: the
    attention score and value matmuls over the full ``T x T`` matrix). ``causal``: the same
    with only the causal half of that matrix counted (``6 N + 6 L d T``). The causal term is
    derived here from the model's config (``num_hidden_layers``, ``hidden_size``); it belongs
    in the engine next to ``train_flops_per_token``.
    """
    full = float(train_flops_per_token(model, seq))
    cfg = model.config
    return {"full": full, "causal": full - 6.0 * cfg.num_hidden_layers * cfg.hidden_size * seq}


def mfu(tokens_per_s: float, flops_per_tok: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: ``tokens_per_s * flops_per_tok / (peak_tflops * 1e12)``; None without a peak."""
    if not peak_tflops:
        return None
    return tokens_per_s * flops_per_tok / (peak_tflops * 1e12)


#: profiler op name (substring) -> scaled-dot-product-attention backend that ran
SDPA_OPS = (("_scaled_dot_product_flash_attention_for_cpu", "flash (cpu)"),
            ("_scaled_dot_product_flash_attention", "flash"),
            ("_scaled_dot_product_efficient_attention", "efficient (mem-efficient)"),
            ("_scaled_dot_product_cudnn_attention", "cudnn"),
            ("_scaled_dot_product_fused_attention_overrideable", "overrideable"),
            ("_scaled_dot_product_attention_math", "math"),
            ("flash_attn", "flash-attn (package)"))


def sdpa_backends(names: list[str]) -> list[str]:
    """The attention backends whose ops appear among the profiler event ``names`` (first match per name)."""
    found: list[str] = []
    for name in names:
        for key, backend in SDPA_OPS:
            if key in name:
                if backend not in found:
                    found.append(backend)
                break
    return found


def profile_steps(step: Any, first: int, n: int, device: torch.device, top: int = 15) -> dict[str, Any]:
    """``n`` more steps under ``torch.profiler``: top kernels (CUDA) / ops (CPU) by self time, the
    printed table and the SDPA backend(s) seen."""
    from torch.profiler import ProfilerActivity, profile

    gpu = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    with profile(activities=acts) as prof:
        for i in range(n):
            step(first + i)
        _sync(device)
    events = prof.key_averages()
    names = [e.key for e in events]
    if gpu:
        rows = [e for e in events if str(getattr(e, "device_type", "")).endswith("CUDA")]
        key, attr = "self_cuda_time_total", "self_device_time_total"
    else:
        rows = list(events)
        key, attr = "self_cpu_time_total", "self_cpu_time_total"
    rows.sort(key=lambda e: getattr(e, attr, 0) or 0, reverse=True)
    total = sum(getattr(e, attr, 0) or 0 for e in rows) or 1.0
    try:
        table = events.table(sort_by=key, row_limit=top)
    except Exception:  # noqa: BLE001 - sort key names differ across torch versions
        table = events.table(sort_by=attr, row_limit=top)
    return {"steps": n, "kind": "cuda kernels" if gpu else "cpu ops", "time_unit": "us",
            "top": [{"name": e.key, "self_us": float(getattr(e, attr, 0) or 0), "calls": int(e.count),
                     "share": float((getattr(e, attr, 0) or 0) / total)} for e in rows[:top]],
            "sdpa_backend": sdpa_backends(names), "table": table}


def measure(*, preset: str, device: torch.device, precision: str, batch: int, seq: int, vocab: int, steps: int,
            warmup: int, micro_batch: int, compile: bool, cross_entropy: str, ce_chunk_tokens: int,
            eval_batches: int, peak_tflops: float | None, model_hook: Any = None,
            profile: int = 0) -> dict[str, Any]:
    """One configuration: tokens/s, TFLOP/s, MFU (both conventions), peak memory (allocated and
    reserved), eval tokens/s, first losses; with ``profile`` > 0 that many more steps under
    ``torch.profiler`` (top kernels, SDPA backend). ``model_hook(model)`` may change the freshly
    built model (e.g. swap in a fast block); it returns the model to use (or None: changed in place)."""
    gpu = device.type == "cuda"
    if compile:
        torch._dynamo.reset()  # every compiled variant compiles from scratch (and its warm-up shows it)
    model = build_model(preset, vocab_size=vocab, max_seq_len=seq, seed=0)
    if model_hook is not None:
        model = model_hook(model) or model
    model = model.to(device)
    counts = count_parameters(model)
    opt = make_optimizer(model, OptimConfig(lr=1e-4), device)
    ce = resolve_cross_entropy(cross_entropy, device, model)
    loss_module = CausalLMLoss(model, cross_entropy=ce, chunk_tokens=ce_chunk_tokens, compile=compile)
    rng = np.random.default_rng(0)
    xs = [torch.as_tensor(rng.integers(0, vocab, size=(batch, seq)), dtype=torch.long).to(device) for _ in range(4)]
    params = [p for p in model.parameters() if p.requires_grad]
    losses: list[float] = []

    def step(i: int) -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_and_backward(model, xs[i % len(xs)], device, precision, micro_batch, loss_fn=loss_module)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss)  # the engine syncs once per step too (NaN check)

    if gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    for i in range(warmup):
        losses.append(step(i))
    _sync(device)
    warmup_s = time.perf_counter() - t
    warmup_peak = torch.cuda.max_memory_allocated(device) / 2**30 if gpu else None
    if gpu:
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    for i in range(steps):
        losses.append(step(warmup + i))
    _sync(device)
    dt = time.perf_counter() - t
    tok_s = steps * batch * seq / dt
    flops = flops_per_token(model, seq)
    flops_tok = flops["full"]
    peak = peak_tflops or device_peak_tflops(device)
    out: dict[str, Any] = {
        "preset": preset, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if gpu else "cpu",
        "bf16": uses_bf16(device, precision), "compile": compile, "cross_entropy": ce,
        "ce_chunk_tokens": ce_chunk_tokens if ce == "chunked" else None, "batch": batch, "seq_len": seq,
        "micro_batch": micro_batch, "vocab": vocab, "params": counts, "threads": torch.get_num_threads(),
        "attn_implementation": getattr(getattr(model, "config", None), "_attn_implementation", None),
        "timed_steps": steps, "warmup_steps": warmup, "warmup_s": warmup_s, "step_s": dt / steps,
        "train_tokens_per_s": tok_s, "flops_per_token": flops_tok, "flops_per_token_causal": flops["causal"],
        "train_tflops": tok_s * flops_tok / 1e12, "peak_tflops": peak,
        "mfu": mfu(tok_s, flops_tok, peak), "mfu_causal": mfu(tok_s, flops["causal"], peak),
        "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if gpu else None,
        "peak_mem_reserved_gb": torch.cuda.max_memory_reserved(device) / 2**30 if gpu else None,
        "warmup_peak_mem_gb": warmup_peak,
        "losses": losses,  # step 0 is the same number for every variant (same weights, same batch)
    }
    if profile > 0:
        out["profile"] = profile_steps(step, warmup + steps, profile, device)
        out["sdpa_backend"] = out["profile"]["sdpa_backend"]
    if eval_batches > 0:
        blocks = rng.integers(0, vocab, size=(batch * eval_batches, seq))
        evaluate(model, blocks[:batch], batch_size=batch, device=device, precision=precision)  # warm-up
        _sync(device)
        t = time.perf_counter()
        evaluate(model, blocks, batch_size=batch, device=device, precision=precision)
        _sync(device)
        out["eval_tokens_per_s"] = blocks.size / (time.perf_counter() - t)
    # free the variant's GPU memory before the next one (the step closure is not called again)
    model = opt = loss_module = xs = None
    gc.collect()
    if gpu:
        torch.cuda.empty_cache()
    return out


def _print(out: dict[str, Any]) -> None:
    peak = out["peak_tflops"]
    print(f"{out['preset']} on {out['device_name']} ({'bf16' if out['bf16'] else 'fp32'}"
          f"{', compiled' if out['compile'] else ''}, {out['cross_entropy']} cross-entropy, {out['threads']} threads): "
          f"batch {out['batch']} x seq {out['seq_len']}, {out['params']['total'] / 1e6:.2f}M params")
    print(f"  train: {out['train_tokens_per_s']:,.0f} tokens/s ({out['step_s'] * 1e3:.1f} ms/step), "
          f"{out['train_tflops']:.2f} TFLOP/s" + (f", MFU {out['mfu']:.1%} of {peak:g}" if peak else ", MFU n/a (no peak)")
          + (f" ({out['mfu_causal']:.1%} causal-half)" if out.get("mfu_causal") is not None else "")
          + f"; warm-up {out['warmup_s']:.1f} s")
    if "eval_tokens_per_s" in out:
        print(f"  eval:  {out['eval_tokens_per_s']:,.0f} tokens/s")
    if out["peak_mem_gb"] is not None:
        print(f"  peak GPU memory: {out['peak_mem_gb']:.1f} GiB allocated, {out['peak_mem_reserved_gb']:.1f} GiB reserved")
    if out.get("sdpa_backend") is not None:
        print(f"  attention: {', '.join(out['sdpa_backend']) or 'no SDPA op seen'}")


# ---- memory of the loss alone ---------------------------------------------------------------
def _ce_memory_child(mode: str, tokens: int, hidden: int, vocab: int, chunk: int, device_name: str) -> dict[str, Any]:
    """One loss + backward of ``mode`` in this (fresh) process; peak-memory growth."""
    import resource

    device = resolve_device(device_name)
    g = torch.Generator().manual_seed(0)
    h = (torch.randn(tokens, hidden, generator=g)).to(device).requires_grad_(True)
    w = (torch.randn(vocab, hidden, generator=g) * 0.02).to(device).requires_grad_(True)
    t = torch.randint(0, vocab, (tokens,), generator=g).to(device)
    gc.collect()
    gpu = device.type == "cuda"
    if gpu:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.max_memory_allocated(device)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    t0 = time.perf_counter()
    if mode == "plain":  # what Hugging Face's loss does: full logits, fp32, F.cross_entropy
        loss = torch.nn.functional.cross_entropy((h @ w.t()).float(), t)
    else:
        loss = linear_cross_entropy(h, w, t, mode="chunked", chunk_tokens=chunk)
    loss.backward()
    _sync(device)
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated(device) if gpu
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"mode": mode, "loss": float(loss.detach()), "seconds": seconds, "peak_increase_mib": (peak - base) / 2**20,
            "measure": "cuda max_memory_allocated growth" if gpu else "ru_maxrss growth (peak RSS)",
            "logits_fp32_mib": tokens * vocab * 4 / 2**20}


def ce_memory(tokens: int, hidden: int, vocab: int, chunk: int, device_name: str) -> dict[str, Any]:
    """Plain vs chunked loss + backward, each in a fresh subprocess (honest high-water marks)."""
    out: dict[str, Any] = {"tokens": tokens, "hidden": hidden, "vocab": vocab, "ce_chunk_tokens": chunk,
                           "device": device_name}
    for mode in ("plain", "chunked"):
        cmd = [sys.executable, os.path.abspath(__file__), "--ce-memory-child", mode, "--ce-tokens", str(tokens),
               "--hidden", str(hidden), "--vocab", str(vocab), "--ce-chunk-tokens", str(chunk), "--device", device_name]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"--ce-memory child {mode} failed: {proc.stderr[-2000:]}")
        out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["saving_factor"] = out["plain"]["peak_increase_mib"] / max(out["chunked"]["peak_increase_mib"], 1e-9)
    out["loss_rel_diff"] = abs(out["plain"]["loss"] - out["chunked"]["loss"]) / abs(out["plain"]["loss"])
    return out


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
    ap.add_argument("--cross-entropy", default="plain", choices=["auto", "plain", "chunked", "fused"],
                    help="loss implementation (default plain: Hugging Face's)")
    ap.add_argument("--ce-chunk-tokens", type=int, default=8192, help="tokens per chunk of the chunked loss")
    ap.add_argument("--variants", default=None,
                    help=f"comma-separated list of {', '.join(VARIANTS)} (eager/compiled = plain loss)")
    ap.add_argument("--eval-batches", type=int, default=3, help="timed evaluation batches (0: skip)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the device peak for MFU")
    ap.add_argument("--profile-steps", type=int, default=0,
                    help="after the timed steps, this many more under torch.profiler (top kernels, SDPA backend)")
    ap.add_argument("--json", default=None,
                    help="also write the numbers to this JSON file (rewritten atomically after every variant)")
    ap.add_argument("--ce-memory", action="store_true", help="memory of the loss alone: plain vs chunked")
    ap.add_argument("--ce-tokens", type=int, default=4096, help="--ce-memory: tokens (default 2 x 2048)")
    ap.add_argument("--hidden", type=int, default=576, help="--ce-memory: hidden size (default smollm2-135m's)")
    ap.add_argument("--ce-memory-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ce_memory_child:
        print(json.dumps(_ce_memory_child(args.ce_memory_child, args.ce_tokens, args.hidden, args.vocab or 49152,
                                          args.ce_chunk_tokens, args.device)))
        return 0
    if args.ce_memory:
        for name, v in (("--ce-tokens", args.ce_tokens), ("--hidden", args.hidden), ("--ce-chunk-tokens",
                                                                                      args.ce_chunk_tokens)):
            if v < 1:
                raise ConfigError(name, f"must be >= 1, got {v}")
        rec = ce_memory(args.ce_tokens, args.hidden, args.vocab or 49152, args.ce_chunk_tokens,
                        str(resolve_device(args.device)))
        print(f"loss + backward, {rec['tokens']} tokens x vocab {rec['vocab']} (hidden {rec['hidden']}, "
              f"fp32 logits {rec['plain']['logits_fp32_mib']:,.0f} MiB) on {rec['device']}; {rec['plain']['measure']}:")
        for mode in ("plain", "chunked"):
            r = rec[mode]
            print(f"  {mode:8s} peak +{r['peak_increase_mib']:,.0f} MiB, {r['seconds']:.2f} s, loss {r['loss']:.6f}")
        print(f"  chunked ({rec['ce_chunk_tokens']} tokens per chunk) needs {rec['saving_factor']:.1f}x less; "
              f"losses differ by {rec['loss_rel_diff']:.1e} (relative)")
        if args.json:
            atomic_write_json(args.json, {"ce_memory": rec, "provenance": provenance()})
        return 0

    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    preset = args.preset or ("smollm2-135m" if gpu else "tiny-3m")
    if preset not in MODEL_PRESETS:
        raise ConfigError("--preset", f"unknown preset {preset!r}; choose one of {sorted(MODEL_PRESETS)}")
    vocab = args.vocab or (4096 if preset.startswith("tiny") else 49152)
    seq = args.seq_len or (2048 if gpu else 128)
    batch = args.batch or 16
    steps = args.steps or (30 if gpu else 10)
    for name, v in (("--batch", batch), ("--seq-len", seq), ("--steps", steps), ("--ce-chunk-tokens",
                                                                                  args.ce_chunk_tokens)):
        if v < 1:
            raise ConfigError(name, f"must be >= 1, got {v}")
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    variants = ([v.strip() for v in args.variants.split(",") if v.strip()] if args.variants
                else [("compiled" if args.compile else "eager") + "+" + args.cross_entropy])
    for v in variants:
        _parse_variant(v, "plain")  # reject a bad name before anything runs
    runs: list[dict[str, Any]] = []

    def write() -> None:  # after every variant: a later crash or timeout keeps what was measured
        if args.json:
            rec = dict(runs[0]) if len(variants) == 1 else {"preset": preset, "device": str(device), "variants": runs}
            atomic_write_json(args.json, {**rec, "provenance": provenance()})

    failed = 0
    for k, v in enumerate(variants):
        compiled, ce = _parse_variant(v, "plain")
        try:
            out = measure(preset=preset, device=device, precision=args.precision, batch=batch, seq=seq, vocab=vocab,
                          steps=steps, warmup=args.warmup, micro_batch=args.micro_batch, compile=compiled,
                          cross_entropy=ce, ce_chunk_tokens=args.ce_chunk_tokens,
                          eval_batches=args.eval_batches if k == 0 else 0, peak_tflops=args.peak_tflops,
                          profile=args.profile_steps)
        except Exception as exc:  # noqa: BLE001 - one variant's failure (OOM, compile error) is recorded
            failed += 1
            out = {"preset": preset, "variant": v, "status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]}
            print(f"{preset} {v}: FAILED {out['error'].splitlines()[0][:300]}", file=sys.stderr)
            if device.type == "cuda":
                gc.collect()
                torch.cuda.empty_cache()
        else:
            out["variant"], out["status"] = v, "ok"
            _print(out)
        runs.append(out)
        write()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(cli_main(main))
