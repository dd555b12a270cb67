"""Theory configs: renamed keys fail naming the new key, YAML 1.2 numbers, section-relative paths.

References: the exact messages the user should see (``OLD: renamed to NEW``; the field's path
where its section is mounted, named once), and 0.01 written as the YAML 1.2 float ``1e-2``.
"""

from __future__ import annotations

import json

import pytest
import yaml

from early_exposure.configs import from_dict, to_dict
from early_exposure.errors import ConfigError
from linear_theory import default_config, load_config
from linear_theory.cli import main
from linear_theory.config import PreConfig, StagesConfig
from linear_theory.studies.compute_matched import ComputeMatchedConfig, Sec41Config, load_cm_config
from linear_theory.studies.frontier import FrontierConfig, PostGrid, load_frontier_config
from linear_theory.sweep.grid import apply_values, parse_grid


def _default_dict() -> dict:
    return to_dict(default_config())


def _cli_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# --------------------------------------------------------------------------- renamed keys
def test_old_alpha_key_in_a_config_file_names_the_new_key(tmp_path):
    d = _default_dict()
    pre = d["stages"]["pre"]
    pre["alpha"] = pre.pop("mix_fraction")
    p = tmp_path / "old.yaml"
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert str(exc.value) == "stages.pre.alpha: renamed to stages.pre.mix_fraction"


def test_old_alpha_key_on_the_command_line_names_the_new_key(tmp_path, capsys):
    out = tmp_path / "o"
    err = _cli_error(capsys, ["run", "--out", str(out), "--set", "stages.pre.alpha=0.25"])
    assert "stages.pre.alpha: renamed to stages.pre.mix_fraction" in err
    for grid in ("alpha=0:1:3", "pre.alpha=0:1:3", "stages.pre.alpha=0,1"):
        err = _cli_error(capsys, ["sweep", "--out", str(out), "--grid", grid, "--grid", "beta=1,2"])
        assert "renamed to mix_fraction (stages.pre.mix_fraction)" in err, err
    assert not out.exists()
    with pytest.raises(ConfigError, match="renamed to stages.pre.mix_fraction"):
        default_config().replace(["stages.pre.alpha=0.5"])
    # the new spelling works in all three places
    assert default_config().replace(["stages.pre.mix_fraction=0.25"]).stages.pre.mix_fraction == 0.25
    assert [a.path for a in parse_grid(["mix_fraction=0:1:3"], default_config())] == ["stages.pre.mix_fraction"]


def test_old_study_keys_name_the_new_keys(tmp_path, capsys):
    fr = tmp_path / "fr.yaml"
    fr.write_text("mixed_alpha: [0.5]\n")
    with pytest.raises(ConfigError) as exc:
        load_frontier_config(fr)
    assert str(exc.value) == "mixed_alpha: renamed to mix_fraction"
    cm = tmp_path / "cm.yaml"
    cm.write_text("lambdas: [0.0, 1.0]\n")
    with pytest.raises(ConfigError) as exc:
        load_cm_config(cm)
    assert str(exc.value) == "lambdas: renamed to mix_fraction"
    cm.write_text("sec41: {lambdas: [0.0, 1.0]}\n")
    with pytest.raises(ConfigError) as exc:
        load_cm_config(cm)
    assert str(exc.value) == "sec41.lambdas: renamed to sec41.mix_fraction"
    out = tmp_path / "o"
    assert "mixed_alpha: renamed to mix_fraction" in _cli_error(
        capsys, ["frontier", "--out", str(out), "--set", "mixed_alpha=[0.5]"])
    # a study's base overrides are SimConfig overrides: the old key is refused there too
    assert "stages.pre.alpha: renamed to stages.pre.mix_fraction" in _cli_error(
        capsys, ["frontier", "--out", str(out), "--set", "set=[stages.pre.alpha=0.5]"])
    assert not out.exists()


# --------------------------------------------------------------------------- YAML 1.2 numbers
def test_yaml_exponent_floats_are_numbers_in_every_theory_config(tmp_path):
    d = _default_dict()
    p = tmp_path / "sim.yaml"
    text = yaml.safe_dump(d).replace("lr: 0.01", "lr: 1e-2")
    assert text.count("lr: 1e-2") == 3
    p.write_text(text)
    cfg = load_config(p)
    assert cfg.stages.pre.lr == cfg.stages.post.lr == cfg.stages.ft.lr == 0.01
    assert cfg == default_config()
    assert load_config(None, ["stages.pre.lr=1e-2"]).stages.pre.lr == 0.01
    fr = tmp_path / "fr.yaml"
    fr.write_text("set: [stages.pre.lr=2e-2]\npost: {steps: [10], lr: [1e-2, 2E-2], reg: [0.0]}\n"
                  "ft: {lr: [5e-3], steps: [10]}\nreplay: 1e-2\n")
    fc = load_frontier_config(fr)
    assert fc.post.lr == (0.01, 0.02) and fc.ft.lr == (0.005,) and fc.replay == 0.01
    cm = tmp_path / "cm.yaml"
    cm.write_text("pre_pool: 4e2\nmix_fraction: [0.0, 5e-1]\nset: [stages.post.lr=2e-2]\n")
    cmc = load_cm_config(cm)
    assert cmc.pre_pool == 400.0 and cmc.mix_fraction == (0.0, 0.5)
    assert load_cm_config(cm, ["pre_pool=1e3"]).pre_pool == 1000.0
    axes = parse_grid(["post.lr=1e-2,2e-2"], default_config())
    assert axes[0].values == (0.01, 0.02)


def test_yaml_lr_written_1e_2_runs_from_the_command_line(tmp_path):
    d = _default_dict()
    d["stages"] = {"pre": {"mix_fraction": 0.5, "steps": 20, "lr": "LR"}, "post": {"steps": 5, "lr": "LR"},
                   "ft": {"steps": 5, "lr": "LR"}}
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(d).replace("LR", "1e-2"))
    assert main(["run", "--config", str(p), "--out", str(tmp_path / "o")]) == 0
    body = json.loads((tmp_path / "o" / "result.json").read_text())
    assert body["config"]["stages"]["pre"]["lr"] == 0.01 and body["config"]["stages"]["ft"]["lr"] == 0.01


# --------------------------------------------------------------------------- section-relative paths
def test_section_errors_report_the_path_where_the_section_is_mounted(tmp_path, capsys):
    with pytest.raises(ConfigError) as exc:
        from_dict(PreConfig, {"mix_fraction": 2.0}, path="stages.pre")
    assert exc.value.field == "stages.pre.mix_fraction"
    with pytest.raises(ConfigError) as exc:  # the same section mounted elsewhere
        from_dict(StagesConfig, {"pre": {"steps": -1}}, path="stages")
    assert exc.value.field == "stages.pre.steps"
    with pytest.raises(ConfigError) as exc:
        from_dict(PreConfig, {"lr": -1.0}, path="pre")
    assert exc.value.field == "pre.lr"
    with pytest.raises(ConfigError) as exc:  # constructed directly: relative to the section
        PreConfig(mix_fraction=1.5)
    assert exc.value.field == "mix_fraction"
    # through the loaders, each path is named once (not double-prefixed)
    cases = [
        (["run", "--set", "stages.post.dropout=1.0"], "stages.post.dropout: "),
        (["run", "--set", "task.sigma_inv=[1, 2, -3, 4]"], "task.sigma_inv[2]: "),
        (["run", "--set", "model.T=60"], "model.T: "),
        (["frontier", "--set", "post.lr=[0.01, 0.0]"], "post.lr[1]: "),
        (["frontier", "--set", "ft.steps=[]"], "ft.steps: "),
        (["compute-matched", "--set", "sec41.mix_fraction=[0.5, 1.5]"], "sec41.mix_fraction[1]: "),
        (["compute-matched", "--set", "sec41.epochs=0"], "sec41.epochs: "),
        (["sweep", "--grid", "mix_fraction=0:2:3"], "stages.pre.mix_fraction: "),
    ]
    for argv, prefix in cases:
        err = _cli_error(capsys, [*argv[:1], "--out", str(tmp_path / "o"), *argv[1:]])
        assert err.startswith(f"error: {prefix}"), err
        assert err.count(prefix.split("[")[0].rstrip(": ")) == 1, err
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError) as exc:
        apply_values(default_config(), {"stages.post.replay": 2.0})
    assert exc.value.field == "stages.post.replay"
    # study sections constructed directly name their own fields
    for make, field in ((lambda: PostGrid(lr=()), "lr"), (lambda: Sec41Config(mix_fraction=(0.5, 0.5)), "mix_fraction"),
                        (lambda: FrontierConfig(mix_fraction=(0.0,)), "mix_fraction[0]"),
                        (lambda: ComputeMatchedConfig(batch=0), "batch")):
        with pytest.raises(ConfigError) as exc:
            make()
        assert exc.value.field == field
