"""``benchmarks/gpu_check.py`` on a CPU (no GPU, no network).

- The ``--dry-run`` writes its JSON after every variant (valid JSON at every write), keeps the
  finished variants when a later one raises (the failure recorded with its error, the later
  variants still run), and records what cannot run here as ``unavailable`` with why.
- FLOPs per token and MFU in both conventions against a hand count of the parameters
  (PaLM App. B: ``6 N + 12 L d T``; causal half: ``6 N + 6 L d T``).
- The budget skips, with the reason recorded, a variant whose estimate does not fit (a fake
  clock), and a variant that overruns its hard limit is stopped and recorded as a timeout.
- (slow) the subprocess variants: the pipeline through Ray and DDP over two processes, plus
  one variant in an isolated child process.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def gc():
    return _load("gpu_check")


# ---- hand counts -------------------------------------------------------------------------------
def _non_embedding(d: int, layers: int, heads: int, kv_heads: int, inter: int) -> int:
    """Parameters of the Llama blocks + final norm, counted by hand: q, o (d x d), k, v
    (d x kv_heads * head_dim), gate/up/down (d x inter), two RMSNorms per block."""
    head_dim = d // heads
    per_layer = 2 * d * d + 2 * d * kv_heads * head_dim + 3 * d * inter + 2 * d
    return layers * per_layer + d


# smollm2-135m: d 576, 30 layers, 9 heads (3 kv), inter 1536, vocab 49152, T 2048
N_135M = _non_embedding(576, 30, 9, 3, 1536) + 49152 * 576  # + the head's matmul (tied)
# smollm2-1b-paper: d 1728, 24 layers, 27 heads (MHA), inter 4608
N_1B = _non_embedding(1728, 24, 27, 27, 4608) + 49152 * 1728


def test_hand_counts_are_what_we_think():
    assert N_135M == 134_515_008  # 106,203,456 in the blocks + 28,311,552 in the head
    assert N_1B == 944_982_720


@pytest.mark.parametrize("preset,n,layers,d", [("smollm2-135m", N_135M, 30, 576), ("smollm2-1b-paper", N_1B, 24, 1728)])
def test_flops_per_token_and_mfu_in_both_conventions_against_a_hand_count(gc, preset, n, layers, d):
    bench = _load("lm_throughput")
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = gc.engine().build_model(preset, vocab_size=49152, max_seq_len=2048, seed=0)
    f = bench.flops_per_token(model, 2048)
    full = 6 * n + 12 * layers * d * 2048  # PaLM App. B: attention over the full T x T matrix
    causal = 6 * n + 6 * layers * d * 2048  # only the causal half
    assert f == {"full": full, "causal": causal}
    if preset == "smollm2-135m":
        assert (full, causal) == (1_231_763_328, 1_019_426_688)  # the engine's docstring: 1.232 GFLOP/token
        # 400k tokens/s on a 989 TFLOP/s peak: 4e5 * 1.231763328e9 / 9.89e14
        assert bench.mfu(400_000, full, 989.0) == pytest.approx(0.498185, abs=1e-6)
        assert bench.mfu(400_000, causal, 989.0) == pytest.approx(0.412306, abs=1e-6)
        assert bench.mfu(400_000, full, None) is None  # no peak (a CPU): no MFU


def test_sdpa_backend_is_read_from_profiler_op_names():
    bench = _load("lm_throughput")
    names = ["aten::mm", "aten::_scaled_dot_product_flash_attention", "aten::_scaled_dot_product_flash_attention_backward",
             "aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_flash_attention_for_cpu"]
    assert bench.sdpa_backends(names) == ["flash", "efficient (mem-efficient)", "flash (cpu)"]
    assert bench.sdpa_backends(["aten::mm"]) == []


# ---- the budget --------------------------------------------------------------------------------
def _ctx(gc, tmp_path: Path, *extra: str):
    return gc.make_ctx(gc.build_parser().parse_args(["--dry-run", "--out", str(tmp_path), *extra]))


def test_budget_skips_a_variant_that_would_not_fit_and_runs_the_next_that_does(gc, tmp_path):
    now = [1000.0]

    def work(seconds: float):
        def run(ctx):
            now[0] += seconds  # the fake clock advances by what the variant "took"
            return {"took": seconds}
        return run

    variants = [gc.Variant("a", work(30), lambda ctx: 25.0),   # 100 s budget, 10 s reserve: fits
                gc.Variant("b", work(50), lambda ctx: 80.0),   # 70 s left - 10 reserve = 60 < 80: skipped
                gc.Variant("c", work(20), lambda ctx: 20.0),   # fits in the 60
                gc.Variant("d", work(5), lambda ctx: 45.0),    # 50 s left - 10 = 40 < 45: skipped
                gc.Variant("e", lambda ctx: {"dtype": torch.bfloat16, "nan": float("nan"), "t": torch.tensor(2.5)},
                           lambda ctx: 0.0)]                  # what JSON cannot hold does not break the write
    lines: list[str] = []
    check = gc.Check(_ctx(gc, tmp_path), variants, gc.Budget(100, clock=lambda: now[0], reserve_s=10),
                     log=lines.append)
    rep = check.run()
    v = rep["variants"]
    assert [v[k]["status"] for k in "abcde"] == ["ok", "skipped", "ok", "skipped", "ok"]
    assert v["a"]["seconds"] == 30 and v["c"]["seconds"] == 20
    assert v["b"]["why"] == "budget: needs ~80 s, 70 s left of 100 s (10 s kept in reserve)"
    assert v["d"]["why"] == "budget: needs ~45 s, 50 s left of 100 s (10 s kept in reserve)"
    # hard limits: min(max(2 e, e + 60), left - reserve): a: min(85, 90); c: min(80, 60)
    assert (v["a"]["limit_s"], v["c"]["limit_s"]) == (85, 60)
    on_disk = json.loads((tmp_path / "gpu_check.json").read_text())
    assert on_disk["variants"]["e"]["result"] == {"dtype": "torch.bfloat16", "nan": None, "t": 2.5}
    assert on_disk["variants"]["a"] == v["a"] and on_disk["finished"]
    assert len(lines) == 5 and lines[1].startswith("[gpu_check] b: skipped")


def test_a_variant_past_its_hard_limit_is_stopped_and_recorded_and_the_next_runs(gc, tmp_path):
    def hang(ctx):
        try:
            time.sleep(30)
        except Exception:  # noqa: BLE001 - a variant's own broad handler must not swallow the limit
            pass
        time.sleep(30)
        return {}

    variants = [gc.Variant("hang", hang, lambda ctx: 0.5), gc.Variant("after", lambda ctx: {"x": 1}, lambda ctx: 0.1)]
    # limit min(max(2 x 0.5, 0.5 + 1), 100 - 10) = 1.5 s
    check = gc.Check(_ctx(gc, tmp_path), variants, gc.Budget(100, reserve_s=10, slack_s=1), log=lambda s: None)
    t = time.monotonic()
    rep = check.run()
    assert time.monotonic() - t < 10
    hung = rep["variants"]["hang"]
    assert hung["status"] == "timeout" and hung["why"] == "stopped at its hard limit of 1.5 s" and hung["limit_s"] == 1.5
    assert 1.4 < hung["seconds"] < 8
    assert rep["variants"]["after"]["status"] == "ok" and rep["variants"]["after"]["result"] == {"x": 1}


# ---- the dry run -------------------------------------------------------------------------------
# tiny-1m at vocab 256, T 32 (the dry run's sizes): 2 blocks of d 128, 4 heads (MHA), inter 512
N_TINY = _non_embedding(128, 2, 4, 4, 512) + 256 * 128


def test_dry_run_writes_json_after_every_variant_and_keeps_finished_ones_when_one_raises(gc, tmp_path):
    snapshots: list[dict] = []

    def on_write(path: Path) -> None:
        snapshots.append(json.loads(path.read_text()))  # valid JSON at every write

    t = time.monotonic()
    rc = gc.main(["--dry-run", "--out", str(tmp_path), "--skip", "pipeline,ddp", "--fail-variant", "compiled"],
                 on_write=on_write)
    wall = time.monotonic() - t
    assert rc == 1  # one variant failed
    final = json.loads((tmp_path / "gpu_check.json").read_text())
    assert final == snapshots[-1] and final["finished"] and final["dry_run"]
    v = final["variants"]
    assert list(v) == list(gc.ORDER)

    # one write at the start, one as each variant starts (if it runs), one after each, one at the end
    ran = [n for n in gc.ORDER if v[n]["status"] != "skipped"]
    assert len(snapshots) == 2 + len(gc.ORDER) + len(ran)
    done = 0
    for snap in snapshots[1:-1]:
        st = [snap["variants"][n]["status"] for n in gc.ORDER]
        k = sum(s not in ("pending", "running") for s in st)
        assert "pending" not in st[:k] and "running" not in st[:k], st  # finished ones first, in order
        assert set(st[k:]) <= {"pending", "running"} and st[k + 1:].count("running") == 0, st
        assert st[:k] == [v[n]["status"] for n in gc.ORDER[:k]]  # as finally recorded
        assert k >= done
        done = k
        if "running" in st:
            running = snap["variants"][gc.ORDER[k]]
            assert running["limit_s"] >= 1 and running["estimate_s"] >= 0
    # what finished before the failure is in every later write, unchanged
    after_eager = next(i for i, snap in enumerate(snapshots) if snap["variants"]["eager"]["status"] == "ok")
    for snap in snapshots[after_eager:]:
        assert snap["variants"]["eager"] == v["eager"]

    # earlier variants: measured
    assert v["env"]["status"] == "ok" and v["env"]["result"]["torch"] == torch.__version__
    assert v["ce"]["status"] == "ok" and v["ce"]["result"]["fp32"]["chunked"]["loss_rel_err"] < 1e-5
    e = v["eager"]["result"]
    assert v["eager"]["status"] == "ok" and e["train_tokens_per_s"] > 0 and e["timed_steps"] == 2
    assert e["eval_tokens_per_s"] > 0
    assert e["flops_per_token"] == 6 * N_TINY + 12 * 2 * 128 * 32
    assert e["flops_per_token_causal"] == 6 * N_TINY + 6 * 2 * 128 * 32
    assert e["mfu"] is None and e["mfu_causal"] is None  # a CPU has no peak
    assert e["cross_entropy"] == "chunked" and e["ce_chunk_tokens"] == 16
    assert e["sdpa_backend"] and e["profile"]["steps"] == 2 and e["profile"]["top"] and e["profile_table"]
    assert "peak_mem_gb" in e and "peak_mem_reserved_gb" in e
    # the failing variant: recorded with its error
    assert v["compiled"]["status"] == "failed" and "forced failure of compiled" in v["compiled"]["error"]
    assert "RuntimeError" in v["compiled"]["traceback_tail"]
    # cannot run here: recorded with why, not dropped
    assert v["compiled_fused"]["status"] == "unavailable" and "CUDA" in v["compiled_fused"]["why"]
    assert v["fast_block"]["status"] in ("ok", "unavailable")  # ok once lm_experiments.engine.fast_llama exists
    if v["fast_block"]["status"] == "unavailable":
        assert "fast_llama" in v["fast_block"]["why"]
    # later variants still ran
    eng = v["engine"]["result"]
    assert v["engine"]["status"] == "ok" and eng["steps"] == 2 and len(eng["losses"]) == 2
    assert eng["tokens_by_source"] == {"pre": 3 * 32, "post": 1 * 32}  # 4 slots, 1 D_post block spread in
    assert v["tput_1b"]["status"] == "ok" and v["tput_1b"]["result"]["preset"] == "tiny-300k"
    assert v["pipeline"] == v["ddp"] == {"status": "skipped", "why": "not selected (--skip)"}
    assert not (tmp_path / "tmp").exists() and not list(tmp_path.glob("*.tmp"))
    print(f"dry run (pipeline and ddp skipped): {wall:.0f} s")


@pytest.mark.slow
def test_dry_run_compiled_in_a_child_process_pipeline_through_ray_and_ddp(gc, tmp_path):
    rc = gc.main(["--dry-run", "--out", str(tmp_path), "--only", "compiled,pipeline,ddp", "--isolate"])
    assert rc == 0
    v = json.loads((tmp_path / "gpu_check.json").read_text())["variants"]
    c = v["compiled"]
    assert c["status"] == "ok" and c["isolated"]  # ran in a child process of the script
    assert c["result"]["compile"] and c["result"]["compile_backend"] == "aot_eager" and c["result"]["sdpa_backend"]
    p = v["pipeline"]["result"]
    assert v["pipeline"]["status"] == "ok" and p["executor"] == "ray" and p["status"]["complete"]
    assert p["frontier_rows"] == 1 and not p["failed"]
    d = v["ddp"]["result"]
    assert v["ddp"]["status"] == "ok" and (d["processes"], d["backend"]) == (2, "gloo")
    assert d["ddp"]["world_size"] == 2 and d["one_process"]["world_size"] == 1
    assert d["max_rel_loss_diff_vs_one_process"] < 1e-4  # the same global batch, the same math
    assert v["eager"] == {"status": "skipped", "why": "not selected (--only)"}


def test_ce_records_a_failing_mode_and_still_compares_the_others(gc, tmp_path, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(gc.engine(), "linear_cross_entropy", broken)  # every non-plain mode
    assert gc.main(["--dry-run", "--out", str(tmp_path), "--only", "ce"]) == 0
    r = json.loads((tmp_path / "gpu_check.json").read_text())["variants"]["ce"]
    assert r["status"] == "ok"
    for prec in ("fp32", "bf16"):
        res = r["result"][prec]
        assert res["chunked"] == {"status": "failed", "error": "RuntimeError: kernel exploded"}
        assert res["plain"]["loss_rel_err"] == 0.0 and res["plain"]["loss"] > 0
