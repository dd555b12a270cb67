"""Everything the GPU fast path needs measured, in one short run on a lent GPU machine.

    OUT=/path/to/out python benchmarks/gpu_check.py [--budget-s 450]

Writes ``$OUT/gpu_check.json`` (one record per step: status, seconds, the numbers) and the
JSON of each benchmark next to it; prints a summary. Steps, in priority order, each in its
own subprocess with a timeout, all within ``--budget-s`` seconds (a step that would not fit
is recorded as skipped):

1. ``env``        torch / CUDA / GPUs, whether liger-kernel or cut-cross-entropy is installed.
2. ``ce``         chunked (and fused, when installed) cross-entropy vs ``F.cross_entropy`` on the
                  GPU at 8192 tokens x vocab 49152, hidden 576: loss and gradient errors in fp32
                  and under bf16 autocast; peak memory of loss + backward for each.
3. ``tput_135m``  smollm2-135m, batch 16 x 2048, bf16: eager, eager+chunked, compiled,
                  compiled+chunked (+ compiled+fused when installed): tokens/s, MFU, peak memory,
                  eval tokens/s, first-step losses (equal across variants up to bf16 rounding).
4. ``engine``     ``lm_experiments.engine.train.train`` itself on the GPU (tiny-3m, 4 steps): eager plain
                  vs compiled + ``auto`` cross-entropy (fused AdamW): losses agree, FLOPs/MFU recorded.
5. ``ddp``        with more than one GPU: a 3-step DDP run of smollm2-135m (seq 512, global batch
                  8) under ``torchrun`` vs the same run on one GPU (losses), tokens/s and MFU.
6. ``tput_1b``    smollm2-1b-paper, batch 8 x 2048: eager+chunked and compiled+chunked.

Nothing here downloads anything (random tokens, models built from their configs).
``--dry-cpu`` runs the same plumbing on a CPU with tiny shapes (to check the script itself).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
BENCH = REPO / "benchmarks" / "lm_throughput.py"
DRY = os.environ.get("GPU_CHECK_DRY") == "1"  # --dry-cpu: tiny shapes, any device


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "TOKENIZERS_PARALLELISM": "false"}


def _run(cmd: list[str], timeout: float, log: Path) -> tuple[int, float]:
    t = time.time()
    with open(log, "w") as fh:
        try:
            rc = subprocess.run(cmd, cwd=REPO, env=_env(), stdout=fh, stderr=subprocess.STDOUT,
                                timeout=max(1.0, timeout)).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    return rc, time.time() - t


# ---- steps that run in a child process of this script --------------------------------------
def child_env() -> dict[str, Any]:
    import importlib.util

    import torch

    rec: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda,
                           "cuda_available": torch.cuda.is_available(),
                           "device_count": torch.cuda.device_count(),
                           "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                           "liger_kernel": importlib.util.find_spec("liger_kernel") is not None,
                           "cut_cross_entropy": importlib.util.find_spec("cut_cross_entropy") is not None}
    try:
        import transformers

        rec["transformers"] = transformers.__version__
    except ImportError:
        rec["transformers"] = None
    if shutil.which("nvidia-smi"):
        rec["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
    return rec


def child_ce() -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from lm_experiments.engine.losses import fused_backend, linear_cross_entropy

    from lm_experiments.engine.device import resolve_device

    dev = resolve_device("auto")
    cuda = dev.type == "cuda"
    g = torch.Generator(device="cpu").manual_seed(0)
    n, d, v = (256, 32, 1000) if DRY else (8192, 576, 49152)
    h0 = torch.randn(n, d, generator=g).to(dev)
    w0 = (torch.randn(v, d, generator=g) * 0.04).to(dev)
    t = torch.randint(0, v, (n,), generator=g).to(dev)
    t[::97] = -100
    modes = ["plain", "chunked"] + ([f"fused:{fused_backend()}"] if fused_backend() else [])
    out: dict[str, Any] = {"tokens": n, "hidden": d, "vocab": v, "modes": modes}
    for prec in ("fp32", "bf16"):
        res = {}
        for mode in modes:
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
                    loss = linear_cross_entropy(h, w, t, mode=mode, chunk_tokens=64 if DRY else 2048)
            loss.backward()
            if cuda:
                torch.cuda.synchronize()
            res[mode] = {"loss": float(loss.detach()), "seconds": time.perf_counter() - t0,
                         "peak_increase_mib": (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else None,
                         "dh": h.grad.float(), "dw": w.grad.float()}
        ref = res["plain"]
        for mode in modes:
            r = res[mode]
            r["loss_rel_err"] = abs(r["loss"] - ref["loss"]) / abs(ref["loss"])
            r["dh_rel_err"] = float((r["dh"] - ref["dh"]).norm() / ref["dh"].norm())
            r["dw_rel_err"] = float((r["dw"] - ref["dw"]).norm() / ref["dw"].norm())
        for mode in modes:
            del res[mode]["dh"], res[mode]["dw"]
        out[prec] = res
    return out


def child_engine() -> dict[str, Any]:
    import numpy as np

    from lm_experiments.engine.model import build_model
    from lm_experiments.engine.optim import OptimConfig
    from lm_experiments.engine.train import train

    from lm_experiments.engine.device import resolve_device

    dev = resolve_device("auto")
    v, tl = (256, 32) if DRY else (4096, 256)

    class Src:
        data = np.random.default_rng(0).integers(0, v, size=(4, 16, tl))

        def __len__(self) -> int:
            return len(self.data)

        def batch(self, step: int) -> np.ndarray:
            return self.data[step]

    out: dict[str, Any] = {}
    for name, kw in (("eager_plain", {"cross_entropy": "plain"}), ("compiled_auto", {"compile": True}),
                     ("eager_chunked", {"cross_entropy": "chunked", "ce_chunk_tokens": 1024})):
        model = build_model("tiny-1m" if DRY else "tiny-3m", vocab_size=v, max_seq_len=tl, seed=0).to(dev)
        res = train(model, Src(), optim=OptimConfig(lr=1e-3), ckpt_dir=Path(os.environ["GPU_CHECK_TMP"]) / name,
                    device=dev, precision="bf16", progress=False, **kw)
        out[name] = {"losses": [h["train_loss"] for h in res.history], "tokens_per_s": res.tokens_per_s,
                     "mfu": res.mfu, "flops": res.flops, "cross_entropy": res.cross_entropy, "compiled": res.compiled,
                     "device_name": res.device_name}
    ref = np.array(out["eager_plain"]["losses"])
    for name in out:
        out[name]["max_rel_diff_vs_eager_plain"] = float(np.max(np.abs(np.array(out[name]["losses"]) - ref) / ref))
    return out


def child_ddp(out_json: str) -> dict[str, Any]:
    """Under torchrun (or alone): 3 steps of smollm2-135m at seq 512, global batch 8."""
    import numpy as np
    import torch

    from lm_experiments.engine import distributed
    from lm_experiments.engine.device import resolve_device
    from lm_experiments.engine.model import build_model
    from lm_experiments.engine.optim import OptimConfig
    from lm_experiments.engine.train import train

    ctx = distributed.init_from_env()
    dev = resolve_device("auto")
    v, tl = (256, 32) if DRY else (49152, 512)
    if DRY:
        torch.set_num_threads(1)

    class Src:
        data = np.random.default_rng(0).integers(0, v, size=(3, 8, tl))

        def __len__(self) -> int:
            return len(self.data)

        def batch(self, step: int) -> np.ndarray:
            return self.data[step]

    model = build_model("tiny-1m" if DRY else "smollm2-135m", vocab_size=v, max_seq_len=tl, seed=0).to(dev)
    res = train(model, Src(), optim=OptimConfig(lr=1e-3), ckpt_dir=Path(os.environ["GPU_CHECK_TMP"]) /
                f"ddp{ctx.world_size}", device=dev, precision="bf16", progress=False)
    rec = {"world_size": ctx.world_size, "losses": [h["train_loss"] for h in res.history],
           "grad_norms": [h.get("grad_norm") for h in res.history], "tokens_per_s": res.tokens_per_s,
           "mfu": res.mfu, "cross_entropy": res.cross_entropy}
    if ctx.is_main:
        Path(out_json).write_text(json.dumps(rec, indent=2))
    distributed.shutdown()
    return rec


# ---- the orchestrator ----------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"))
    ap.add_argument("--budget-s", type=float, default=450.0, help="wall-clock budget of all steps")
    ap.add_argument("--dry-cpu", action="store_true", help="tiny shapes on any device: check this script")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    global DRY
    if args.dry_cpu:
        os.environ["GPU_CHECK_DRY"] = "1"
        DRY = True
    os.environ.setdefault("GPU_CHECK_TMP", str(out / "tmp"))
    if args.child:
        fn = {"env": child_env, "ce": child_ce, "engine": child_engine}.get(args.child)
        rec = child_ddp(args.child_out) if args.child == "ddp" else fn()
        if args.child != "ddp":
            Path(args.child_out).write_text(json.dumps(rec, indent=2, default=str))
        return 0

    t_start = time.time()
    report: dict[str, Any] = {"steps": {}, "budget_s": args.budget_s}
    py = sys.executable

    def left() -> float:
        return args.budget_s - (time.time() - t_start)

    def step(name: str, cmd: list[str], timeout: float, result: Path | None, need: float = 20.0) -> dict[str, Any]:
        if left() < need:
            rec = {"status": "skipped (budget)"}
        else:
            rc, secs = _run(cmd, min(timeout, left()), out / f"{name}.log")
            rec = {"status": "ok" if rc == 0 else ("timeout" if rc == 124 else f"failed rc={rc}"), "seconds": secs}
            if result is not None and result.exists():
                rec["result"] = json.loads(result.read_text())
            if rc != 0:
                rec["log_tail"] = (out / f"{name}.log").read_text()[-3000:]
        report["steps"][name] = rec
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
        print(f"[gpu_check] {name}: {rec['status']} ({rec.get('seconds', 0):.0f} s; {left():.0f} s left)", flush=True)
        return rec

    me = str(Path(__file__).resolve())
    env = step("env", [py, me, "--child", "env", "--child-out", str(out / "env.json"), "--out", str(out)], 60,
               out / "env.json")
    info = env.get("result", {})
    fused = bool(info.get("liger_kernel") or info.get("cut_cross_entropy"))
    ngpu = int(info.get("device_count") or 0)
    if ngpu < 1 and not DRY:
        print("[gpu_check] no CUDA device: nothing to measure (--dry-cpu checks the script on a CPU)")
        return 1
    big = ["--preset", "tiny-1m", "--batch", "4", "--seq-len", "64", "--vocab", "512", "--threads", "1"] if DRY else \
        ["--preset", "smollm2-135m", "--batch", "16", "--seq-len", "2048"]
    huge = ["--preset", "tiny-3m", "--batch", "4", "--seq-len", "64", "--vocab", "512", "--threads", "1"] if DRY else \
        ["--preset", "smollm2-1b-paper", "--batch", "8", "--seq-len", "2048"]
    step("ce", [py, me, "--child", "ce", "--child-out", str(out / "ce.json"), "--out", str(out)], 90, out / "ce.json")
    variants = "eager,eager+chunked,compiled,compiled+chunked" + (",compiled+fused" if fused else "")
    step("tput_135m", [py, str(BENCH), *big, "--steps", "15", "--warmup", "3", "--eval-batches", "2", "--variants", variants,
                       "--json", str(out / "throughput_135m_s2048.json")], 300, out / "throughput_135m_s2048.json",
         need=120)
    step("engine", [py, me, "--child", "engine", "--child-out", str(out / "engine.json"), "--out", str(out)], 150,
         out / "engine.json", need=60)
    if ngpu > 1 or DRY:
        n = min(ngpu, 8) if ngpu > 1 else 2
        torchrun = shutil.which("torchrun") or "torchrun"
        one = step("ddp_1gpu", [py, me, "--child", "ddp", "--child-out", str(out / "ddp_1.json"), "--out", str(out)],
                   90, out / "ddp_1.json", need=40)
        many = step("ddp", [torchrun, "--standalone", "--nproc_per_node", str(n), me, "--child", "ddp",
                            "--child-out", str(out / f"ddp_{n}.json"), "--out", str(out)], 120,
                    out / f"ddp_{n}.json", need=60)
        if "result" in one and "result" in many:
            a, b = one["result"]["losses"], many["result"]["losses"]
            many["max_rel_loss_diff_vs_1gpu"] = max(abs(x - y) / abs(x) for x, y in zip(a, b))
            (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    else:
        report["steps"]["ddp"] = {"status": "skipped (one GPU)"}
    step("tput_1b", [py, str(BENCH), *huge, "--steps", "8", "--warmup", "2", "--eval-batches", "0", "--variants", "eager+chunked,compiled+chunked",
                     "--json", str(out / "throughput_1b_s2048.json")], 240, out / "throughput_1b_s2048.json", need=90)
    report["wall_s"] = time.time() - t_start
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    shutil.rmtree(out / "tmp", ignore_errors=True)

    # summary
    print(f"[gpu_check] done in {report['wall_s']:.0f} s -> {out / 'gpu_check.json'}")
    for key in ("tput_135m", "tput_1b"):
        r = report["steps"].get(key, {}).get("result")
        for v in (r or {}).get("variants", []):
            mfu = f"{v['mfu']:.1%}" if v.get("mfu") is not None else "n/a"
            mem = f"{v['peak_mem_gb']:.1f} GiB" if v.get("peak_mem_gb") is not None else "n/a"
            print(f"  {v['preset']:17s} {v['variant']:17s} {v['train_tokens_per_s']:>10,.0f} tok/s  MFU {mfu:>6s}  "
                  f"peak {mem}  loss0 {v['losses'][0]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
