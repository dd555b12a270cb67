"""``--dry-run`` from the config alone: the plan, tokens, time and disk, in seconds.

Nothing is downloaded, tokenized or built (no network, no torch): the plan comes from
:func:`lm_experiments.protocol.plan.make_plan` on data sizes derived from the config
(:func:`static_sizes`: exact where the config fixes them, ``post.post_train_tokens`` or the
synthetic world's document counts; otherwise estimated from ``max_chars`` at
:data:`CHARS_PER_TOKEN`), the parameter count from the model preset's arithmetic
(:func:`count_parameters`), the time from recorded throughput (:data:`RATES`) and the disk
footprint from the models the sweep saves. ``--dry-run --probe`` is the measured version:
it prepares the data and times a few steps on this machine
(:func:`lm_experiments.protocol.plan.estimate_seconds`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from early_exposure.errors import ConfigError
from lm_experiments.config import PipelineConfig
from lm_experiments.config.models import MODEL_PRESETS
from lm_experiments.protocol.plan import Plan, make_plan, post_sequences

#: characters per token assumed where only ``max_chars`` sizes a corpus (BPE on English text: ~4)
CHARS_PER_TOKEN = 4.0
#: bytes per saved parameter: fp32 master weights (bf16 is autocast only), model.safetensors
PARAM_BYTES = 4
#: bytes per parameter of a run's resume state (state.pt: weights, two AdamW moments, best weights)
STATE_BYTES = 16

#: recorded throughput as effective FLOP/s (FLOPs per token = 6 N + 12 L d T for training, a
#: third of that for evaluation), the training FLOPs/token of the model measured, and where
RATES: dict[str, dict[str, Any]] = {
    # docs/results/gpu135m_smoke.md: smollm2-135m, bf16, batch 16 x 2048: 129.7k tok/s eager,
    # 209.8k compiled, evaluation 376.9k tok/s (1.232 GFLOP/token)
    "h100": {"flops": 1.232e9, "train": 209.8e3 * 1.232e9, "train_eager": 129.7e3 * 1.232e9,
             "eval": 376.9e3 * 1.232e9 / 3,
             "where": "one H100 (recorded for smollm2-135m: 209.8k training tok/s compiled, 129.7k eager, "
                      "376.9k evaluation tok/s; docs/lm_engine.md)"},
    # docs/lm_pipeline.md: cpu-quick stage 1, tiny-1m at seq 64, 1 thread: 11.4k tok/s (4.92 MFLOP/token);
    # evaluation ~4.6x the training tokens/s (cpu-full probe: 6.4k / 29.6k)
    "cpu": {"flops": 4.92e6, "train": 11.4e3 * 4.92e6, "train_eager": 11.4e3 * 4.92e6, "eval": 1.5 * 11.4e3 * 4.92e6,
            "where": "one CPU thread (recorded for tiny-1m: 11.4k training tok/s; docs/lm_pipeline.md)"},
}


def count_parameters(preset: str, vocab_size: int) -> int:
    """Parameters of a model preset (a Llama: tied embedding, GQA attention without biases,
    SiLU gated MLP, RMSNorms) from its config arithmetic, without building it."""
    c = MODEL_PRESETS[preset]
    d, n_layers, hidden = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"]
    head = d // c["num_attention_heads"]
    kv = c.get("num_key_value_heads", c["num_attention_heads"]) * head
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * hidden + 2 * d  # q, o; k, v; gate, up, down; two norms
    embed = vocab_size * d * (1 if c.get("tie_word_embeddings", True) else 2)
    return embed + n_layers * per_layer + d


def flops_per_token(preset: str, n_params: int, seq_len: int) -> float:
    """Training FLOPs per token, ``6 N + 12 L d T`` (the MFU convention of benchmarks/lm_throughput.py)."""
    c = MODEL_PRESETS[preset]
    return 6 * n_params + 12 * c["num_hidden_layers"] * c["hidden_size"] * seq_len


def vocab_estimate(cfg: PipelineConfig) -> tuple[int, str]:
    """(vocabulary size, how it was found) without loading the tokenizer."""
    d = cfg.data
    if d.tokenizer == "word" and d.synthetic is not None:
        from lm_experiments.data.synthetic import build_world

        return len(build_world(d.synthetic).vocab), "the synthetic world's words"
    if d.tokenizer == "bpe":
        return d.vocab_size, "data.vocab_size, an upper bound"
    return int(MODEL_PRESETS[cfg.model.preset]["vocab_size"]), f"assumed: the model preset's, {d.tokenizer} sets it"


def static_sizes(cfg: PipelineConfig) -> tuple[dict[str, int], list[str]]:
    """Blocks per role as :func:`lm_experiments.protocol.prepared.data_sizes` would report them,
    from the config; and the list of roles whose training size is an estimate."""
    d, T = cfg.data, cfg.data.seq_len
    keep = 1.0 - d.val_fraction - d.test_fraction
    sizes: dict[str, int] = {"seq_len": T}
    estimated: list[str] = []
    for role in ("pre", "post", "ft"):
        spec = getattr(d, role)
        sizes[f"{role}_val"] = d.num_val_blocks
        if spec.source == "synthetic" and d.synthetic is not None:
            n_docs = {"pre": d.synthetic.pre_docs, "post": d.synthetic.post_docs, "ft": d.synthetic.ft_docs}[role]
            blocks = int(n_docs * keep)  # one document = one block of seq_len tokens
        elif spec.max_chars is not None:
            blocks = int(spec.max_chars * keep / CHARS_PER_TOKEN) // T
            estimated.append(role)
        else:
            blocks = -1
            estimated.append(role)
        sizes[role] = blocks
    if cfg.post.post_train_tokens is not None:  # stage 2 uses exactly this many tokens of D_post
        sizes["post"] = max(sizes["post"], cfg.post.post_train_tokens // T)
        estimated = [r for r in estimated if r != "post"]
    for role in ("pre", "post", "ft"):  # unknown: assume enough (the budgets are checked on the real data)
        if sizes[role] < 0:
            sizes[role] = max(1, cfg.post.post_train_tokens // T if role == "post" and cfg.post.post_train_tokens
                              else max(st.batch_size for st in cfg.post.settings()))
    return sizes, estimated


def _bytes(n: float) -> str:
    for unit, k in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n:.0f} B"


def _n(k: int, word: str) -> str:
    return f"{k} {word}{'' if k == 1 else 's'}"


def _hours(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min"


def eval_tokens(cfg: PipelineConfig, plan: Plan) -> int:
    """Held-out tokens evaluated: every set after each run, plus stage 2's early-stopping
    evaluations (at most every ``eval_every_epochs``), as :func:`~lm_experiments.protocol.plan.estimate_seconds`."""
    s, T = plan.sizes, plan.sizes["seq_len"]
    n_es = 0
    for post in plan.post:
        seqs = post_sequences(cfg, s["post_used"], post)
        every = max(1, round(cfg.post.eval_every_epochs * max(1, s["post_used"] // post.setting.batch_size)))
        n_es += math.ceil(math.ceil(seqs / post.setting.batch_size) / every)
    val_all = (s["pre_val"] + s["post_val"] + s["ft_val"]) * T
    return (len(plan.pre) + len(plan.post) + len(plan.ft) + len(plan.traj)) * val_all + n_es * s["post_val"] * T


def static_dry_run(cfg: PipelineConfig, *, executor: str = "serial", log: Callable[[str], None] = print,
                   label: str = "") -> dict[str, Any]:
    """Print (and return) the plan, tokens, estimated time and disk of ``cfg`` from the config alone."""
    sizes, estimated = static_sizes(cfg)
    T = sizes["seq_len"]
    try:
        plan = make_plan(cfg, sizes, "dry-run")
    except ConfigError as exc:
        if not estimated:  # the sizes are exact: the budgets are wrong
            raise
        log(f"warning: {exc} (with D_{'/'.join(estimated)} sizes estimated from max_chars; "
            "--dry-run --probe checks on the prepared data)")
        return {"dry_run": True, "plan": None}
    vocab, vocab_how = vocab_estimate(cfg)
    n_params = count_parameters(cfg.model.preset, vocab)
    lams = sorted(cfg.pre_fractions)
    approx = "~" if "post" in estimated else ""
    lines = [f"dry run{f' of {label}' if label else ''}: pipeline {cfg.pipeline_label()}, model {cfg.model.preset} "
             f"({n_params / 1e6:,.2f}M parameters at vocab {vocab:,}: {vocab_how}), seq_len {T}, "
             f"seeds {sorted(cfg.seeds)}, executor {executor}",
             f"  stage 1: {len(plan.pre)} runs (lambda {lams} x {_n(len(cfg.seeds), 'seed')}), "
             f"{plan.tokens['pre']:,} tokens",
             f"  stage 2: {len(plan.post)} runs ({_n(len(cfg.post.settings()), 'setting')} x "
             f"{_n(len(cfg.pre.mix_fraction), 'lambda')} {sorted(cfg.pre.mix_fraction)} x {_n(len(cfg.seeds), 'seed')}"
             + (f" + {len(cfg.post.compute_matched) * len(cfg.seeds)} compute-matched at lambda "
                f"{sorted(cfg.post.compute_matched)}" if cfg.post.compute_matched else "")
             + f"), at most {approx}{plan.tokens['post_max']:,} tokens "
             f"(D_post {approx}{plan.sizes['post_used'] * T:,} tokens, every run at max_epochs)",
             f"  stage 3: {len(plan.ft)} runs (lr {sorted(cfg.ft.lr)}), {plan.tokens['ft']:,} tokens"]
    if plan.traj:
        lines.append(f"  matched L_im: {len(plan.traj)} trajectories x up to {cfg.matched.max_checkpoints} stage-2 "
                     f"checkpoints, at most {plan.tokens['traj_max']:,} tokens")
    train = plan.tokens["pre"] + plan.tokens["post_max"] + plan.tokens["ft"] + plan.tokens["traj_max"]
    ev = eval_tokens(cfg, plan)
    lines.append(f"  tokens: {approx}{train:,} training + {approx}{ev:,} evaluation")
    flops = flops_per_token(cfg.model.preset, n_params, T)
    ref = "cpu" if cfg.device == "cpu" else ("h100" if cfg.device in ("auto", "cuda") or
                                             cfg.device.startswith("cuda") else None)
    est: dict[str, Any] = {"train_tokens": train, "eval_tokens": ev, "n_params": n_params}
    if ref is None:
        lines.append(f"  estimated time: unknown for device {cfg.device} without a probe (--dry-run --probe)")
    else:
        r = RATES[ref]
        rate = r["train"] if (cfg.train.compile or ref == "cpu") else r["train_eager"]
        # a model smaller than the recorded one is not faster than its token rate (it cannot fill the device)
        train_tps = min(rate / flops, rate / r["flops"])
        eval_tps = min(3 * r["eval"] / flops, 3 * r["eval"] / r["flops"])
        seconds = train / train_tps + ev / eval_tps
        est["total_s"] = seconds
        lines.append(f"  estimated time: {approx}{_hours(seconds)} at most (one run at a time, stage 2 at max_epochs) "
                     f"on {r['where']}, scaled by FLOPs/token ({flops / 1e9:.3g} GFLOP; a smaller model at most the "
                     "recorded tokens/s); --dry-run --probe times this machine")
    models = len(plan.pre) + len(plan.post) + len(plan.traj) * cfg.matched.max_checkpoints + (
        len(plan.ft) if cfg.ft.save_checkpoints else 0)
    per_model = n_params * PARAM_BYTES
    data_bytes = sum(sizes[k] for k in ("pre", "post", "ft", "pre_val", "post_val", "ft_val")) * T * 4  # int32 tokens
    est["disk_bytes"] = models * per_model
    lines.append(f"  estimated disk: {_bytes(models * per_model)} of saved models ({models} x {_bytes(per_model)} "
                 f"fp32: {len(plan.pre)} theta_pre, {len(plan.post)} theta_post"
                 + (f", {len(plan.traj) * cfg.matched.max_checkpoints} stage-2 trajectory checkpoints" if plan.traj
                    else "") + (f", {len(plan.ft)} theta_ft" if cfg.ft.save_checkpoints else "")
                 + f") + {_bytes(n_params * STATE_BYTES)} resume state per run in progress (weights, AdamW moments, "
                 f"best weights; deleted when the run ends) + {'~' if estimated else ''}{_bytes(data_bytes)} "
                 "of token arrays in the data cache")
    lines.append("  nothing was downloaded, tokenized or built"
                 + (f" (D_{'/'.join(estimated)} sized from max_chars at ~{CHARS_PER_TOKEN:g} chars/token)"
                    if estimated else "") + "; --dry-run --probe prepares the data and times a few steps here")
    if cfg.data_fallback is not None and any(getattr(cfg.data, r).source == "hf" for r in ("pre", "post", "ft")):
        lines.append("  hub corpora: without network the run falls back to data_fallback (with fallback_set); "
                     "--offline makes a corpus missing from the local cache an error instead")
    log("\n".join(lines))
    return {"dry_run": True, "plan": plan, "estimate": est}

