"""Post-training sweep axes and self-contained run units.

- The weight-decay axis (one field of ``PostSetting``) is swept: each value gets its own run,
  its own id and ``post_hparams``, and the run it produces is bitwise the run that sets the
  same value through the other code path, ``post.optim.weight_decay`` without sweeping.
- A run executes in a fresh process given only its record, the resolved config and the
  output directory, and reproduces the in-process run exactly.
- Old config keys are refused with a message naming the new key.
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from early_exposure.errors import ConfigError
from early_exposure.frontier import read_frontier
from lm_experiments.cli import run
from lm_tiny import write_corpora

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SEQ = 16


def _cfg(paths: dict[str, str], post: dict) -> dict:
    return {
        "data": {role: {"source": "local", "name": role, "path": p} for role, p in paths.items()}
        | {"vocab_size": 300, "seq_len": SEQ, "val_tokens": 128, "val_fraction": 0.1, "bpe_sample_chars": 20000},
        "pre": {"tokens": 4 * 4 * SEQ, "batch_size": 4, "mix_fraction": [0.5], "checkpoint_every": 0},
        "post": {"max_epochs": 1, "eval_every_epochs": 1.0, "patience": 1, "post_train_tokens": 12 * SEQ,
                 "checkpoint_every": 0, **post},
        "ft": {"lr": [1.0e-3], "tokens": 2 * 4 * SEQ, "batch_size": 4, "checkpoint_every": 0},
        "eval": {"batch_size": 8}, "seeds": [0], "device": "cpu",
    }


def _run(root: Path, name: str, cfg: dict, cache: Path) -> Path:
    p = root / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    out = root / name
    assert run(["run", "--config", str(p), "--out", str(out), "--cache", str(cache), "--no-progress"]) == 0
    return out


def _post_weights(out: Path, upstream_id: str) -> dict[str, torch.Tensor]:
    return load_file(out / "upstream" / f"post-{upstream_id}" / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("lm_units")
    return {"root": root, "paths": write_corpora(root), "cache": root / "cache"}


def test_weight_decay_axis_is_swept_and_equals_the_optimizer_section_path(tiny: dict) -> None:
    root, paths, cache = tiny["root"], tiny["paths"], tiny["cache"]
    sweep = {"sweep": {"lr": [3.0e-3], "batch_size": [4], "weight_decay": [0.0, 0.5]}}
    out = _run(root, "swept", _cfg(paths, sweep), cache)
    df = read_frontier(out / "frontier.csv")
    hp = [json.loads(h) for h in df["post_hparams"]]
    assert sorted(h["weight_decay"] for h in hp) == [0.0, 0.5]
    assert df["upstream_id"].nunique() == 2 and df["run_id"].is_unique
    by_wd = {h["weight_decay"]: uid for h, uid in zip(hp, df["upstream_id"])}
    for wd, uid in by_wd.items():  # the engine got the axis's value
        rec = json.loads((out / "upstream" / f"post-{uid}" / "result.json").read_text())
        assert rec["train"]["optim"]["weight_decay"] == wd and rec["setting"]["weight_decay"] == wd

    # second code path: no sweep axis, the value in post.optim
    plain = _cfg(paths, {"sweep": {"lr": [3.0e-3], "batch_size": [4]}, "optim": {"weight_decay": 0.5}})
    out2 = _run(root, "plain", plain, cache)
    df2 = read_frontier(out2 / "frontier.csv")
    assert "weight_decay" not in json.loads(df2["post_hparams"].iloc[0])  # not swept: not in the setting
    a, b = _post_weights(out, by_wd[0.5]), _post_weights(out2, df2["upstream_id"].iloc[0])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = _post_weights(out, by_wd[0.0])
    assert any(not torch.equal(a[k], c[k]) for k in a)  # decay 0.5 vs 0 trains differently
    row_a = df.loc[df["upstream_id"] == by_wd[0.5]].iloc[0]
    assert row_a["L_ret"] == df2["L_ret"].iloc[0] and row_a["L_im"] == df2["L_im"].iloc[0]


def _unit_in_fresh_process(stage: str, record, cfg, out: str, cache: str, q) -> None:
    from lm_experiments.runner.unit import run_unit

    torch.set_num_threads(1)
    res = run_unit(stage, record, cfg, Path(out), cache_root=Path(cache))
    q.put((res.diverged, res.losses))


def test_a_run_executes_in_a_fresh_process_from_its_record_alone(tiny: dict) -> None:
    from lm_experiments.config import load_config
    from lm_experiments.data import prepare_data
    from lm_experiments.protocol.plan import make_plan
    from lm_experiments.protocol.prepared import data_sizes

    root, cache = tiny["root"], tiny["cache"]
    out = root / "plain"
    if not (out / "frontier.csv").exists():
        pytest.fail("runs after test_weight_decay_axis_is_swept_and_equals_the_optimizer_section_path")
    cfg = load_config(root / "plain.yaml")
    prepared = prepare_data(cfg.data, cache_root=cache, progress=False)
    plan = make_plan(cfg, data_sizes(prepared), prepared.fingerprint)
    ft = plan.ft[0]
    res_path = out / "runs" / ft.run_id / "result.json"
    before = json.loads(res_path.read_text())
    res_path.unlink()
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_unit_in_fresh_process, args=("ft", ft, cfg, str(out), str(cache), q))
    p.start()
    diverged, losses = q.get(timeout=300)
    p.join(timeout=60)
    assert p.exitcode == 0 and not diverged
    after = json.loads(res_path.read_text())
    for k in ("L_im", "L_ret", "L_ft", "L_pre"):
        assert after["losses"][k] == before["losses"][k] == losses[k]


@pytest.mark.parametrize("key, new", [
    ("stage1", "pre"), ("stage2", "post"), ("stage3", "ft"),
])
def test_old_layout_is_refused_naming_the_new_key(tmp_path: Path, key: str, new: str) -> None:
    from lm_experiments.config import load_config

    p = tmp_path / "old.yaml"
    p.write_text(yaml.safe_dump({"data": {}, key: {"tokens": 10}}))
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert exc.value.field == key and f"now {new}" in exc.value.message
    with pytest.raises(ConfigError) as exc:
        load_config(Path(__file__).resolve().parent.parent / "configs" / "lm" / "cpu-quick.yaml",
                    ["stage2.lr=[1e-3]"])
    assert "post.sweep.lr" in exc.value.message
