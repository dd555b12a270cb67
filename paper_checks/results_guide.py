"""``RESULTS/README.md``: a guide to a results tree, generated from what is in it.

``python -m paper_checks reproduce`` writes it at the end of every run (:func:`write_results_guide`).
It describes every top-level entry of the tree, every theory study, every LM preset's
directory (its tables, ``checkpoints.csv``, manifests, locks, run directories by stage) and
how to read one run directory, from the layout :class:`early_exposure.runs.ResultsRoot` /
:class:`~early_exposure.runs.RunTree` spell out. Every path it names is a Markdown link to
something that exists (placeholders such as ``<preset>`` are code, not links).

    python -m paper_checks.results_guide RESULTS     # (re)write RESULTS/README.md
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from early_exposure.io import atomic_write_text
from early_exposure.runs import RECORD, STAGE_DIRS, ResultsRoot, RunTree

GUIDE = "README.md"

#: the theory studies of ``RESULTS/theory/`` (linear_theory commands)
THEORY = {
    "verify": "theorems and assumptions of Appendix C checked by simulation (`theorems.json`, "
              "`assumptions.json`; `linear_theory verify` / `assumptions`)",
    "trajectories": "one unmixed and one mixed run of the three stages with their loss trajectories "
                    "(`result.json`, `trajectory.csv` per arm)",
    "sweep": "the (lambda, beta) grid: `sweep.parquet` / `sweep.csv`, heatmaps, `chunks/` of the resumable sweep",
    "frontier": "the theory's frontier table (`frontier.csv`, the same schema as an LM preset's)",
    "compute_matched": "the compute-matched study (Sec. 4.2): `frontier.csv`, `compute_matched.csv` and its figure",
    "latent": "the latent-bottleneck study beyond the paper (`latent.json`)",
    "matched": "retention at matched L_im along stage-2 trajectories (`matched.csv`)",
    "whatwhere": "what fine-tuning forgets and where (modes, overlap, rollback tables; `whatwhere.json`)",
}


def _lm_entries(tree: RunTree) -> dict[str, str]:
    """File / directory name in an LM results directory -> what it is (from :class:`RunTree`)."""
    top = {k: v.split("/")[0] for k, v in STAGE_DIRS.items()}
    return {
        tree.manifest.name: "the sweep's resolved config, plan, status (done / diverged / failed per stage), data "
                            "summary and provenance",
        tree.frontier.name: "the frontier table: one row per fine-tuning run (lambda, method, setting, seed, ft lr, "
                            "L_im, L_ret, L_ft, L_pre); written once every run finished",
        tree.frontier.name + ".manifest.json": "size and SHA-256 of `frontier.csv` (integrity record)",
        tree.frontier_partial.name: "the frontier so far, while the sweep runs or when some runs failed",
        tree.frontier_partial.name + ".manifest.json": "integrity record of `frontier.partial.csv`",
        tree.matched.name: "the matched-L_im table: L_ret after fine-tuning each saved stage-2 checkpoint",
        tree.matched.name + ".manifest.json": "integrity record of `matched.csv`",
        tree.checkpoint_index.name: "**start here to find a run**: one row per run directory mapping its hash to "
                                    "stage, lambda (`mix_fraction`), seed, post-training setting, compute-matching, "
                                    "ft lr, upstream ids, losses and saved model (rebuild: `python -m "
                                    "lm_experiments.engine.checkpoints --results <dir>`)",
        tree.regime.name: "regime diagnostics of every fine-tuning run (`python -m paper_checks.lm_regime`)",
        tree.baselines.name: "n-gram baselines of the data (beside the regime table)",
        tree.whatwhere.name: "the what / where analysis: forgotten items and layer rollback "
                             "(`python -m lm_experiments.analysis.whatwhere`)",
        top["pre"]: "theta_pre and theta_post: `pre-<pre_id>/` (pretraining) and `post-<upstream_id>/` "
                    "(post-training) run directories",
        top["ft"]: "one directory per fine-tuning run: `runs/<run_id>/`",
        top["traj"]: "the matched-L_im study: fine-tuned stage-2 checkpoints, `trajectory/<traj_id>/step-NNNNNN/`",
        ".locks": "one lock file per unit of work (`<stage>-<id>.lock`): held while a process runs it; "
                  "stale locks are harmless",
        tree.units.name: "scratch of multi-process units (spec and outcome files; safe to delete when no sweep runs)",
    }


def _link(root: Path, p: Path, text: str | None = None) -> str:
    rel = Path(os.path.relpath(p, root)).as_posix()
    return f"[{text or rel}]({rel}{'/' if p.is_dir() else ''})"


def _top_level(root: Path, r: ResultsRoot) -> dict[str, str]:
    return {
        GUIDE: "this guide (rewritten by every run of `python -m paper_checks reproduce`)",
        r.report.name: "the verdicts: `report.md` (claim x side matrix, key figures, every verdict with its "
                       "evidence), `verdicts.csv` (one row per verdict), `report.json` (everything)",
        r.figures.name: "the figures (PNG and PDF" + ("; `figures.json` lists them)" if (r.figures / "figures.json")
                                                     .is_file() else ")"),
        r.theory_root.name: "the linear-theory studies (below)",
        r.lm_root.name: "one LM results directory per preset, `lm/<preset>/` (below)",
        r.logs.name: "one log per step of the main job (`NN_<step>.log`: its command line and output)",
        r.state.name: "the main job's record: every step's command, status, wall time and log; a rerun skips "
                      "finished steps",
    }


def _dir_summary(d: Path, limit: int = 12) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in d.iterdir())
    return ", ".join(f"`{n}`" for n in names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _run_dir_section(root: Path, tree: RunTree) -> list[str]:
    """How to read a run directory, with one real example of each stage present."""
    lines = ["### Reading a run directory", "",
             f"Every run directory ends with `{RECORD}`, written last and atomically: the run's record (ids, seed, "
             "lambda, setting, losses, training summary, provenance) with `integrity`, the size and SHA-256 of "
             "every other file of the directory. A directory without it is unfinished (rerunning the sweep resumes "
             "it from `train_state/`); one whose files do not match is reported as damaged and redone.", "",
             "- `model/`: the saved model, loadable with `AutoModelForCausalLM.from_pretrained`: `config.json`, "
             "`model.safetensors`, the tokenizer, `generation_config.json`, `extra.json` (the lineage) and "
             "`README.md`, a model card whose YAML front matter holds the lineage (`early_exposure:`) and Hub "
             "metadata (`license`, `datasets`, `base_model`: the upstream model relative to the preset's directory)",
             "- `eval.npz` (fine-tuning runs) / `eval_post.npz` (post-training runs): per-block losses and "
             "top-1 correctness on the held-out sets",
             "- `trajectory/step-NNNNNN/` (post-training runs of the matched study): the stage-2 checkpoints; "
             "`trajectory/<traj_id>/step-NNNNNN/result.json`: their fine-tuning", ""]
    for stage in ("pre", "post", "ft", "traj"):
        dirs = tree.run_dirs(stage)
        if dirs:
            lines.append(f"- example `{stage}` run: {_link(root, dirs[0])}: {_dir_summary(dirs[0])}")
    return lines + [""]


def results_guide(results: str | os.PathLike[str]) -> str:
    """The guide's Markdown for the results tree at ``results``."""
    root = Path(results)
    r = ResultsRoot(root)
    top = _top_level(root, r)
    lines = ["# Results", "",
             "What `python -m paper_checks reproduce` wrote here, generated from this directory's contents. "
             "Start with the report; to find the run behind a number, use a preset's `checkpoints.csv`.", ""]
    start = [p for p in (r.report / "report.md", r.report / "verdicts.csv", r.figures, r.state) if p.exists()]
    if start:
        lines += ["## Start here", ""] + [f"- {_link(root, p)}" for p in start] + [""]
    lines += ["## What is here", "", "| entry | what it is |", "|---|---|"]
    for p in sorted(root.iterdir()):
        what = top.get(p.name, "not written by the main job (kept as it is)")
        lines.append(f"| {_link(root, p)} | {what} |")
    lines.append("")
    if r.report.is_dir():
        lines += ["## Report", ""] + [f"- {_link(root, p)}" for p in sorted(r.report.iterdir())] + [""]
    if r.figures.is_dir():
        pngs = sorted(r.figures.glob("*.png"))
        lines += ["## Figures", "", f"{len(pngs)} figures (each as PNG and PDF)"
                  + (f"; {_link(root, r.figures / 'figures.json')} lists them" if (r.figures / "figures.json").is_file()
                     else "") + ":", ""]
        lines += [f"- {_link(root, p)}" for p in pngs] + [""]
    if r.theory_root.is_dir():
        lines += ["## Theory (`theory/<study>/`)", ""]
        for d in sorted(p for p in r.theory_root.iterdir()):
            lines.append(f"- {_link(root, d)}: {THEORY.get(d.name, 'a theory output')}"
                         + (f"; holds {_dir_summary(d)}" if d.is_dir() else ""))
        lines.append("")
    lm_dirs = sorted(p for p in r.lm_root.glob("*") if p.is_dir())
    for d in lm_dirs:
        tree = RunTree(d)
        known = _lm_entries(tree)
        lines += [f"## LM preset `{d.name}` ({_link(root, d)})", "", "| entry | what it is |", "|---|---|"]
        counts = {s: len(tree.run_dirs(s)) for s in STAGE_DIRS}
        for p in sorted(d.iterdir()):
            what = known.get(p.name, "not written by the pipeline (kept as it is)")
            if p.name == STAGE_DIRS["pre"].split("/")[0]:
                what += f" ({counts['pre']} pretraining, {counts['post']} post-training runs)"
            elif p.name == STAGE_DIRS["ft"].split("/")[0]:
                what += f" ({counts['ft']} runs)"
            elif p.name == STAGE_DIRS["traj"].split("/")[0]:
                what += f" ({counts['traj']} runs)"
            elif p.name == ".locks":
                what += f" ({sum(1 for _ in p.glob('*.lock'))} locks)"
            lines.append(f"| {_link(root, p)} | {what} |")
        lines.append("")
        if not tree.checkpoint_index.is_file():
            lines += [f"No `{tree.checkpoint_index.name}` yet: `python -m lm_experiments.engine.checkpoints "
                      f"--results {Path(os.path.relpath(d, root)).as_posix()}` (from this directory) writes it.", ""]
        lines += _run_dir_section(root, tree)
    if r.logs.is_dir():
        lines += ["## Logs", ""] + [f"- {_link(root, p)}" for p in sorted(r.logs.iterdir())] + [""]
    return "\n".join(lines)


def write_results_guide(results: str | os.PathLike[str]) -> Path:
    """Write ``RESULTS/README.md`` (atomically) and return its path."""
    root = Path(results)
    # the guide describes itself: make it an entry before listing the tree
    p = root / GUIDE
    if not p.exists():
        atomic_write_text(p, "")
    return atomic_write_text(p, results_guide(root))


def main(argv: list[str] | None = None) -> int:
    """``python -m paper_checks.results_guide --results RESULTS``: (re)write ``RESULTS/README.md``."""
    from early_exposure.cliopts import add_version
    from early_exposure.errors import Parser

    ap = Parser(prog="python -m paper_checks.results_guide",
                description="(re)write RESULTS/README.md: what every file of a results tree is")
    add_version(ap)
    ap.add_argument("--results", required=True, metavar="DIR", help="an existing results directory (the main job's --out)")
    args = ap.parse_args(argv)
    if not Path(args.results).is_dir():
        print(f"error: --results: {args.results} is not a directory; give the main job's --out directory",
              file=sys.stderr)
        return 2
    print(write_results_guide(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["GUIDE", "THEORY", "results_guide", "write_results_guide", "main"]
