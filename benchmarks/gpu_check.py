"""A device check that cannot waste a borrowed GPU: everything the fast path needs, measured in one run.

    OUT=/path/to/out python benchmarks/gpu_check.py [--budget-s 450] [--only A,B] [--skip C] [--isolate]
    python benchmarks/gpu_check.py --dry-run --out /tmp/gc        # the same script on a CPU, tiny sizes

Writes ``$OUT/gpu_check.json`` after EVERY variant (temp file + rename: the file is always valid
JSON, and a timeout or crash keeps everything finished before it). Each variant runs inside its
own ``try``: a failure is recorded with its error and traceback tail, and the next variant runs.
Each variant has a cost estimate (priors, refined by what earlier variants measured: the eager
step time, the first cold compile); a variant whose estimate does not fit in what is left of
``--budget-s`` is skipped with the reason recorded, and one that runs is stopped at a hard limit
(``SIGALRM`` in this process; a killed process group for the subprocess variants). A variant
that cannot run here (no fused cross-entropy wheel, no fast block module) is recorded as
``unavailable`` with why, never dropped. Variants, in priority order:

``env``            torch / CUDA / GPU, transformers, ray, fused cross-entropy backends, the fast
                   block's import, the SDPA backend switches, the dense bf16 peak.
``ce``             the chunked (and fused) cross-entropy against ``F.cross_entropy`` (loss and
                   gradient errors, fp32 and bf16 autocast, peak memory); every mode in its own try.
``eager``          smollm2-135m, batch 16 x 2048, bf16, chunked cross-entropy, no compile (and the
                   tokens/s of ``lm_experiments.engine.evaluate.evaluate`` on 2 batches).
``compiled``       the same, ``torch.compile``-d (its warm-up is the cold compile).
``compiled_fused`` compiled + the fused cross-entropy (unavailable without liger-kernel / cut-cross-entropy).
``fast_block``     compiled + the fast Llama block (``lm_experiments.engine.fast_llama``; ``--fast-block``),
                   with the fused cross-entropy when there is one, else chunked.
                   Each of the four: tokens/s, MFU in both conventions (attention counted in full,
                   PaLM App. B / the engine's; and the causal half), peak allocated and reserved
                   memory, the SDPA backend that ran, a two-step ``torch.profiler`` table of the top
                   kernels, the cross-entropy mode and chunk size; the targets (>= 45 % MFU in the
                   engine's convention at a 989 TFLOP/s dense bf16 peak, <= 20 GiB peak) recorded.
``engine``         ``lm_experiments.engine.train.train`` itself (stage-1 planned source from
                   ``pretrain_source`` over random token pools; compile + ``auto`` cross-entropy,
                   bf16): a warm-up call (compiles), then the measured call; its own tokens/s, MFU.
``pipeline``       ``python -m lm_experiments run --executor ray`` on a tiny preset (tiny-1m,
                   synthetic local corpora written here): the three stages through Ray.
``ddp``            ``torch.distributed.run`` with 2 processes (one GPU: both on it, gloo; several
                   GPUs: one each, NCCL; CPU: gloo) against the same run in one process: losses.
``tput_1b``        smollm2-1b-paper, batch 8 x 2048, compiled + chunked: only if time remains.

``--dry-run`` runs all of it on the CPU with tiny sizes (tiny-1m, seq 32, 2 timed steps per
variant, ``torch.compile`` with the ``aot_eager`` backend: the plumbing, not inductor's C++
build): ~2 min on a busy 2-core machine, ~25 s of it without ``pipeline`` and ``ddp`` (Ray
and torchrun start-up). The test suite runs it. ``--dry-run --device cuda`` is the same tiny
run on a GPU (a one-minute smoke test before the full one). Nothing here downloads anything.

The JSON: ``variants`` maps each name (in the order above) to ``{"status": "pending" | "running"
| "ok" | "failed" | "timeout" | "unavailable" | "skipped", "seconds", "estimate_s", "limit_s",
"result" (ok), "error" + "traceback_tail" (failed), "why" (timeout / unavailable / skipped)}``;
with ``sizes``, ``targets``, ``budget_s``, ``elapsed_s``, ``finished``, ``provenance``. The
hard limit of an in-process variant is a ``SIGALRM``; a hang inside one C call outlives it:
``--isolate`` runs each measured variant in a child process that is killed at its limit.
Exit code: 0 when every variant is ok, unavailable or skipped; 1 otherwise; 2 on a bad option.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib
import importlib.util
import inspect
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _p in (str(REPO), str(REPO / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from early_exposure.io import atomic_write_json  # noqa: E402


# ---- every lm_experiments name this script uses: remap here when the package moves ----------
@functools.lru_cache(maxsize=1)
def engine() -> SimpleNamespace:
    """The engine's functions (imported on first use: ``--help`` and the budget logic need no torch)."""
    from lm_experiments.config import TrainSection
    from lm_experiments.engine import distributed
    from lm_experiments.engine.device import device_peak_tflops, resolve_device
    from lm_experiments.engine.losses import fused_backend, linear_cross_entropy, resolve_cross_entropy
    from lm_experiments.engine.model import build_model
    from lm_experiments.engine.optim import OptimConfig
    from lm_experiments.protocol.schedules import pretrain_source
    from lm_experiments.engine.train import train

    return SimpleNamespace(distributed=distributed, device_peak_tflops=device_peak_tflops,
                           resolve_device=resolve_device, fused_backend=fused_backend,
                           linear_cross_entropy=linear_cross_entropy, resolve_cross_entropy=resolve_cross_entropy,
                           build_model=build_model, OptimConfig=OptimConfig, pretrain_source=pretrain_source,
                           train=train, TrainSection=TrainSection)


ENGINE_CLI_MODULE = "lm_experiments"  # python -m lm_experiments run ... (the pipeline variant)
FAST_BLOCK_MODULE = "lm_experiments.engine.fast_llama"  # the fast block (optional; --fast-block MODULE[:FUNCTION])
FAST_BLOCK_HOOKS = ("apply_fast_llama", "apply_fast_blocks", "patch_model", "apply", "convert")
# ----------------------------------------------------------------------------------------------

#: the targets (recorded, never asserted)
TARGETS = {"preset": "smollm2-135m", "seq_len": 2048, "batch": 16, "mfu_min": 0.45, "peak_mem_max_gib": 20.0,
           "mfu_convention": "engine's: 6N + 12 L d T (attention counted in full, PaLM App. B) over the dense bf16 "
                             "peak (H100 SXM 989 TFLOP/s)",
           "memory": "torch.cuda.max_memory_allocated over the timed steps"}

ORDER = ("env", "ce", "eager", "compiled", "compiled_fused", "fast_block", "engine", "pipeline", "ddp", "tput_1b")
JSON_NAME = "gpu_check.json"


class Unavailable(Exception):
    """The variant cannot run on this machine (a missing wheel or module); recorded with why."""


class VariantTimeout(BaseException):
    """Raised in this process when a variant reaches its hard limit (a ``BaseException``: the
    ``except Exception`` blocks inside a variant, e.g. the per-mode ones of ``ce``, let it through)."""


# ---- time budget ------------------------------------------------------------------------------
class Budget:
    """``total_s`` seconds from construction, read on ``clock`` (injectable for tests).

    A variant runs only when its estimate fits in what is left minus ``reserve_s`` (kept for the
    summary and the last write); its hard limit is
    ``min(max(2 * estimate, estimate + slack_s), left - reserve_s)``.
    """

    def __init__(self, total_s: float, *, clock: Callable[[], float] = time.monotonic, reserve_s: float = 10.0,
                 slack_s: float = 60.0) -> None:
        self.total_s = float(total_s)
        self.clock = clock
        self.reserve_s = float(reserve_s)
        self.slack_s = float(slack_s)
        self.t0 = clock()

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def left(self) -> float:
        return self.total_s - self.elapsed()

    def fits(self, estimate_s: float) -> bool:
        return estimate_s <= self.left() - self.reserve_s

    def limit(self, estimate_s: float) -> float:
        return max(1.0, min(max(2.0 * estimate_s, estimate_s + self.slack_s), self.left() - self.reserve_s))


@contextlib.contextmanager
def hard_limit(seconds: float):
    """Raise :class:`VariantTimeout` in this (main) thread after ``seconds`` (no-op elsewhere)."""
    if not (hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
            and math.isfinite(seconds)):
        yield
        return

    def fire(signum: int, frame: Any) -> None:
        raise VariantTimeout(f"stopped at its hard limit of {seconds:.1f} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---- variants ---------------------------------------------------------------------------------
@dataclass
class Variant:
    """``run(ctx) -> result`` (raise :class:`Unavailable` when it cannot run here);
    ``estimate(ctx) -> seconds`` (the budget check)."""

    name: str
    run: Callable[[Any], dict[str, Any]]
    estimate: Callable[[Any], float]
    what: str = ""


@dataclass
class Sizes:
    preset: str
    vocab: int
    seq: int
    batch: int
    warmup: int
    steps: int
    profile: int
    ce_chunk: int
    big_preset: str
    big_batch: int
    engine_steps: int


FULL = Sizes(preset="smollm2-135m", vocab=49152, seq=2048, batch=16, warmup=3, steps=10, profile=2, ce_chunk=8192,
             big_preset="smollm2-1b-paper", big_batch=8, engine_steps=8)
DRY = Sizes(preset="tiny-1m", vocab=256, seq=32, batch=2, warmup=1, steps=2, profile=2, ce_chunk=16,
            big_preset="tiny-300k", big_batch=2, engine_steps=2)

# cost priors (seconds) on one H100 box before anything is measured; --dry-run uses DRY_PRIORS
PRIORS = {"env": 10, "ce": 20, "setup": 15, "step": 0.3, "compile_cold": 100, "compile_warm": 40, "pipeline": 100,
          "ddp": 70, "step_1b": 1.5, "compile_1b": 100}
DRY_PRIORS = {"env": 2, "ce": 3, "setup": 1, "step": 0.2, "compile_cold": 6, "compile_warm": 4, "pipeline": 60,
              "ddp": 40, "step_1b": 0.5, "compile_1b": 6}


@dataclass
class Ctx:
    """What the variants share: options, sizes, device, scratch directory, earlier results."""

    args: argparse.Namespace
    out: Path
    sizes: Sizes
    priors: dict[str, float]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def dry(self) -> bool:
        return bool(self.args.dry_run)

    @property
    def device_name(self) -> str:
        """``--device``; by default ``auto`` (``cpu`` in a dry run)."""
        return self.args.device or ("cpu" if self.dry else "auto")

    @functools.cached_property
    def device(self) -> Any:
        return engine().resolve_device(self.device_name)

    @property
    def tmp(self) -> Path:
        p = self.out / "tmp"
        p.mkdir(parents=True, exist_ok=True)
        return p

    def ok(self, name: str) -> dict[str, Any] | None:
        r = self.results.get(name)
        return r.get("result") if r and r.get("status") == "ok" else None


def _provenance() -> dict[str, Any] | None:
    try:
        from early_exposure.provenance import provenance

        return provenance()
    except Exception as exc:  # noqa: BLE001 - never worth losing the run over
        return {"error": f"{type(exc).__name__}: {exc}"}


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        with contextlib.suppress(Exception):
            return obj.tolist()
    return str(obj)


def _cleanup() -> None:
    """Between variants: drop compiled graphs, collect, hand cached GPU blocks back."""
    if "torch" in sys.modules:
        import torch

        with contextlib.suppress(Exception):
            torch._dynamo.reset()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    else:
        gc.collect()


@contextlib.contextmanager
def compile_backend(backend: str | None):
    """``torch.compile`` with ``backend`` inside (the engine calls ``torch.compile(module)``);
    ``inductor`` (or None) leaves it alone. The dry run uses ``aot_eager``: dynamo and AOT
    autograd run, inductor's C++ build (over a minute on a CPU) does not."""
    import torch

    if not backend or backend == "inductor":
        yield
        return
    orig = torch.compile
    torch.compile = functools.partial(orig, backend=backend)
    try:
        yield
    finally:
        torch.compile = orig


# -- env --
def run_env(ctx: Ctx) -> dict[str, Any]:
    import torch

    e = engine()
    rec: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
                           "cuda_available": torch.cuda.is_available(), "device": str(ctx.device),
                           "device_count": torch.cuda.device_count(), "cpu_count": os.cpu_count(),
                           "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                           "peak_tflops": e.device_peak_tflops(ctx.device), "fused_backend": e.fused_backend(),
                           "compile_backend": ctx.args.compile_backend}
    for mod in ("transformers", "ray", "liger_kernel", "cut_cross_entropy", "flash_attn", "triton"):
        try:
            m = importlib.import_module(mod) if importlib.util.find_spec(mod) else None
            rec[mod] = getattr(m, "__version__", "installed") if m else None
        except Exception as exc:  # noqa: BLE001 - a broken wheel is worth recording
            rec[mod] = f"import failed: {type(exc).__name__}: {exc}"[:300]
    try:
        mod, fn = _fast_block_hook(ctx)
        rec["fast_block"] = f"{mod.__name__}:{fn.__name__}"
    except Unavailable as exc:
        rec["fast_block"] = f"unavailable: {exc}"
    b = torch.backends.cuda
    rec["sdpa_enabled"] = {k: bool(getattr(b, f"{k}_sdp_enabled")()) for k in ("flash", "mem_efficient", "math", "cudnn")
                           if hasattr(b, f"{k}_sdp_enabled")}
    if torch.cuda.is_available():
        rec["total_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
        rec["bf16_supported"] = torch.cuda.is_bf16_supported()
    if shutil.which("nvidia-smi"):
        rec["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False,
                                           timeout=30).stdout.strip()
    return rec


# -- ce --
def run_ce(ctx: Ctx) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    e = engine()
    dev = ctx.device
    cuda = dev.type == "cuda"
    g = torch.Generator(device="cpu").manual_seed(0)
    n, d, v = (256, 32, 1000) if ctx.dry else (8192, 576, 49152)
    h0 = torch.randn(n, d, generator=g).to(dev)
    w0 = (torch.randn(v, d, generator=g) * 0.04).to(dev)
    t = torch.randint(0, v, (n,), generator=g).to(dev)
    t[::97] = -100
    fused = e.resolve_cross_entropy("fused", dev)
    modes = ["plain", "chunked"] + ([fused] if fused.startswith("fused") else [])
    out: dict[str, Any] = {"tokens": n, "hidden": d, "vocab": v, "modes": modes, "chunk_tokens": ctx.sizes.ce_chunk
                           if ctx.dry else 2048,
                           "fused": fused if fused.startswith("fused") else f"unavailable (resolves to {fused})"}
    for prec in ("fp32", "bf16"):
        res: dict[str, Any] = {}
        grads: dict[str, tuple[Any, Any]] = {}
        for mode in modes:
            try:
                h = h0.clone().requires_grad_(True)
                w = w0.clone().requires_grad_(True)
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.max_memory_allocated() if cuda else 0
                t0 = time.perf_counter()
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=prec == "bf16"):
                    if mode == "plain":
                        loss = F.cross_entropy((h @ w.t()).float(), t, ignore_index=-100)
                    else:
                        loss = e.linear_cross_entropy(h, w, t, mode=mode, chunk_tokens=out["chunk_tokens"])
                loss.backward()
                if cuda:
                    torch.cuda.synchronize()
                res[mode] = {"loss": float(loss.detach()), "seconds": time.perf_counter() - t0,
                             "peak_increase_mib": (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else None}
                grads[mode] = (h.grad.float(), w.grad.float())
            except Exception as exc:  # noqa: BLE001 - one mode's failure is recorded, the others run
                res[mode] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:1000]}
        if "plain" in grads:
            ref, (rh, rw) = res["plain"]["loss"], grads["plain"]
            for mode, (gh, gw) in grads.items():
                res[mode].update(loss_rel_err=abs(res[mode]["loss"] - ref) / abs(ref),
                                 dh_rel_err=float((gh - rh).norm() / rh.norm()),
                                 dw_rel_err=float((gw - rw).norm() / rw.norm()))
        out[prec] = res
    return out


# -- throughput: eager / compiled / compiled_fused / fast_block / tput_1b --
def _fast_block_hook(ctx: Ctx) -> tuple[Any, Callable[[Any], Any]]:
    spec = ctx.args.fast_block
    modname, _, fname = spec.partition(":")
    try:
        mod = importlib.import_module(modname)
    except Exception as exc:  # noqa: BLE001 - ImportError, or the module itself failing to import
        raise Unavailable(f"import {modname} failed: {type(exc).__name__}: {exc}") from None
    names = (fname,) if fname else FAST_BLOCK_HOOKS
    for n in names:
        fn = getattr(mod, n, None)
        if callable(fn):
            return mod, fn
    raise Unavailable(f"{modname} has no callable {' / '.join(names)} (a function model -> model; "
                      f"name it with --fast-block {modname}:FUNCTION)")


def _fused_or_none(ctx: Ctx) -> str | None:
    r = engine().resolve_cross_entropy("fused", ctx.device)
    return r if r.startswith("fused") else None


def _measure(ctx: Ctx, *, compile: bool, ce: str, preset: str | None = None, batch: int | None = None,
             hook: Any = None, eval_batches: int = 0) -> dict[str, Any]:
    import torch

    import lm_throughput

    s = ctx.sizes
    if ctx.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    with compile_backend(ctx.args.compile_backend if compile else None):
        r = lm_throughput.measure(preset=preset or s.preset, device=ctx.device, precision="bf16",
                                  batch=batch or s.batch, seq=s.seq, vocab=s.vocab, steps=s.steps,
                                  warmup=s.warmup, micro_batch=0, compile=compile, cross_entropy=ce,
                                  ce_chunk_tokens=s.ce_chunk, eval_batches=eval_batches,
                                  peak_tflops=ctx.args.peak_tflops,
                                  model_hook=hook, profile=s.profile)
    r["compile_backend"] = ctx.args.compile_backend if compile else None
    prof = r.get("profile") or {}
    r["profile_table"] = prof.pop("table", None)  # the printed table, kept as one string
    at_target = (not ctx.dry and (preset or s.preset) == TARGETS["preset"] and s.seq == TARGETS["seq_len"]
                 and (batch or s.batch) == TARGETS["batch"])
    r["targets"] = {"applies": at_target,
                    "mfu_met": (r["mfu"] >= TARGETS["mfu_min"]) if at_target and r["mfu"] is not None else None,
                    "mem_met": (r["peak_mem_gb"] <= TARGETS["peak_mem_max_gib"])
                    if at_target and r["peak_mem_gb"] is not None else None}
    return r


def run_eager(ctx: Ctx) -> dict[str, Any]:
    return _measure(ctx, compile=False, ce="chunked", eval_batches=2)  # + evaluate()'s tokens/s


def run_compiled(ctx: Ctx) -> dict[str, Any]:
    return _measure(ctx, compile=True, ce="chunked")


def run_compiled_fused(ctx: Ctx) -> dict[str, Any]:
    if _fused_or_none(ctx) is None:
        raise Unavailable(_no_fused_why(ctx))
    return _measure(ctx, compile=True, ce="fused")


def _no_fused_why(ctx: Ctx) -> str:
    if ctx.device.type != "cuda":
        return f"the fused cross-entropy kernels run on CUDA only (device {ctx.device})"
    return "no fused cross-entropy backend: neither liger-kernel nor cut-cross-entropy is importable"


def run_fast_block(ctx: Ctx) -> dict[str, Any]:
    mod, fn = _fast_block_hook(ctx)
    ce = "fused" if _fused_or_none(ctx) else "chunked"
    r = _measure(ctx, compile=True, ce=ce, hook=fn)
    r["fast_block"] = f"{mod.__name__}:{fn.__name__}"
    return r


def run_tput_1b(ctx: Ctx) -> dict[str, Any]:
    return _measure(ctx, compile=True, ce="chunked", preset=ctx.sizes.big_preset, batch=ctx.sizes.big_batch)


# -- engine --
def run_engine(ctx: Ctx) -> dict[str, Any]:
    import numpy as np
    import torch

    import lm_throughput

    e = engine()
    s = ctx.sizes
    dev = ctx.device
    rng = np.random.default_rng(0)
    pre = rng.integers(0, s.vocab, size=(4 * s.batch, s.seq))
    post = rng.integers(0, s.vocab, size=(s.batch, s.seq))

    def source(steps: int, seed: int) -> Any:  # the stage-1 plan: D_pre with D_post blocks spread in
        return e.pretrain_source(pre, post, np.arange(s.batch // 2), tokens=steps * s.batch * s.seq,
                                 batch_size=s.batch, seed=seed)

    model = e.build_model(s.preset, vocab_size=s.vocab, max_seq_len=s.seq, seed=0).to(dev)
    kw = dict(optim=e.OptimConfig(lr=1e-4), device=dev, precision="bf16", progress=False,
              speed=e.TrainSection(compile=True, cross_entropy="auto", ce_chunk_tokens=s.ce_chunk))
    out: dict[str, Any] = {"preset": s.preset, "batch": s.batch, "seq_len": s.seq, "compile_backend":
                           ctx.args.compile_backend}
    torch._dynamo.reset()  # the warm-up call compiles (warm from inductor's on-disk cache, usually)
    with compile_backend(ctx.args.compile_backend):
        t = time.perf_counter()
        warm = e.train(model, source(2, 1), ckpt_dir=ctx.tmp / "engine_warm", **kw)
        out["warmup_call_s"] = time.perf_counter() - t  # includes the compile
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(dev)
        res = e.train(model, source(s.engine_steps, 2), ckpt_dir=ctx.tmp / "engine", **kw)
    src = source(s.engine_steps, 2)
    flops = lm_throughput.flops_per_token(model, s.seq)
    out.update(res.compute_summary())
    out.update(steps=res.steps, tokens=res.tokens, wall_s=res.wall_s, tokens_per_s=res.tokens_per_s,
               tokens_by_source=src.tokens_by_source(), diverged=res.diverged,
               losses=[h["train_loss"] for h in res.history], warmup_losses=[h["train_loss"] for h in warm.history],
               mfu_causal=lm_throughput.mfu(res.tokens_per_s, flops["causal"], res.peak_tflops),
               flops_per_token_causal=flops["causal"], ce_chunk_tokens=s.ce_chunk if res.cross_entropy == "chunked"
               else None,
               peak_mem_gb=torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
               peak_mem_reserved_gb=torch.cuda.max_memory_reserved(dev) / 2**30 if dev.type == "cuda" else None)
    micro = ctx.ok("compiled")
    if micro:  # the engine's step vs the microbenchmark's (same model, same shape, compiled)
        out["tokens_per_s_vs_compiled_microbenchmark"] = res.tokens_per_s / micro["train_tokens_per_s"]
    del model
    return out


# -- pipeline through Ray --
_WORDS = "the a of and to in is was he she it that for on with as his her they at by".split()


def _write_corpora(root: Path) -> dict[str, str]:
    """Three small synthetic corpora with distinct alphabets (blank-line separated documents)."""
    import random

    r = random.Random(0)

    def doc(alpha: str, n: int) -> str:
        return " ".join("".join(r.choice(alpha) for _ in range(r.randint(2, 6))) for _ in range(n))

    texts = {"pre": "\n\n".join(" ".join(r.choice(_WORDS) for _ in range(r.randint(30, 60))) for _ in range(160)),
             "post": "\n\n".join(doc("ABCDEFGabcdefg|/2", r.randint(30, 60)) for _ in range(120)),
             "ft": "\n\n".join(doc("CNOc1=()[]@H", r.randint(30, 60)) for _ in range(120))}
    paths = {}
    for role, text in texts.items():
        p = root / f"{role}.txt"
        p.write_text(text)
        paths[role] = str(p)
    return paths


def _tiny_pipeline_config(root: Path, device: str) -> dict[str, Any]:
    seq = 16
    paths = _write_corpora(root)
    return {
        "data": {role: {"source": "local", "name": role, "path": p} for role, p in paths.items()}
        | {"vocab_size": 300, "seq_len": seq, "val_tokens": 128, "val_fraction": 0.1, "bpe_sample_chars": 20000},
        "model": {"preset": "tiny-1m"},
        "pre": {"tokens": 2 * 4 * seq, "batch_size": 4, "mix_fraction": [1.0], "checkpoint_every": 0},
        "post": {"sweep": {"lr": [2.0e-3], "batch_size": [4]}, "max_epochs": 1, "eval_every_epochs": 1.0,
                 "patience": 1, "post_train_tokens": 8 * seq, "checkpoint_every": 0},
        "ft": {"lr": [1.0e-3], "tokens": 2 * 4 * seq, "batch_size": 4, "checkpoint_every": 0},
        "eval": {"batch_size": 8}, "seeds": [0], "device": device, "threads": 1,
    }


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "TOKENIZERS_PARALLELISM": "false"}


def run_command(cmd: list[str], timeout: float, log: Path) -> tuple[int, float]:
    """Run ``cmd`` in its own process group, output to ``log``; on timeout (or any exception, e.g.
    this variant's hard limit) SIGINT the group (Ray shuts down cleanly on it), then SIGKILL."""
    t = time.time()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        p = subprocess.Popen(cmd, cwd=REPO, env=_child_env(), stdout=fh, stderr=subprocess.STDOUT,
                             start_new_session=True)
        try:
            rc = p.wait(timeout=max(1.0, timeout))
        except BaseException as exc:  # its timeout, or this variant's hard limit firing meanwhile
            for sig, wait in ((signal.SIGINT, 15), (signal.SIGKILL, 10)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, sig)
                try:
                    p.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            if isinstance(exc, subprocess.TimeoutExpired):
                return 124, time.time() - t
            raise
    return rc, time.time() - t


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def run_pipeline(ctx: Ctx, limit: float) -> dict[str, Any]:
    import yaml

    root = ctx.tmp / "pipeline"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    dev = ctx.device_name
    (root / "tiny.yaml").write_text(yaml.safe_dump(_tiny_pipeline_config(root, dev)))
    log = ctx.out / "logs" / "pipeline.log"
    cmd = [sys.executable, "-m", ENGINE_CLI_MODULE, "run", "--config", str(root / "tiny.yaml"), "--out",
           str(root / "out"), "--cache", str(root / "cache"), "--no-progress", "--executor", "ray"]
    rc, secs = run_command(cmd, limit, log)
    rec: dict[str, Any] = {"command": " ".join(cmd[1:]), "rc": rc, "seconds": secs, "log": str(log)}
    mpath = root / "out" / "manifest.json"
    if mpath.exists():
        m = json.loads(mpath.read_text())
        rec.update(executor=m.get("executor"), status=m.get("status"), failed=m.get("failed"),
                   wall_s=m.get("wall_s"))
    rec["frontier_rows"] = (len((root / "out" / "frontier.csv").read_text().splitlines()) - 1
                            if (root / "out" / "frontier.csv").exists() else None)
    if rc == 124:
        raise VariantTimeout(f"the pipeline did not finish within {limit:.0f} s; log tail:\n{_tail(log)}")
    if rc != 0:
        raise RuntimeError(f"python -m {ENGINE_CLI_MODULE} run exited {rc}; log tail:\n{_tail(log)}")
    return rec


# -- ddp --
def _ddp_layout(ctx: Ctx) -> tuple[int, str, str]:
    """(processes, backend, device) of the DDP check."""
    import torch

    if ctx.dry or ctx.device.type != "cuda":
        return 2, "gloo", "cpu"
    n = torch.cuda.device_count()
    if n >= 2:
        return min(n, 8), "nccl", "auto"
    return 2, "gloo", "cuda:0"  # one GPU: two ranks share it (NCCL refuses that); the DDP code path, not speed


def ddp_worker(ctx: Ctx, backend: str | None, device: str, out_json: str | None) -> dict[str, Any]:
    """3 steps of ``train`` (under torchrun: DDP over its processes; alone: one process)."""
    import numpy as np
    import torch

    e = engine()
    dctx = e.distributed.init_from_env(backend=backend) if backend else e.distributed.context()
    dev = e.resolve_device(device)
    s = ctx.sizes
    preset, seq = (s.preset, s.seq) if ctx.dry else ("smollm2-135m", 512)
    if ctx.dry:
        torch.set_num_threads(1)
    data = np.random.default_rng(0).integers(0, s.vocab, size=(3, 8, seq))

    class Src:
        def __len__(self) -> int:
            return len(data)

        def batch(self, step: int) -> np.ndarray:
            return data[step]

    model = e.build_model(preset, vocab_size=s.vocab, max_seq_len=seq, seed=0).to(dev)
    res = e.train(model, Src(), optim=e.OptimConfig(lr=1e-3), ckpt_dir=ctx.tmp / f"ddp{dctx.world_size}",
                  device=dev, precision="bf16", progress=False,
                  speed=e.TrainSection(cross_entropy="chunked", ce_chunk_tokens=s.ce_chunk))
    rec = {"world_size": res.world_size, "device": str(dev), "losses": [h["train_loss"] for h in res.history],
           "grad_norms": [h.get("grad_norm") for h in res.history], "tokens_per_s": res.tokens_per_s, "mfu": res.mfu,
           "cross_entropy": res.cross_entropy}
    if out_json and dctx.is_main:
        atomic_write_json(out_json, rec)
    if backend:
        e.distributed.shutdown()
    return rec


def run_ddp(ctx: Ctx, limit: float) -> dict[str, Any]:
    n, backend, device = _ddp_layout(ctx)
    t = time.time()
    one = ddp_worker(ctx, None, device, None)
    res_json = ctx.tmp / "ddp.json"
    log = ctx.out / "logs" / "ddp.log"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
           str(Path(__file__).resolve()), *ctx.args.passthrough, "--out", str(ctx.out),
           "--child", "ddp_worker", "--child-out", str(res_json), "--ddp-backend", backend, "--ddp-device", device]
    rc, secs = run_command(cmd, limit - (time.time() - t), log)
    rec: dict[str, Any] = {"processes": n, "backend": backend, "device": device, "one_process": one, "rc": rc,
                           "seconds": secs}
    if rc == 124:
        raise VariantTimeout(f"torchrun did not finish; log tail:\n{_tail(log)}")
    if rc != 0 or not res_json.exists():
        raise RuntimeError(f"torchrun exited {rc}; log tail:\n{_tail(log)}")
    many = json.loads(res_json.read_text())
    rec["ddp"] = many
    rec["max_rel_loss_diff_vs_one_process"] = max(abs(a - b) / abs(a) for a, b in zip(one["losses"], many["losses"]))
    return rec


# ---- estimates ----------------------------------------------------------------------------------
def _step_s(ctx: Ctx) -> float:
    r = ctx.ok("eager")
    return float(r["step_s"]) if r else ctx.priors["step"]


def _compile_s(ctx: Ctx, cold: bool) -> float:
    r = ctx.ok("compiled")
    if r:  # its warm-up = the cold compile + warm-up steps
        measured = max(float(r["warmup_s"]) - r["warmup_steps"] * float(r["step_s"]), 0.0)
        return measured if cold else 0.6 * measured
    return ctx.priors["compile_cold" if cold else "compile_warm"]


def _n_steps(ctx: Ctx) -> int:
    s = ctx.sizes
    return s.warmup + s.steps + s.profile


def estimate(ctx: Ctx, name: str) -> float:
    """Seconds variant ``name`` will take here (priors, refined by what ran before)."""
    p, s = ctx.priors, ctx.sizes
    steps = _n_steps(ctx) * _step_s(ctx)
    if name in ("env", "ce", "pipeline", "ddp"):
        return p[name]
    if name == "eager":
        return p["setup"] + steps
    if name == "compiled":
        return p["setup"] + _compile_s(ctx, True) + steps
    if name == "compiled_fused":
        return 1.0 if _safe(lambda: _fused_or_none(ctx)) is None else p["setup"] + _compile_s(ctx, False) + steps
    if name == "fast_block":
        return 1.0 if not _fast_block_importable(ctx) else p["setup"] + _compile_s(ctx, True) + steps
    if name == "engine":
        return p["setup"] + _compile_s(ctx, False) + (2 + s.engine_steps) * _step_s(ctx) + 5
    if name == "tput_1b":  # 24 layers of the same block: compile ~24/30 of the 135M one; a step ~2.7x
        # (5.4x the FLOPs per token at half the batch)
        compile_1b = 0.8 * _compile_s(ctx, True) if ctx.ok("compiled") else p["compile_1b"]
        step_1b = 2.7 * _step_s(ctx) if ctx.ok("eager") and not ctx.dry else p["step_1b"]
        return 2 * p["setup"] + compile_1b + _n_steps(ctx) * step_1b
    raise KeyError(name)


def _safe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - an estimate never raises
        return None


def _fast_block_importable(ctx: Ctx) -> bool:
    modname = ctx.args.fast_block.partition(":")[0]
    try:
        return importlib.util.find_spec(modname) is not None
    except (ImportError, ValueError):
        return False


def default_variants() -> list[Variant]:
    """The variants in priority order (ORDER)."""
    runs: dict[str, Callable[..., dict[str, Any]]] = {
        "env": run_env, "ce": run_ce, "eager": run_eager, "compiled": run_compiled,
        "compiled_fused": run_compiled_fused, "fast_block": run_fast_block, "engine": run_engine,
        "pipeline": run_pipeline, "ddp": run_ddp, "tput_1b": run_tput_1b}
    return [Variant(n, runs[n], functools.partial(lambda name, ctx: estimate(ctx, name), n)) for n in ORDER]


# ---- the runner -------------------------------------------------------------------------------
class Check:
    """Runs variants in order under a :class:`Budget`, recording each and rewriting the JSON after each.

    Writes: once at the start (every variant ``pending``), before a variant runs (it is
    ``running``, with its estimate and limit), after each variant (its record), at the end
    (``finished``). ``on_write(path)`` is called after every write (tests read the file there).
    """

    def __init__(self, ctx: Ctx, variants: list[Variant], budget: Budget, *,
                 on_write: Callable[[Path], None] | None = None, log: Callable[[str], None] = print) -> None:
        self.ctx, self.variants, self.budget, self.on_write, self.log = ctx, variants, budget, on_write, log
        self.path = ctx.out / JSON_NAME
        self.writes = 0
        a = ctx.args
        self.report: dict[str, Any] = {
            "schema": 1, "script": "benchmarks/gpu_check.py", "argv": list(getattr(a, "argv", []) or []),
            "dry_run": ctx.dry, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "budget_s": budget.total_s, "sizes": vars(ctx.sizes), "targets": TARGETS,
            "isolate": bool(getattr(a, "isolate", False)), "finished": False, "provenance": _provenance(),
            "variants": {v.name: {"status": "pending"} for v in variants}}

    def write(self) -> None:
        """The whole report, atomically (temp file + rename); anything a variant returned that JSON
        cannot hold is written as its ``str`` (a write never fails on a variant's content)."""
        self.report["elapsed_s"] = self.budget.elapsed()
        atomic_write_json(self.path, json.loads(json.dumps(self.report, default=_jsonable)))
        self.writes += 1
        if self.on_write is not None:
            self.on_write(self.path)

    def selected(self, name: str) -> str | None:
        a = self.ctx.args
        only = [x for x in (getattr(a, "only", "") or "").split(",") if x]
        skip = [x for x in (getattr(a, "skip", "") or "").split(",") if x]
        if only and name not in only:
            return "not selected (--only)"
        if name in skip:
            return "not selected (--skip)"
        return None

    def run(self) -> dict[str, Any]:
        self.write()
        for v in self.variants:
            rec = self.run_one(v)
            self.ctx.results[v.name] = rec
            self.report["variants"][v.name] = rec
            self.write()
            self.log(f"[gpu_check] {line(v.name, rec)} | {self.budget.left():.0f} s left")
            _cleanup()
        self.report["finished"] = True
        self.write()
        return self.report

    def run_one(self, v: Variant) -> dict[str, Any]:
        why = self.selected(v.name)
        if why:
            return {"status": "skipped", "why": why}
        est = _safe(lambda: v.estimate(self.ctx))
        est = float(est) if est is not None else 60.0
        if not self.budget.fits(est):
            return {"status": "skipped", "estimate_s": est,
                    "why": f"budget: needs ~{est:.0f} s, {self.budget.left():.0f} s left of {self.budget.total_s:.0f} s "
                           f"({self.budget.reserve_s:.0f} s kept in reserve)"}
        isolate = getattr(self.ctx.args, "isolate", False) and v.name not in ("pipeline", "ddp")
        if isolate:
            est += self.ctx.priors["setup"]  # the child's start-up (imports, CUDA context)
        limit = self.budget.limit(est)
        # on disk while it runs: a run killed from outside still shows which variant it was in
        self.report["variants"][v.name] = {"status": "running", "estimate_s": est, "limit_s": limit,
                                           "started_at_s": self.budget.elapsed()}
        self.write()
        if isolate:
            rec = self.run_isolated(v, limit)
        else:
            rec = run_inline(self.ctx, v, limit, self.budget.clock)
        rec.update(estimate_s=est, limit_s=limit)
        return rec

    def run_isolated(self, v: Variant, limit: float) -> dict[str, Any]:
        """``v`` in a child process of this script (a hang or a CUDA fault cannot take the rest down)."""
        child = self.ctx.tmp / f"child_{v.name}.json"
        child.unlink(missing_ok=True)
        log = self.ctx.out / "logs" / f"{v.name}.log"
        cmd = [sys.executable, str(Path(__file__).resolve()), *self.ctx.args.passthrough, "--out", str(self.ctx.out),
               "--child", v.name, "--child-out", str(child), "--child-limit", str(limit)]
        rc, secs = run_command(cmd, limit + 30, log)
        if child.exists():
            rec = json.loads(child.read_text())
        elif rc == 124:
            rec = {"status": "timeout", "why": f"child process killed after {limit + 30:.0f} s", "log_tail": _tail(log)}
        else:
            rec = {"status": "failed", "error": f"child process exited {rc} without a result", "log_tail": _tail(log)}
        rec["variant_seconds"] = rec.get("seconds")  # inside the child; seconds: with its start-up
        rec.update(seconds=secs, isolated=True, log=str(log))
        return rec


def run_inline(ctx: Ctx, v: Variant, limit: float, clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """``v`` in this process under a hard limit; its outcome as a record (never raises)."""
    t0 = clock()
    rec: dict[str, Any]
    try:
        with hard_limit(limit):
            if v.name == getattr(ctx.args, "fail_variant", None):
                raise RuntimeError(f"forced failure of {v.name} (--fail-variant)")
            takes_limit = "limit" in inspect.signature(v.run).parameters  # subprocess variants pass it on
            result = v.run(ctx, limit) if takes_limit else v.run(ctx)
        rec = {"status": "ok", "result": result}
    except Unavailable as exc:
        rec = {"status": "unavailable", "why": str(exc)}
    except VariantTimeout as exc:
        rec = {"status": "timeout", "why": str(exc)[:4000]}
    except Exception as exc:  # noqa: BLE001 - recorded; the next variant runs
        rec = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:4000],
               "traceback_tail": traceback.format_exc()[-3000:]}
    rec["seconds"] = clock() - t0
    return rec


# ---- output -----------------------------------------------------------------------------------
def _pct(x: Any) -> str:
    return f"{x:.1%}" if isinstance(x, (int, float)) else "n/a"


def _gib(x: Any) -> str:
    return f"{x:.1f}" if isinstance(x, (int, float)) else "n/a"


def line(name: str, rec: dict[str, Any]) -> str:
    """One human line for a variant's record."""
    st = rec.get("status")
    head = f"{name}: {st}" + (f" in {rec['seconds']:.0f} s" if "seconds" in rec else "")
    if st in ("skipped", "unavailable", "timeout"):
        return f"{head} ({str(rec.get('why', '')).splitlines()[0][:160]})"
    if st == "failed":
        return f"{head} ({str(rec.get('error', '')).splitlines()[0][:160]})"
    r = rec.get("result") or {}
    if "train_tokens_per_s" in r:
        return (f"{head} | {r['train_tokens_per_s']:,.0f} tok/s, MFU {_pct(r.get('mfu'))} (causal-half "
                f"{_pct(r.get('mfu_causal'))}), peak {_gib(r.get('peak_mem_gb'))} / reserved "
                f"{_gib(r.get('peak_mem_reserved_gb'))} GiB, sdpa {','.join(r.get('sdpa_backend') or []) or 'n/a'}, "
                f"ce {r.get('cross_entropy')}" + (f"/{r['ce_chunk_tokens']}" if r.get("ce_chunk_tokens") else "")
                + f", warm-up {r.get('warmup_s', 0):.0f} s")
    if name == "engine" and "tokens_per_s" in r:
        return f"{head} | {r['tokens_per_s']:,.0f} tok/s, MFU {_pct(r.get('mfu'))}, losses {r.get('losses')}"
    if name == "pipeline":
        st = r.get("status") or {}
        done = ", ".join(f"{k} {v.get('done')}" for k, v in st.items() if isinstance(v, dict) and v.get("done"))
        return (f"{head} | executor {r.get('executor')}, complete {st.get('complete')}, done: {done}, "
                f"failed {len(r.get('failed') or [])}")
    if name == "ddp":
        return (f"{head} | {r.get('processes')} x {r.get('backend')} on {r.get('device')}, max loss diff vs one "
                f"process {r.get('max_rel_loss_diff_vs_one_process', float('nan')):.1e}")
    if name == "env":
        return f"{head} | torch {r.get('torch')}, {r.get('devices') or r.get('device')}, fused {r.get('fused_backend')}"
    if name == "ce":
        errs = {m: f"{v.get('loss_rel_err', float('nan')):.1e}" for m, v in (r.get("bf16") or {}).items() if m != "plain"}
        return f"{head} | bf16 loss rel err {errs}"
    return head


def summary(report: dict[str, Any]) -> str:
    rows = [f"gpu_check: {sum(1 for r in report['variants'].values() if r.get('status') == 'ok')} of "
            f"{len(report['variants'])} variants ok in {report.get('elapsed_s', 0):.0f} s (budget "
            f"{report['budget_s']:.0f} s){' [dry run]' if report['dry_run'] else ''}"]
    for name, rec in report["variants"].items():
        rows.append("  " + line(name, rec))
    t = TARGETS
    for name in ("eager", "compiled", "compiled_fused", "fast_block"):
        r = (report["variants"].get(name) or {}).get("result") or {}
        tg = r.get("targets") or {}
        if tg.get("applies"):
            rows.append(f"  target {name}: MFU >= {t['mfu_min']:.0%}: {tg.get('mfu_met')}; peak <= "
                        f"{t['peak_mem_max_gib']:.0f} GiB: {tg.get('mem_met')}")
    return "\n".join(rows)


# ---- command line ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"), help="output directory (default $OUT)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="wall-clock budget of all variants (default 450)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: check the script itself (~2 min on 2 busy cores)")
    ap.add_argument("--dry-cpu", dest="dry_run", action="store_true", help=argparse.SUPPRESS)  # old spelling
    ap.add_argument("--only", default="", help=f"comma-separated variants to run (of {','.join(ORDER)})")
    ap.add_argument("--skip", default="", help="comma-separated variants to skip")
    ap.add_argument("--isolate", action="store_true",
                    help="run each measured variant in its own child process (a hang or CUDA fault is contained)")
    ap.add_argument("--device", default=None,
                    help="device (default auto; cpu in --dry-run: --dry-run --device cuda is a one-minute GPU smoke test)")
    ap.add_argument("--compile-backend", default=None,
                    help="torch.compile backend (default inductor; aot_eager in --dry-run)")
    ap.add_argument("--fast-block", default=FAST_BLOCK_MODULE,
                    help=f"the fast block: MODULE[:FUNCTION], FUNCTION(model) -> model (default {FAST_BLOCK_MODULE}, "
                         f"first of {', '.join(FAST_BLOCK_HOOKS)})")
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the device peak for MFU")
    ap.add_argument("--fail-variant", default=None, help="testing: make variant NAME raise (it is recorded as failed)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-limit", type=float, default=float("inf"), help=argparse.SUPPRESS)
    ap.add_argument("--ddp-backend", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ddp-device", default="auto", help=argparse.SUPPRESS)
    return ap


def make_ctx(args: argparse.Namespace) -> Ctx:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.compile_backend is None:
        args.compile_backend = "aot_eager" if args.dry_run else "inductor"
    # what a child process of this script needs to see the same options
    args.passthrough = (["--dry-run"] if args.dry_run else []) + (["--device", args.device] if args.device else []) + [
        "--compile-backend", args.compile_backend, "--fast-block", args.fast_block] + (
        ["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else []) + (
        ["--fail-variant", args.fail_variant] if args.fail_variant else [])
    return Ctx(args=args, out=out, sizes=DRY if args.dry_run else FULL,
               priors=DRY_PRIORS if args.dry_run else PRIORS)


def main(argv: list[str] | None = None, *, on_write: Callable[[Path], None] | None = None,
         variants: list[Variant] | None = None) -> int:
    """Run the check; 0 when every variant that ran finished (ok / unavailable / skipped), 1 otherwise."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    names = [x for x in (args.only + "," + args.skip + "," + (args.fail_variant or "")).split(",") if x]
    bad = [x for x in names if x not in ORDER]
    if bad and variants is None:
        print(f"gpu_check: unknown variant(s) {bad}; choose from {', '.join(ORDER)}", file=sys.stderr)
        return 2
    if not args.budget_s > 0:
        print(f"gpu_check: --budget-s must be > 0, got {args.budget_s}", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ctx = make_ctx(args)
    if args.dry_run:
        import torch

        torch.set_num_threads(1)
    if args.child == "ddp_worker":  # one rank under torch.distributed.run
        ddp_worker(ctx, args.ddp_backend, args.ddp_device, args.child_out)
        return 0
    variants = variants if variants is not None else default_variants()
    if args.child:  # --isolate: one variant in this (child) process, its record to --child-out
        v = {x.name: x for x in variants}[args.child]
        rec = run_inline(ctx, v, args.child_limit)
        atomic_write_json(args.child_out, rec)
        return 0
    check = Check(ctx, variants, Budget(args.budget_s))
    check.on_write = on_write
    if not ctx.dry and ctx.device.type != "cuda":
        print(f"[gpu_check] no CUDA device ({ctx.device}): measuring anyway at the full sizes would take hours; "
              "use --dry-run to check the script on a CPU", file=sys.stderr)
        return 1
    report = check.run()
    shutil.rmtree(ctx.out / "tmp", ignore_errors=True)
    print(summary(report))
    print(f"[gpu_check] -> {check.path}")
    return 0 if all(r.get("status") in ("ok", "unavailable", "skipped") for r in report["variants"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
