"""Shared plumbing: strict configs, atomic writes, stable hashes, frontier schema."""

from dataclasses import dataclass
from typing import Literal

import math

import pandas as pd
import pytest

from early_exposure.configs import apply_overrides, check_range, from_dict, to_dict
from early_exposure.errors import ConfigError
from early_exposure.frontier import FRONTIER_COLUMNS, make_row, read_frontier, write_frontier
from early_exposure.io import atomic_write_figure, atomic_write_json, stable_hash


@dataclass(frozen=True)
class _Inner:
    lr: float = 0.1
    steps: int = 10

    def __post_init__(self) -> None:
        check_range("lr", self.lr, 0, None, lo_open=True)


@dataclass(frozen=True)
class _Outer:
    inner: _Inner = _Inner()
    basis: Literal["identity", "random"] = "identity"
    values: tuple[float, ...] = (1.0, 2.0)
    width: int | None = None


def test_from_dict_roundtrip_and_overrides():
    cfg = from_dict(_Outer, apply_overrides({"inner": {"lr": 0.5}}, ["inner.steps=3", "basis=random", "width=4"]))
    assert cfg == _Outer(_Inner(0.5, 3), "random", (1.0, 2.0), 4)
    assert from_dict(_Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "data, field",
    [
        ({"inner": {"lr": -1.0}}, "inner.lr"),
        ({"inner": {"lr": float("nan")}}, "inner.lr"),
        ({"inner": {"steps": 1.5}}, "inner.steps"),
        ({"inner": {"bogus": 1}}, "inner.bogus"),
        ({"basis": "diagonal"}, "basis"),
        ({"values": ["a"]}, "values[0]"),
        ({"inner": {"steps": True}}, "inner.steps"),
    ],
)
def test_bad_config_names_field(data, field):
    with pytest.raises(ConfigError) as exc:
        from_dict(_Outer, data)
    assert exc.value.field == field


def test_stable_hash_ignores_key_order_and_atomic_write(tmp_path):
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
    p = atomic_write_json(tmp_path / "x" / "r.json", {"v": float("nan")})
    assert p.read_text().strip().endswith("}") and "null" in p.read_text()
    assert [q.name for q in p.parent.iterdir()] == ["r.json"]


def _row(**kw):
    base = dict(side="theory", pipeline="a>b>c", method="mixed+replay", mix_fraction=0.5,
                compute_matched=False, upstream_id="u", post_hparams={"lr": 0.1}, ft_lr=0.1,
                ft_budget=100, seed=0, L_im=1.0, L_ret=2.0, L_ft=3.0, L_pre=4.0,
                diverged=False, run_id="r")
    base.update(kw)
    return make_row(**base)


def test_atomic_write_figure_format_from_suffix_and_no_temp_left(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    png = atomic_write_figure(tmp_path / "sub" / "f.png", fig, dpi=50)
    pdf = atomic_write_figure(tmp_path / "sub" / "f.pdf", fig)
    plt.close(fig)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["f.pdf", "f.png"]


def test_frontier_roundtrip_and_validation(tmp_path):
    rows = [_row(), _row(run_id="r2", diverged=True, L_ret=float("nan"))]
    p = write_frontier(rows, tmp_path / "frontier.csv")
    df = read_frontier(p)
    assert list(df.columns) == list(FRONTIER_COLUMNS)
    assert math.isnan(df.loc[1, "L_ret"]) and bool(df.loc[1, "diverged"])
    with pytest.raises(ValueError, match="method"):
        write_frontier([_row(method="mixed+bogus")], tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="diverged"):
        write_frontier(pd.DataFrame([_row(L_ret=float("nan"))]), tmp_path / "bad2.csv")
    assert not (tmp_path / "bad.csv").exists()


def test_section_checks_are_prefixed_by_where_the_loader_mounts_them():
    @dataclass(frozen=True)
    class _Two:
        a: _Inner = _Inner()
        b: _Inner = _Inner()

    for where in ("a", "b"):
        with pytest.raises(ConfigError) as exc:
            from_dict(_Two, {where: {"lr": 0.0}})
        assert exc.value.field == f"{where}.lr"
    with pytest.raises(ConfigError) as exc:
        from_dict(_Inner, {"lr": -2.0}, path="stages.pre")
    assert exc.value.field == "stages.pre.lr"


def test_required_section_missing_names_it():
    @dataclass(frozen=True)
    class _Req:
        inner: _Inner
        width: int = 1

    with pytest.raises(ConfigError) as exc:
        from_dict(_Req, {"width": 2})
    assert exc.value.field == "inner" and "missing" in exc.value.message


def test_yaml_files_and_overrides_read_numbers_as_yaml_1_2(tmp_path):
    from early_exposure.configs import load_mapping, parse_override

    p = tmp_path / "c.yaml"
    p.write_text("inner: {lr: 1e-2, steps: 3}\nvalues: [2E3, -1.5e-1, .5]\nbasis: random\n")
    m = load_mapping(p)
    assert m["inner"]["lr"] == 0.01 and isinstance(m["inner"]["lr"], float)
    assert m["values"] == [2000.0, -0.15, 0.5] and m["basis"] == "random"
    assert from_dict(_Outer, m).inner.lr == 0.01
    assert parse_override("inner.lr=3e-4") == (["inner", "lr"], 0.0003)
    assert parse_override("basis=1e") == (["basis"], "1e")  # not a number in YAML 1.2 either


def test_seed_streams_integer_tags_are_spawn_children_and_strings_are_stable():
    import numpy as np
    import zlib

    from early_exposure.seeding import int_seed, stream

    for seed in (0, 7, 123456):
        kids = np.random.SeedSequence(seed).spawn(3)
        for i, kid in enumerate(kids):
            np.testing.assert_array_equal(np.random.default_rng(kid).integers(2**40, size=4),
                                          stream(seed, i).integers(2**40, size=4))
        # string tags: CRC32 of the text in the spawn key (written out independently here)
        ref = np.random.SeedSequence(entropy=seed, spawn_key=(zlib.crc32(b"stage2-replay"), zlib.crc32(b"0.5")))
        np.testing.assert_array_equal(np.random.default_rng(ref).integers(2**40, size=4),
                                      stream(seed, "stage2-replay", 0.5).integers(2**40, size=4))
    assert int_seed(1, "a") != int_seed(1, "b") and int_seed(1, "a") == int_seed(1, "a")
