"""DIST (kdlab.losses.dist) and logit standardization (soft_target's ``standardize``; Sun et al.
2024): float64 loop references, invariances the methods imply, gradients, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdlab.errors import ConfigError
from kdlab.losses import Objective, build_term, check_batch_sizes
from kdlab.losses.dist import (
    DIST,
    dist_loss,
    inter_class_relation,
    intra_class_relation,
    pearson_correlation,
)
from kdlab.losses.response import SoftTarget, standardize_logits
from kdlab.types import Batch, ModelOutput

B, N = 8, 6


def _case(seed: int = 0, b: int = B, n: int = N, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, n, generator=g, dtype=torch.float64) * scale
    v = torch.randn(b, n, generator=g, dtype=torch.float64) * scale
    return z, v, Batch(torch.zeros(b, 1), torch.randint(0, n, (b,), generator=g))


def _run(term, z, v, batch):
    return term(ModelOutput(z), ModelOutput(v), batch)


def _softmax_rows(x, T: float) -> list[list[float]]:
    rows = []
    for row in x.tolist():
        e = [math.exp((a - max(row)) / T) for a in row]
        rows.append([a / sum(e) for a in e])
    return rows


def _pearson(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    va = sum((x - ma) ** 2 for x in a)
    vb = sum((y - mb) ** 2 for y in b)
    return cov / math.sqrt(va * vb)


def ref_dist(z, v, beta: float, gamma: float, T: float) -> float:
    ys, yt = _softmax_rows(z, T), _softmax_rows(v, T)
    b, c = len(ys), len(ys[0])
    inter = sum(1 - _pearson(ys[i], yt[i]) for i in range(b)) / b
    columns = [([ys[i][j] for i in range(b)], [yt[i][j] for i in range(b)]) for j in range(c)]
    intra = sum(1 - _pearson(s, t) for s, t in columns) / c
    return T * T * (beta * inter + gamma * intra)


# -- DIST ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("beta", "gamma", "T"), [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0), (0, 3.0, 2)])
def test_dist_matches_loop_reference(beta, gamma, T):
    z, v, batch = _case(seed=int(T))
    got = _run(DIST(beta=beta, gamma=gamma, temperature=T), z, v, batch).item()
    # eps = 1e-8 on norms of ~0.1–1 moves ρ by < 1e-7 relative
    assert got == pytest.approx(ref_dist(z, v, beta, gamma, T), rel=1e-6)
    exact = dist_loss(z, v, beta=beta, gamma=gamma, temperature=T, eps=1e-300).item()
    assert exact == pytest.approx(ref_dist(z, v, beta, gamma, T), rel=1e-12)


def test_dist_is_zero_for_identical_logits_and_not_otherwise():
    z, v, batch = _case(seed=1)
    assert _run(DIST(), z, z.clone(), batch).item() == pytest.approx(0.0, abs=1e-6)  # eps
    assert dist_loss(z, z.clone(), eps=1e-300).item() == pytest.approx(0.0, abs=1e-12)
    assert _run(DIST(), z, v, batch).item() > 0.1


def test_pearson_ignores_positive_affine_maps_and_flips_sign_for_negative_ones():
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(5, 7, generator=g, dtype=torch.float64), torch.rand(5, 7, generator=g)
    b = b.double()
    scale = torch.rand(5, 1, generator=g, dtype=torch.float64) * 10 + 0.1  # per row, > 0
    shift = torch.randn(5, 1, generator=g, dtype=torch.float64)
    r = pearson_correlation(a, b, eps=0)
    torch.testing.assert_close(pearson_correlation(scale * a + shift, b, eps=0), r)
    torch.testing.assert_close(pearson_correlation(a, -scale * b + shift, eps=0), -r)
    # so inter-class relation accepts a row-wise affine copy of the teacher as perfect …
    y_t = torch.softmax(torch.randn(B, N, generator=g, dtype=torch.float64), 1)
    y_s = 0.3 * y_t + 0.7 / N  # a less confident student: still a distribution
    assert inter_class_relation(y_s, y_t, eps=1e-300).item() == pytest.approx(0.0, abs=1e-12)
    assert (y_s - y_t).abs().max() > 0.01  # although the probabilities differ
    # … but intra-class relation sees per-row rescaling (columns are no longer affine copies)
    rows = torch.linspace(0.2, 1.0, B, dtype=torch.float64).view(-1, 1)
    assert inter_class_relation(rows * y_t, y_t, 1e-300).item() == pytest.approx(0.0, abs=1e-12)
    assert intra_class_relation(rows * y_t, y_t, 1e-300).item() > 1e-3


def test_dist_constant_vectors_give_finite_values_and_gradients():
    z = torch.zeros(B, N, dtype=torch.float64, requires_grad=True)  # uniform: every ρ is 0/0
    _, v, batch = _case(seed=3)
    value = _run(DIST(), z, v, batch)
    value.backward()
    assert value.item() == pytest.approx(2.0)  # β·(1 − 0) + γ·(1 − 0)
    assert torch.isfinite(z.grad).all()


def test_dist_gradient_reaches_only_the_student():
    z, v, batch = _case(seed=4)
    z.requires_grad_(True)
    v.requires_grad_(True)
    _run(DIST(temperature=4.0), z, v, batch).backward()
    assert v.grad is None
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_dist_needs_two_samples_per_batch():
    assert DIST.min_batch == 2
    objective = Objective([DIST()])
    with pytest.raises(ConfigError, match=r"need ≥ 2 samples per batch.*last batch"):
        check_batch_sizes(objective, n_train=129, batch_size=128)
    z, v, batch = _case(b=1)
    with pytest.raises(ConfigError, match="use batch_size ≥ 2"):
        _run(DIST(), z, v, batch)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"beta": -1}, "beta must be a finite number ≥ 0"),
        ({"gamma": float("inf")}, "gamma must be a finite number ≥ 0"),
        ({"beta": 0, "gamma": 0}, "both 0.*set the term's weight to 0"),
        ({"temperature": -2}, "temperature must be a finite number > 0"),
        ({"eps": 0}, "eps must be a finite number > 0"),
    ],
)
def test_dist_bad_parameters_name_the_fix(spec, match):
    with pytest.raises(ConfigError, match=match):
        build_term({"type": "dist", **spec})


def test_dist_mismatched_classes_name_the_fix():
    z, v, batch = _case()
    with pytest.raises(ConfigError, match="must predict the same classes"):
        _run(DIST(), z, v[:, :-1], batch)


# -- logit standardization -------------------------------------------------------------------------


def _z_score_by_hand(x) -> torch.Tensor:
    """(x − mean) / population std, per row, in float64 numpy."""
    a = x.detach().double().numpy()
    centred = a - a.mean(1, keepdims=True)
    return torch.from_numpy(centred / np.sqrt((centred**2).mean(1, keepdims=True)))


def test_standardize_logits_uses_the_population_std():
    z, _, _ = _case(seed=5)
    out = standardize_logits(z)
    torch.testing.assert_close(out, _z_score_by_hand(z), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.square().mean(1), torch.ones(B, dtype=torch.float64))
    assert not torch.allclose(out.std(1), torch.ones(B, dtype=torch.float64))  # not N − 1


@pytest.mark.parametrize(
    "options",
    [{}, {"divergence": "renyi", "alpha": 0.5}, {"divergence": "js", "direction": "reverse"}],
)
def test_standardized_soft_target_equals_plain_on_z_scored_logits(options):
    z, v, batch = _case(seed=6)
    standardized = SoftTarget(temperature=2.0, standardize=True, **options)
    plain = SoftTarget(temperature=2.0, **options)
    by_hand = _run(plain, _z_score_by_hand(z), _z_score_by_hand(v), batch)
    torch.testing.assert_close(_run(standardized, z, v, batch), by_hand, rtol=1e-9, atol=1e-12)
    assert abs(_run(plain, z, v, batch).item() - by_hand.item()) > 1e-3  # it did change things


def _renyi_reference(z, v, T: float, order: float) -> float:
    """T²·mean_b D_α(p‖q) on hand z-scored logits, with explicit loops."""
    p_rows = _softmax_rows(_z_score_by_hand(v), T)
    q_rows = _softmax_rows(_z_score_by_hand(z), T)
    total = 0.0
    for p, q in zip(p_rows, q_rows, strict=True):
        s = sum(pi**order * qi ** (1 - order) for pi, qi in zip(p, q, strict=True))
        total += math.log(s) / (order - 1)
    return T * T * total / len(p_rows)


def test_standardized_renyi_matches_loop_reference():
    z, v, batch = _case(seed=7)
    term = build_term({"type": "soft_target", "temperature": 3.0, "divergence": "renyi",
                       "alpha": 2.0, "standardize": True})  # fmt: skip
    assert _run(term, z, v, batch).item() == pytest.approx(_renyi_reference(z, v, 3.0, 2.0))


@pytest.mark.parametrize("divergence", [{"divergence": "kl"}, {"divergence": "renyi", "alpha": 3}])
def test_standardized_soft_target_ignores_shift_and_scale_of_either_model(divergence):
    z, v, batch = _case(seed=8)
    term = SoftTarget(temperature=2.0, standardize=True, **divergence)
    base = _run(term, z, v, batch).item()
    g = torch.Generator().manual_seed(9)
    scale = torch.rand(B, 1, generator=g, dtype=torch.float64) * 20 + 0.05  # per sample, > 0
    shift = torch.randn(B, 1, generator=g, dtype=torch.float64) * 10
    assert _run(term, scale * z + shift, v, batch).item() == pytest.approx(base, rel=1e-9)
    assert _run(term, z, scale * v - shift, batch).item() == pytest.approx(base, rel=1e-9)
    plain = SoftTarget(temperature=2.0, **divergence)
    assert _run(plain, 3.0 * z, v, batch).item() != pytest.approx(_run(plain, z, v, batch).item())


def test_standardized_soft_target_gradient_reaches_only_the_student():
    z, v, batch = _case(seed=10)
    z.requires_grad_(True)
    v.requires_grad_(True)
    _run(SoftTarget(standardize=True), z, v, batch).backward()
    assert v.grad is None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    # the z-score is shift- and scale-free, so its gradient is orthogonal to 1 and to z − mean z
    centred = z.detach() - z.detach().mean(1, keepdim=True)
    torch.testing.assert_close(z.grad.sum(1), torch.zeros(B, dtype=torch.float64))
    torch.testing.assert_close((z.grad * centred).sum(1), torch.zeros(B, dtype=torch.float64))


def test_standardize_is_off_by_default_and_constant_logits_stay_finite():
    assert SoftTarget().standardize is False
    z = torch.zeros(B, N, dtype=torch.float64, requires_grad=True)
    _, v, batch = _case(seed=11)
    value = _run(SoftTarget(standardize=True), z, v, batch)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(z.grad).all()


def test_dist_standardize_ignores_each_models_logit_scale():
    z, v, batch = _case(seed=12)
    term = DIST(temperature=2.0, standardize=True)
    base = _run(term, z, v, batch).item()
    assert _run(term, 4.0 * z + 1.0, 0.25 * v, batch).item() == pytest.approx(base, rel=1e-9)
    assert _run(DIST(temperature=2.0), 4.0 * z, v, batch).item() != pytest.approx(base)


@pytest.mark.parametrize(("beta", "gamma", "T"), [(1.0, 1.0, 4.0), (2.0, 0.5, 2.0)])
def test_dist_standardize_z_scores_before_the_base_temperature(beta, gamma, T):
    """softmax(z-score(z) / τ): τ survives standardization (z-scoring z / τ would drop it)."""
    z, v, batch = _case(seed=13)
    zs, vs = _z_score_by_hand(z), _z_score_by_hand(v)
    got = _run(DIST(beta=beta, gamma=gamma, temperature=T, standardize=True), z, v, batch)
    plain = _run(DIST(beta=beta, gamma=gamma, temperature=T), zs, vs, batch)
    torch.testing.assert_close(got, plain, rtol=1e-9, atol=1e-12)
    expected = ref_dist(zs, vs, beta, gamma, T)
    assert got.item() == pytest.approx(expected, rel=1e-6)  # eps = 1e-8, as above
    exact = dist_loss(z, v, beta=beta, gamma=gamma, temperature=T, standardize=True, eps=1e-300)
    assert exact.item() == pytest.approx(expected, rel=1e-12)
    assert _run(DIST(beta=beta, gamma=gamma, temperature=T), z, v, batch).item() != pytest.approx(
        expected, rel=1e-3
    )
