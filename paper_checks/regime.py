"""The testbed's envelope, and the gate that keeps LM verdicts honest.

A verdict is only as good as its testbed. The paper's protocol (Sec. 3) runs post-training
to convergence with early stopping, then fine-tunes with a sweep of learning rates that
causes forgetting, while the model keeps its general ability (Figure 2's right panels:
C4 loss after fine-tuning moderately above the pretrained level). A tiny CPU model can
leave that regime in ways that make a verdict meaningless (a model that forgot D_pre
entirely "retains" nothing to compare; a stage that does no better than counting word
pairs has learned nothing a transformer adds). This is the *testbed's* envelope, not the
paper's regime: its thresholds are frozen in ``configs/envelope.yaml`` (each with its
reason: the paper's sentence where there is one, "testbed choice" otherwise;
docs/regime.md) before a confirmatory run. One criterion per statement:

1. ``learned_pre``: theta_pre beats the bigram baseline on D_pre: median
   (bigram - L(theta_pre; D_pre)) >= ``min_margin_pre`` nats.
2. ``learned_post``: theta_post beats the bigram on D_post: median (bigram - L_im) >=
   ``min_margin_post``.
3. ``learned_ft``: theta_ft beats the bigram on D_ft: median (bigram - L_ft) >=
   ``min_margin_ft``.
4. ``converged``: post-training converged: early stopping triggered in at least
   ``min_stopped`` of the arm's non-compute-matched post-training runs.
5. ``kept_post``: the pretraining distribution degraded but far from the bigram after
   post-training: median share of pretraining's gain over the bigram kept >= ``min_kept_post``.
6. ``kept_ft``: the same after fine-tuning (median over the arm's fine-tuning runs)
   >= ``min_kept_ft``.
7. ``partial``: fine-tuning forgets partially, not totally: median forgetting fraction at
   the gentlest fine-tuning lr in (``min_forgetting``, ``max_forgetting``).

Each arm (method, compute-matched arms apart) of a run set (preset x pipeline) is judged on
its own; an LM check is judged on the arms it reads (:func:`check_arms`: the baseline and
candidate of a frontier comparison, the base arms of the lambda studies and of the
matched-L_im check). A check any of whose arms is outside becomes INCONCLUSIVE with the
failing criteria named (its original status and evidence kept in ``data["regime"]``); the
run set as a whole is reported inside only when every arm is. A figure that is missing
(NaN: e.g. no n-gram baselines) fails its criterion.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from early_exposure.errors import ConfigError
from early_exposure.integrity import read_json
from early_exposure.runs import ResultsRoot, RunTree

#: the committed, frozen thresholds (with their reasons)
ENVELOPE_FILE = Path(__file__).resolve().parent.parent / "configs" / "envelope.yaml"


@dataclass(frozen=True)
class Envelope:
    """Thresholds of the testbed's envelope (the defaults equal ``configs/envelope.yaml``: tested)."""

    min_margin_pre: float = 0.05
    min_margin_post: float = 0.05
    min_margin_ft: float = 0.05
    min_stopped: float = 0.8
    min_kept_post: float = 0.5
    min_kept_ft: float = 0.25
    min_forgetting: float = 0.02
    max_forgetting: float = 0.9

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"envelope.{f.name}", f"expected a finite number, got {v!r}")
        for name in ("min_stopped", "min_forgetting", "max_forgetting"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"envelope.{name}", f"must lie in [0, 1], got {getattr(self, name)!r}")
        if self.min_forgetting >= self.max_forgetting:
            raise ConfigError("envelope.max_forgetting",
                              f"must exceed min_forgetting ({self.min_forgetting:g}), got {self.max_forgetting:g}")
        for name in ("min_margin_pre", "min_margin_post", "min_margin_ft"):
            if getattr(self, name) < 0:
                raise ConfigError(f"envelope.{name}", f"a margin over the bigram must be >= 0, got {getattr(self, name)!r}")


def load_envelope(path: str | Path = ENVELOPE_FILE) -> Envelope:
    """The thresholds of a committed envelope file: ``thresholds: {name: {value, reason}}``
    (every :class:`Envelope` field, each with a non-empty ``reason``). Bad input raises
    :class:`ConfigError` naming the field."""
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("envelope", f"cannot read {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError("envelope", f"{path} is not YAML: {exc}") from exc
    th = doc.get("thresholds") if isinstance(doc, dict) else None
    if not isinstance(th, dict):
        raise ConfigError("envelope.thresholds", "expected a mapping of threshold name -> {value, reason}")
    names = [f.name for f in dataclasses.fields(Envelope)]
    for k in th:
        if k not in names:
            raise ConfigError(f"envelope.thresholds.{k}", f"unknown threshold; allowed: {names}")
    vals = {}
    for k in names:
        e = th.get(k)
        if not isinstance(e, dict) or "value" not in e:
            raise ConfigError(f"envelope.thresholds.{k}", "missing (expected {value, reason})")
        if not isinstance(e.get("reason"), str) or not e["reason"].strip():
            raise ConfigError(f"envelope.thresholds.{k}.reason", "every threshold needs its reason")
        vals[k] = e["value"]
        if isinstance(vals[k], bool) or not isinstance(vals[k], (int, float)):
            raise ConfigError(f"envelope.thresholds.{k}.value", f"expected a number, got {vals[k]!r}")
    try:
        return Envelope(**{k: float(v) for k, v in vals.items()})
    except ConfigError as exc:  # name the file's field
        raise ConfigError(exc.field.replace("envelope.", "envelope.thresholds.", 1) + ".value", exc.message) from exc


def default_envelope() -> Envelope:
    """The frozen envelope (``configs/envelope.yaml``; the :class:`Envelope` defaults when the
    file is not shipped, which equal it)."""
    return load_envelope() if ENVELOPE_FILE.is_file() else Envelope()


CRITERIA = {
    "learned_pre": "theta_pre beats the bigram on D_pre by >= {min_margin_pre:g} nats",
    "learned_post": "theta_post beats the bigram on D_post by >= {min_margin_post:g} nats",
    "learned_ft": "theta_ft beats the bigram on D_ft by >= {min_margin_ft:g} nats",
    "converged": "early stopping in >= {min_stopped:.0%} of post-training runs",
    "kept_post": "pretraining gain over the bigram kept after post-training >= {min_kept_post:g}",
    "kept_ft": "pretraining gain over the bigram kept after fine-tuning >= {min_kept_ft:g}",
    "partial": "forgetting fraction at the gentlest ft lr in ({min_forgetting:g}, {max_forgetting:g})",
}


def _median(s: pd.Series) -> float:
    s = pd.to_numeric(s, errors="coerce").dropna()
    return float(s.median()) if len(s) else float("nan")


def judge_arm(rows: pd.DataFrame, env: Envelope) -> dict[str, Any]:
    """Medians of one arm's runs and the criteria it fails (NaN figures fail)."""
    rows = rows.loc[~rows["diverged"].astype(bool)]
    gentle = rows.loc[rows["ft_lr"] == rows["ft_lr"].min()] if len(rows) else rows
    stopped = rows.loc[~rows["compute_matched"].astype(bool)].drop_duplicates("upstream_id")["stopped_early"]
    stopped = stopped.dropna().astype(bool)
    ups = rows.drop_duplicates("upstream_id")
    fig = {"runs": int(len(rows)), "seeds": int(rows["seed"].nunique()) if len(rows) else 0,
           "tokens_per_param": _median(rows["tokens_per_param"]),
           "L_pre_pre_over_lnV": _median(ups["L_pre_pre_over_lnV"]) if "L_pre_pre_over_lnV" in rows else math.nan,
           "margin_pre": _median(ups["margin_pre"]) if "margin_pre" in rows else math.nan,
           "margin_post": _median(ups["margin_post"]) if "margin_post" in rows else math.nan,
           "margin_ft": _median(rows["margin_ft"]) if "margin_ft" in rows else math.nan,
           "stopped_share": float(stopped.mean()) if len(stopped) else float("nan"),
           "kept_post": _median(rows.drop_duplicates("upstream_id")["kept_post"]),
           "kept_ft": _median(rows["kept_ft"]), "forgetting_gentlest": _median(gentle["forgetting"]),
           "L_im": _median(rows.drop_duplicates("upstream_id")["L_im"]),
           "ret_minus_im_gentlest": _median(gentle["ret_minus_im"])}
    ok = {
        "learned_pre": fig["margin_pre"] >= env.min_margin_pre,
        "learned_post": fig["margin_post"] >= env.min_margin_post,
        "learned_ft": fig["margin_ft"] >= env.min_margin_ft,
        # compute-matched arms are one pass by design: no early stopping to ask for
        "converged": not len(stopped) or fig["stopped_share"] >= env.min_stopped,
        "kept_post": fig["kept_post"] >= env.min_kept_post,
        "kept_ft": fig["kept_ft"] >= env.min_kept_ft,
        "partial": env.min_forgetting < fig["forgetting_gentlest"] < env.max_forgetting,
    }
    failed = [k for k, v in ok.items() if not v]
    return {**fig, "inside": not failed, "failed": failed}


def judge_run_set(table: pd.DataFrame, env: Envelope) -> dict[str, Any]:
    """Every arm of one run set (one pipeline of one preset), compute-matched arms apart."""
    arms = {}
    for (method, cm), g in table.groupby(["method", "compute_matched"], sort=True):
        arms[f"{method}{' (compute-matched)' if cm else ''}"] = judge_arm(g, env)
    failed = sorted({f"{name}: {c}" for name, a in arms.items() for c in a["failed"]})
    return {"inside": bool(arms) and not failed, "failed": failed, "arms": arms}


def regime_report(results: Path, env: Envelope | None = None) -> dict[str, Any]:
    """{preset: {pipeline: run-set verdict}} for ``results/lm/<preset>/`` (``regime.csv`` when
    present and carrying the bigram margins, else read from the run directories), with the envelope used; damaged run
    directories are left out and listed under ``skipped_damaged`` ({preset: ["<dir>: <why>"]})."""
    from paper_checks.lm_regime import regime_table

    env = env or default_envelope()
    out: dict[str, Any] = {"envelope": asdict(env), "criteria": {k: v.format(**asdict(env)) for k, v in CRITERIA.items()},
                           "presets": {}}
    for pdir in (t.out for t in ResultsRoot(results).lm_trees()):
        csv = RunTree(pdir).regime
        try:
            table = pd.read_csv(csv) if csv.is_file() else None
            if table is None or not {"margin_pre", "margin_post", "margin_ft"} <= set(table.columns):
                table = regime_table(pdir)  # absent, or written before the bigram margins: rebuild
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            out["presets"][pdir.name] = {"error": f"regime table unreadable: {exc}"}
            continue
        if table.attrs.get("skipped"):  # damaged run directories, left out of the table
            out.setdefault("skipped_damaged", {})[pdir.name] = list(table.attrs["skipped"])
        sets = {pipe: judge_run_set(g, env) for pipe, g in table.groupby("pipeline")} if len(table) else {}
        if _calibration_run_set(pdir):  # losses on validation: a knob search's, never judged
            for v in sets.values():
                for a in v["arms"].values():
                    a["failed"].append(CALIBRATION)
                    a["inside"] = False
                v["failed"] = sorted({*v["failed"], CALIBRATION})
                v["inside"] = False
        out["presets"][pdir.name] = sets
    return out


#: why every arm of a calibration run set (``eval.report_split: val``) is outside the envelope
CALIBRATION = "calibration run set (eval.report_split: val, losses on validation)"


def _calibration_run_set(pdir: Path) -> bool:
    """Whether ``pdir``'s manifest config measured its recorded losses on validation."""
    man, _ = read_json(RunTree(pdir).manifest)
    ev = ((man.get("config") or {}).get("eval") or {}) if isinstance(man, dict) else {}
    return isinstance(ev, dict) and ev.get("report_split") == "val"


def check_arms(c: dict[str, Any]) -> list[str] | None:
    """The arms (regime-table names) an LM check reads; None = every arm of its run set."""
    d, key = c.get("data") or {}, c.get("analogue") or ""
    if "baseline" in d and "candidate" in d:
        return [d["baseline"], d["candidate"]]
    if key in ("b.sec41", "b.matched_im"):
        return ["unmixed", "mixed"]
    if key.split(".")[0] in ("c1", "c2", "c3"):  # (c) as three checks: the compute-matched base arms
        return ["unmixed (compute-matched)", "mixed (compute-matched)"]
    return None


def gate_checks(checks: list[dict[str, Any]], regime: dict[str, Any]) -> None:
    """In place: an LM check whose arms are outside the envelope (or without regime data)
    becomes INCONCLUSIVE, its earlier status and evidence kept in ``data["regime"]``."""
    for c in checks:
        if c["side"] != "lm" or not c["id"].startswith("lm.") or c["id"].count(".") < 2:
            continue
        preset = c["id"].split(".")[1]
        sets = regime["presets"].get(preset)
        verdict = None if not isinstance(sets, dict) else sets.get(c.get("pipeline"))
        if verdict is None:
            why = ["no regime data (run directories missing)"]
        else:
            arms = check_arms(c)
            why = [f"{name}: {crit}" for name, a in verdict["arms"].items()
                   if arms is None or name in arms for crit in a["failed"]]
        c["data"]["regime"] = {"inside": not why, "failed": why, "status_before": c["status"]}
        if why and not c["evidence"].startswith("no data"):
            c["data"]["regime"]["evidence_before"] = c["evidence"]
            c["status"] = "INCONCLUSIVE"
            c["evidence"] = f"outside the paper's regime ({'; '.join(why)}): {c['evidence']}"


def regime_markdown(regime: dict[str, Any]) -> list[str]:
    """Lines of the report's regime section: the envelope and one row per arm."""
    lines = ["", "## Regime: is each LM run set inside the testbed's envelope?", "",
             "Envelope (configs/envelope.yaml): " + "; ".join(f"{k}: {v}" for k, v in regime["criteria"].items())
             + ".", "",
             "| preset | pipeline | arm | runs | seeds | tokens/param | beats bigram: pre / post / ft | stopped early "
             "| kept after post | kept after ft | forgetting (gentlest lr) | inside |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(x: Any) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else (
            f"{x:.3g}" if isinstance(x, float) else str(x))

    for preset, sets in regime["presets"].items():
        if "error" in sets:
            lines.append(f"| {preset} | - | - | {sets['error']} |")
            continue
        for pipe, rs in sets.items():
            for arm, a in rs["arms"].items():
                lines.append(f"| {preset} | {pipe} | {arm} | {a['runs']} | {a['seeds']} | {f(a['tokens_per_param'])} | "
                             f"{f(a.get('margin_pre'))} / {f(a.get('margin_post'))} / {f(a.get('margin_ft'))} | {f(a['stopped_share'])} | {f(a['kept_post'])} | "
                             f"{f(a['kept_ft'])} | {f(a['forgetting_gentlest'])} | "
                             f"{'yes' if a['inside'] else 'no: ' + ', '.join(a['failed'])} |")
    for preset, skipped in (regime.get("skipped_damaged") or {}).items():
        lines += ["", f"Damaged runs left out of the regime table of {preset}: " + "; ".join(skipped)]
    return lines
