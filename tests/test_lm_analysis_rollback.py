"""Where (lm_experiments.analysis.whatwhere_rollback): rollback of every layer is theta_post, of none
theta_ft, exactly; a single unit restores only its own tensors; update overlaps are 1 for
identical updates, 0 for orthogonal ones and cos^2 of a known angle in between."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from lm_experiments.engine.evaluate import evaluate
from lm_experiments.analysis.whatwhere_rollback import (depth_order, rollback_profile, rollback_units, rolled_back,
                                               subspace_overlap, update_cosine, update_geometry)
from tests.lm_tiny import T, V, tiny_model


def _perturbed(model: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return out


def _blocks(seed: int = 0, n: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, V, size=(n, T))


def _loss(model) -> tuple[float, np.ndarray]:
    r = evaluate(model, _blocks(), batch_size=4, device=torch.device("cpu"), shard=False)
    return r.mean_loss, r.per_example


def test_rollback_all_is_theta_post_and_none_is_theta_ft_exactly():
    theta_post = tiny_model(seed=0)
    theta_ft = _perturbed(theta_post, 1)
    units = rollback_units(theta_ft)
    assert {"none", "all", "embeddings", "layers.0", "layers.1", "final_norm"} <= set(units)
    prof = rollback_profile(theta_post, theta_ft, lambda m: {"loss": _loss(m)}, units)
    l_post, pe_post = _loss(theta_post)
    l_ft, pe_ft = _loss(theta_ft)
    assert l_post != l_ft
    assert prof["all"]["loss"][0] == l_post and np.array_equal(prof["all"]["loss"][1], pe_post)
    assert prof["none"]["loss"][0] == l_ft and np.array_equal(prof["none"]["loss"][1], pe_ft)
    # every single-depth unit together is every parameter: rolled back jointly, theta_post again
    names = [n for u in depth_order(units) for n in units[u]]
    assert sorted(names) == sorted(units["all"])
    joint = rolled_back(theta_ft, theta_post, names)
    assert _loss(joint)[0] == l_post
    # the profile leaves theta_ft itself untouched
    assert _loss(theta_ft)[0] == l_ft


def test_rollback_of_one_layer_restores_exactly_its_tensors():
    theta_post = tiny_model(seed=0)
    theta_ft = _perturbed(theta_post, 2)
    units = rollback_units(theta_ft)
    m = rolled_back(theta_ft, theta_post, units["layers.0"])
    post, ft = dict(theta_post.named_parameters()), dict(theta_ft.named_parameters())
    for n, p in m.named_parameters():
        expect = post[n] if ".layers.0." in n else ft[n]
        assert torch.equal(p, expect), n
    # a unit with the parameter set of an earlier one is listed once: top.1 is layers.1
    assert "top.1" not in units and "bottom.1" not in units
    assert set(units["bottom.2"]) == set(units["layers.0"] + units["layers.1"])
    assert set(units["layers.0"]) == set(units["layers.0.attention"] + units["layers.0.mlp"] + units["layers.0.norm"])


def test_update_cosine_identical_orthogonal_and_known_angle():
    rng = np.random.default_rng(0)
    a = [torch.from_numpy(rng.standard_normal((4, 3))), torch.from_numpy(rng.standard_normal(5))]
    assert update_cosine(a, [x.clone() for x in a]) == pytest.approx(1.0, abs=1e-12)
    assert update_cosine(a, [-x for x in a]) == pytest.approx(-1.0, abs=1e-12)
    e = torch.eye(4, dtype=torch.float64)
    assert update_cosine(e[0], e[1]) == 0.0
    th = 0.3
    assert update_cosine(e[0], math.cos(th) * e[0] + math.sin(th) * e[1]) == pytest.approx(math.cos(th))


def test_subspace_overlap_identical_orthogonal_and_known_angle():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((7, 5))
    same = subspace_overlap(a, a.copy(), k=3)
    assert same["left"] == pytest.approx(1.0, abs=1e-10) and same["right"] == pytest.approx(1.0, abs=1e-10)
    assert np.allclose(same["cos_left"], 1.0)
    e = np.eye(6)
    b1 = np.outer(e[0], e[0]) + 2 * np.outer(e[1], e[1])     # rank 2 on coordinates {0, 1}
    b2 = np.outer(e[2], e[2]) + 3 * np.outer(e[3], e[3])     # rank 2 on coordinates {2, 3}
    orth = subspace_overlap(b1, b2, k=2)
    assert orth["left"] == pytest.approx(0.0, abs=1e-12) and orth["right"] == pytest.approx(0.0, abs=1e-12)
    assert orth["k"] == 2
    # column spaces at angle th, same row space: cos^2(th) on the left, 1 on the right
    th = 0.4
    u = math.cos(th) * e[0] + math.sin(th) * e[1]
    ang = subspace_overlap(np.outer(e[0], e[4]), np.outer(u, e[4]), k=4)
    assert ang["k"] == 1   # capped by the rank
    assert ang["left"] == pytest.approx(math.cos(th) ** 2, abs=1e-12)
    assert ang["right"] == pytest.approx(1.0, abs=1e-12)
    zero = subspace_overlap(np.zeros((3, 3)), a[:3, :3])
    assert zero["k"] == 0 and math.isnan(zero["left"])


def test_update_geometry_of_repeated_and_opposite_updates():
    pre = tiny_model(seed=0)
    post = _perturbed(pre, 3)
    d = {n: p2.detach() - p0.detach() for (n, p0), (_, p2) in zip(pre.named_parameters(), post.named_parameters())}
    same = copy.deepcopy(post)
    back = copy.deepcopy(post)
    with torch.no_grad():
        for n, p in same.named_parameters():
            p.add_(d[n])          # stage 3 repeats stage 2's update
        for n, p in back.named_parameters():
            p.sub_(d[n])          # stage 3 undoes it
    rows = {r["unit"]: r for r in update_geometry(pre, post, same)}
    for u in ("layers.0", "layers.1", "embeddings", "all"):
        assert rows[u]["cosine"] == pytest.approx(1.0, abs=1e-9)
        assert rows[u]["overlap_left"] == pytest.approx(1.0, abs=1e-6)
        assert rows[u]["overlap_right"] == pytest.approx(1.0, abs=1e-6)
        # relative norms by hand: ||d|| / ||W_pre|| and ||d|| / ||W_post||
    emb_pre = dict(pre.named_parameters())["model.embed_tokens.weight"].detach().double()
    emb_d = d["model.embed_tokens.weight"].double()
    assert rows["embeddings"]["rel_update_post"] == pytest.approx(float(emb_d.norm() / emb_pre.norm()), rel=1e-9)
    rows = {r["unit"]: r for r in update_geometry(pre, post, back)}
    assert rows["all"]["cosine"] == pytest.approx(-1.0, abs=1e-9)
    assert rows["layers.0"]["overlap_left"] == pytest.approx(1.0, abs=1e-6)  # same subspace, opposite sign
