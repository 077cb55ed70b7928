"""Numerical reference tests of kdlab.divergences.

Every value is checked against an independent computation: float64 formulas on probabilities
(numpy), an mpmath evaluation at 50 digits near α = 1, or analytic closed forms; gradients are
checked against closed forms (∂D_α/∂z = q − r_α). Tolerances are stated where they are used.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch

from kdlab.divergences import (
    DIVERGENCES,
    cross_entropy,
    get_divergence,
    js_divergence,
    kl_divergence,
    log_mean_exp,
    renyi_divergence,
    reverse_kl_divergence,
)

INF = math.inf
ALPHAS = [0.1, 0.5, 0.9, 1.5, 2.0, 5.0]
SHAPES = [(1, 2), (3, 5), (64, 100), (2, 3, 7)]
NAMES = ["kl", "reverse_kl", "js", "cross_entropy"]

# float32 inputs (log-softmax taken in float32) against the float64 reference on the same logits.
F32_RTOL, F32_ATOL = 2e-5, 2e-5


# ---------------------------------------------------------------------------------------------
# Independent references (numpy float64, from probabilities; mpmath near α = 1)
# ---------------------------------------------------------------------------------------------


def _logits(shape, seed, scale=2.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _probs(logits) -> np.ndarray:
    """softmax in float64 numpy; -inf logits give exact zeros."""
    x = torch.as_tensor(logits).detach().double().numpy()
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _logp(lp_tensor) -> torch.Tensor:
    return torch.log_softmax(lp_tensor, -1)


def ref_kl(p, q):
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return t.sum(-1)


def ref_ce(p, q):
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, -p * np.log(q), 0.0)
    return t.sum(-1)


def ref_js(p, q):
    m = 0.5 * (p + q)
    return 0.5 * ref_kl(p, m) + 0.5 * ref_kl(q, m)


def ref_renyi(p, q, alpha):
    with np.errstate(divide="ignore", invalid="ignore"):
        if alpha == 0:
            return -np.log(np.where(p > 0, q, 0.0).sum(-1))
        if alpha == 1:
            return ref_kl(p, q)
        if math.isinf(alpha):
            return np.where(p > 0, np.log(p) - np.log(q), -np.inf).max(-1)
        s = np.where(p > 0, p**alpha * q ** (1.0 - alpha), 0.0).sum(-1)
        return np.log(s) / (alpha - 1.0)


REF = {
    "kl": ref_kl,
    "reverse_kl": lambda p, q: ref_kl(q, p),
    "js": ref_js,
    "cross_entropy": ref_ce,
}
FUNCS = {
    "kl": kl_divergence,
    "reverse_kl": reverse_kl_divergence,
    "js": js_divergence,
    "cross_entropy": cross_entropy,
}

mpmath.mp.dps = 50


def mp_renyi(lp: torch.Tensor, lq: torch.Tensor, alpha: float) -> np.ndarray:
    """D_α at 50 digits from the exact (float64-representable) log-probabilities and α."""
    a = mpmath.mpf(float(alpha))
    out = []
    for row_p, row_q in zip(lp.double().tolist(), lq.double().tolist(), strict=True):
        xs = [mpmath.mpf(x) for x in row_p]
        ys = [mpmath.mpf(y) for y in row_q]
        # renormalise in mpmath so rounding of the inputs' normalisation does not matter
        xs = [x - mpmath.log(mpmath.fsum(mpmath.exp(u) for u in xs)) for x in xs]
        ys = [y - mpmath.log(mpmath.fsum(mpmath.exp(u) for u in ys)) for y in ys]
        if a == 1:
            val = mpmath.fsum(mpmath.exp(x) * (x - y) for x, y in zip(xs, ys, strict=True))
        else:
            terms = (mpmath.exp(a * x + (1 - a) * y) for x, y in zip(xs, ys, strict=True))
            val = mpmath.log(mpmath.fsum(terms))
            val = val / (a - 1)
        out.append(float(val))
    return np.array(out)


def _pair(shape, seed, scale=2.0, dtype=torch.float64):
    v = _logits(shape, seed, scale)
    z = _logits(shape, seed + 1000, scale)
    return v, z, _logp(v.to(dtype)), _logp(z.to(dtype))


# ---------------------------------------------------------------------------------------------
# Values against float64 references
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", NAMES)
def test_named_divergence_matches_float64_reference(name, shape):
    v, z, lp, lq = _pair(shape, seed=NAMES.index(name) * 10 + SHAPES.index(shape))
    got = FUNCS[name](lp, lq)
    assert got.shape == shape[:-1]
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), REF[name](_probs(v), _probs(z)), rtol=1e-12, atol=1e-12)
    # get_divergence returns the same function
    np.testing.assert_allclose(get_divergence(name)(lp, lq).numpy(), got.numpy(), rtol=0, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_renyi_matches_float64_reference(alpha, shape):
    v, z, lp, lq = _pair(shape, seed=int(alpha * 10) + len(shape) * 7 + shape[-1])
    got = renyi_divergence(lp, lq, alpha)
    assert got.shape == shape[:-1]
    np.testing.assert_allclose(
        got.numpy(), ref_renyi(_probs(v), _probs(z), alpha), rtol=1e-11, atol=1e-12
    )
    via_name = get_divergence("renyi", alpha)(lp, lq)
    np.testing.assert_allclose(via_name.numpy(), got.numpy(), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(1, 2), (64, 100)])
@pytest.mark.parametrize("which", [*NAMES, *[f"renyi{a}" for a in [0.0, *ALPHAS, 1.0, INF]]])
def test_float32_inputs_agree_with_float64_reference(which, shape):
    """float32 log-softmax inputs: |D32 − D64| ≤ 2e-5 + 2e-5·|D64| (logits ~ N(0, 2²))."""
    v, z, lp, lq = _pair(shape, seed=11, dtype=torch.float32)
    p, q = _probs(v), _probs(z)
    if which.startswith("renyi"):
        a = float(which[5:])
        got, ref = renyi_divergence(lp, lq, a), ref_renyi(p, q, a)
    else:
        got, ref = FUNCS[which](lp, lq), REF[which](p, q)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(), ref, rtol=F32_RTOL, atol=F32_ATOL)


# ---------------------------------------------------------------------------------------------
# α → 1, α = 0, α = ∞
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_alpha_one_is_kl(dtype):
    v, z, lp, lq = _pair((16, 12), seed=5, dtype=dtype)
    torch.testing.assert_close(renyi_divergence(lp, lq, 1.0), kl_divergence(lp, lq), rtol=0, atol=0)
    np.testing.assert_allclose(
        renyi_divergence(lp, lq, 1).double().numpy(),
        ref_kl(_probs(v), _probs(z)),
        rtol=1e-12 if dtype == torch.float64 else F32_RTOL,
        atol=1e-12 if dtype == torch.float64 else F32_ATOL,
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("delta", [1e-7, -1e-7, 1e-5, -1e-5, 1e-3, -1e-3])
def test_near_one_matches_high_precision(delta, dtype):
    """D_(1+δ) against a 50-digit evaluation of the closed form (not the float64 closed form,
    which itself loses ~1e-16/δ). float64: rel 1e-9; float32: rel 1e-5."""
    lp64, lq64 = _logp(_logits((8, 10), 21, 2.0)), _logp(_logits((8, 10), 22, 2.0))
    lp, lq = lp64.to(dtype), lq64.to(dtype)
    ref = mp_renyi(lp, lq, 1.0 + delta)
    got = renyi_divergence(lp, lq, 1.0 + delta).double().numpy()
    rtol = 1e-9 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=0)
    # and it is close to KL (|D_α − KL| ≈ |δ|·Var/2)
    kl = kl_divergence(lp64, lq64).numpy()
    assert np.all(np.abs(got - kl) <= 50 * abs(delta) * np.abs(kl) + 1e-5)


def _alpha_sweep():
    ks = np.linspace(-8, -1, 29)
    pts = sorted({1 + s * 10**k for k in ks for s in (1, -1)})
    # points straddling plausible switch points on both sides, both dtypes
    for c in (1e-4, 1e-3, 1e-2, 5e-2):
        for s in (1, -1):
            pts += [1 + s * c * (1 - 1e-6), 1 + s * c * (1 + 1e-6)]
    return sorted(pts)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_continuity_across_expansion_switch(dtype):
    """A dense sweep of α around 1 (crossing wherever the implementation switches to its
    expansion branch): every value matches the 50-digit reference, so there is no jump.
    float64: rel 1e-8; float32: rel 2e-5."""
    lp64, lq64 = _logp(_logits((4, 10), 31, 2.0)), _logp(_logits((4, 10), 32, 2.0))
    lp, lq = lp64.to(dtype), lq64.to(dtype)
    alphas = _alpha_sweep()
    got = np.stack([renyi_divergence(lp, lq, a).double().numpy() for a in alphas])
    ref = np.stack([mp_renyi(lp, lq, a) for a in alphas])
    rtol = 1e-8 if dtype == torch.float64 else 2e-5
    bad = np.abs(got - ref) > rtol * np.abs(ref)
    assert not bad.any(), [(alphas[i], got[i], ref[i]) for i in np.nonzero(bad.any(1))[0]]


def test_alpha_zero_closed_form_with_zeros_in_p():
    v = _logits((6, 9), 41)
    v[:, [1, 4, 5]] = -INF  # p has zeros
    v[0, :] = _logits((9,), 42)  # one row with full support -> D_0 = 0
    z = _logits((6, 9), 43)
    lp, lq = _logp(v), _logp(z)
    p, q = _probs(v), _probs(z)
    expected = -np.log((q * (p > 0)).sum(-1))
    got = renyi_divergence(lp, lq, 0.0)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-14)
    assert abs(got[0].item()) < 1e-12
    assert np.all(expected[1:] > 1e-3)
    for dtype, tol in [(torch.float32, 1e-5), (torch.float64, 1e-12)]:
        np.testing.assert_allclose(
            renyi_divergence(lp.to(dtype), lq.to(dtype), 0).double().numpy(),
            expected,
            rtol=tol,
            atol=tol,
        )


def test_alpha_inf_closed_form_and_large_alpha_limit():
    v, z, lp, lq = _pair((10, 7), seed=51)
    p, q = _probs(v), _probs(z)
    log_ratio = np.log(p) - np.log(q)
    d_inf = renyi_divergence(lp, lq, INF).numpy()
    np.testing.assert_allclose(d_inf, log_ratio.max(-1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(renyi_divergence(lp, lq, float("inf")).numpy(), d_inf)
    # D_∞ + log p_k/(α−1) ≤ D_α ≤ D_∞, k = argmax log p/q  (sandwich bound for any α > 1)
    k = log_ratio.argmax(-1)
    pk = p[np.arange(len(k)), k]
    for a in (50.0, 200.0, 1000.0):
        d_a = renyi_divergence(lp, lq, a).numpy()
        assert np.all(d_a <= d_inf + 1e-12)
        assert np.all(d_a >= d_inf + np.log(pk) / (a - 1) - 1e-12)
    gap200 = d_inf - renyi_divergence(lp, lq, 200.0).numpy()
    assert np.all(gap200 <= -np.log(pk) / 199 + 1e-12)
    assert np.all(gap200 < 0.05)


# ---------------------------------------------------------------------------------------------
# Structural properties
# ---------------------------------------------------------------------------------------------

GRID = [
    0.0,
    0.05,
    0.1,
    0.3,
    0.5,
    0.8,
    0.9,
    0.95,
    0.98,
    0.989,
    0.991,
    0.995,
    0.999,
    0.9999,
    1 - 1e-6,
    1.0,
    1 + 1e-6,
    1.0001,
    1.001,
    1.005,
    1.009,
    1.011,
    1.02,
    1.05,
    1.1,
    1.5,
    2.0,
    3.0,
    5.0,
    10.0,
    50.0,
    200.0,
    INF,
]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 5e-5)])
def test_non_decreasing_in_alpha(dtype, tol):
    _, _, lp, lq = _pair((32, 10), seed=61, dtype=dtype)
    vals = torch.stack([renyi_divergence(lp, lq, a) for a in GRID]).double()
    steps = vals[1:] - vals[:-1]
    assert steps.min().item() >= -tol, GRID[int(steps.min(1).values.argmin())]
    # and it really increases (the inputs are not degenerate)
    assert (vals[-1] - vals[1]).min().item() > 0.1


@pytest.mark.parametrize("alpha", [1e-3, 0.1, 0.3, 0.5, 0.7, 0.9, 0.995, 0.99995])
def test_skew_symmetry(alpha):
    """D_α(p‖q) = α/(1−α)·D_(1−α)(q‖p) for 0 < α < 1 (exact identity)."""
    _, _, lp, lq = _pair((16, 8), seed=71)
    lhs = renyi_divergence(lp, lq, alpha)
    rhs = alpha / (1 - alpha) * renyi_divergence(lq, lp, 1 - alpha)
    torch.testing.assert_close(lhs, rhs, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.5, 2.0, 5.0])
def test_renyi_is_alpha_times_kl_for_close_distributions(alpha):
    """For q → p, D_α/KL → α (both ≈ Var_p[log p/q]·{α, 1}/2); the error is O(ε)."""
    v = _logits((8, 10), 81)
    u = _logits((8, 10), 82)
    errs = []
    for eps in (1e-1, 1e-2, 1e-3):
        lp, lq = _logp(v), _logp(v + eps * u)
        ratio = renyi_divergence(lp, lq, alpha) / kl_divergence(lp, lq)
        errs.append((ratio - alpha).abs().max().item() / alpha)
    assert errs[2] < errs[1] < errs[0]
    assert errs[2] < 2e-2


EQ_ALPHAS = [0.0, 0.1, 0.5, 0.9, 0.98, 0.999, 1.0, 1.001, 1.02, 1.1, 1.5, 2.0, 5.0, 200.0, INF]
# float32 orders where the closed form's rounding error (~1e-7·|logsumexp terms|/|α−1|) exceeds 1e-6
F32_NEAR_ONE = [0.9, 0.98, 0.989, 1.011, 1.02, 1.1]


def _equal_case(dtype):
    v = _logits((64, 100), 91, 3.0)
    v[:3, :5] = -INF  # some masked classes too
    return v, _logp(v.to(dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_equal_inputs_give_zero(dtype):
    """D(p‖p) = 0 within 1e-6 for every divergence and order (cross-entropy gives H(p)).
    float64: every order in EQ_ALPHAS; float32: every order except those near 1 (next test)."""
    v, lp = _equal_case(dtype)
    for name in ["kl", "reverse_kl", "js"]:
        assert FUNCS[name](lp, lp).abs().max().item() <= 1e-6, name
    alphas = (
        EQ_ALPHAS if dtype == torch.float64 else [a for a in EQ_ALPHAS if a not in F32_NEAR_ONE]
    )
    for a in alphas:
        assert renyi_divergence(lp, lp, a).abs().max().item() <= 1e-6, a
    p = _probs(v)
    entropy = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(-1)
    np.testing.assert_allclose(
        cross_entropy(lp, lp).double().numpy(), entropy, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("alpha", F32_NEAR_ONE)
def test_equal_inputs_give_zero_float32_near_one(alpha):
    _, lp = _equal_case(torch.float32)
    assert renyi_divergence(lp, lp, alpha).abs().max().item() <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_distinct_inputs_give_positive_divergence(dtype):
    v, z, lp, lq = _pair((64, 20), seed=101, dtype=dtype)
    # nearly equal too: distinct but close
    lq_close = _logp((v + 0.05 * z).to(dtype))
    for other in (lq, lq_close):
        for name in ["kl", "reverse_kl", "js"]:
            assert FUNCS[name](lp, other).min().item() > 1e-5, name
        for a in [a for a in EQ_ALPHAS if a != 0.0]:
            assert renyi_divergence(lp, other, a).min().item() > 1e-5, a
        # cross-entropy exceeds the entropy
        assert (cross_entropy(lp, other) - cross_entropy(lp, lp)).min().item() > 1e-5
    # α = 0 is 0 whenever supp(q) ⊆ supp(p), even for p ≠ q: "= 0 iff p = q" fails at α = 0.
    assert renyi_divergence(lp, lq, 0.0).abs().max().item() < 1e-6


# ---------------------------------------------------------------------------------------------
# Finiteness: huge logit gaps, masked classes, q = 0 on the support of p
# ---------------------------------------------------------------------------------------------

L = 1e4


def _gap_expected(which):
    """p = softmax([L, 0]), q = softmax([0, L]) analytically (terms e^{-L} are below 1e-4000)."""
    if which in ("kl", "reverse_kl", "cross_entropy"):
        return L
    if which == "js":
        return math.log(2.0)
    a = float(which[5:])
    if a == 0:
        return 0.0
    if a >= 1:
        return L
    # log Σ p^α q^(1−α) = logaddexp(−(1−α)L, −αL)
    return float(np.logaddexp(-(1 - a) * L, -a * L) / (a - 1))


GAP_CASES = [
    *NAMES,
    *[f"renyi{a}" for a in [0.0, 0.1, 0.5, 0.9, 0.995, 1.0, 1.005, 1.5, 2.0, 5.0, INF]],
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("which", GAP_CASES)
def test_logits_differing_by_1e4(which, dtype):
    v = torch.tensor([[L, 0.0], [L, 0.0]], dtype=dtype)
    z = torch.tensor([[0.0, L], [0.0, L]], dtype=dtype, requires_grad=True)
    lp, lq = _logp(v), _logp(z)
    if which.startswith("renyi"):
        a = float(which[5:])
        d = renyi_divergence(lp, lq, a)
    else:
        d = FUNCS[which](lp, lq)
    assert torch.isfinite(d).all()
    np.testing.assert_allclose(
        d.detach().double().numpy(), _gap_expected(which), rtol=1e-6, atol=1e-6
    )
    (g,) = torch.autograd.grad(d.sum(), z)
    assert torch.isfinite(g).all()
    if which.startswith("renyi") and not math.isinf(float(which[5:])):
        # ∂D_α/∂z = q − r_α with r_α = softmax(α·lp + (1−α)·lq); here q = [0, 1]
        a = float(which[5:])
        r = torch.softmax(a * lp.double() + (1 - a) * lq.detach().double(), -1)
        # float32: logsumexp's backward is exp(x − lse) with |x| ~ 5e3, so ulp(5e3) ≈ 5e-4 limits it
        atol = 1e-9 if dtype == torch.float64 else 2e-3
        expected = torch.softmax(z.detach().double(), -1) - r
        torch.testing.assert_close(g.double(), expected, rtol=0, atol=atol)
    if which == "kl":
        torch.testing.assert_close(g.double(), torch.tensor([[-1.0, 1.0]] * 2, dtype=torch.float64))


MASK_CASES = [*NAMES, *[f"renyi{a}" for a in [0.0, 0.1, 0.5, 0.995, 1.0, 1.005, 2.0, 5.0, INF]]]


def _eval(which, lp, lq):
    if which.startswith("renyi"):
        return renyi_divergence(lp, lq, float(which[5:]))
    return FUNCS[which](lp, lq)


def _ref_eval(which, p, q):
    if which.startswith("renyi"):
        return ref_renyi(p, q, float(which[5:]))
    return REF[which](p, q)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("which", MASK_CASES)
def test_masked_classes_values(which, dtype):
    """−inf logits at the same positions in p and q: the divergence over the remaining classes."""
    keep = [0, 2, 3, 5, 6]
    v, z = _logits((5, 8), 111), _logits((5, 8), 112)
    vm, zm = v.clone(), z.clone()
    vm[:, [1, 4, 7]] = -INF
    zm[:, [1, 4, 7]] = -INF
    d = _eval(which, _logp(vm.to(dtype)), _logp(zm.to(dtype)))
    assert not torch.isnan(d).any() and torch.isfinite(d).all()
    expected = _ref_eval(which, _probs(v[:, keep]), _probs(z[:, keep]))
    tol = 1e-10 if dtype == torch.float64 else 3e-5
    np.testing.assert_allclose(d.double().numpy(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("which", MASK_CASES)
def test_masked_classes_gradients(which):
    """No NaN in gradients; masked logits get 0; the rest equals the gradient on the reduced
    problem (computed on the logits with the masked columns removed)."""
    keep = [0, 2, 3, 5, 6]
    v, z = _logits((5, 8), 121), _logits((5, 8), 122)
    vm, zm = v.clone(), z.clone()
    vm[:, [1, 4, 7]] = -INF
    zm[:, [1, 4, 7]] = -INF
    vm.requires_grad_(True)
    zm.requires_grad_(True)
    d = _eval(which, _logp(vm), _logp(zm))
    gv, gz = torch.autograd.grad(d.sum(), [vm, zm], allow_unused=True, materialize_grads=True)
    assert not torch.isnan(gz).any() and not torch.isnan(gv).any()
    zr, vr = z[:, keep].clone().requires_grad_(True), v[:, keep].clone().requires_grad_(True)
    gvr, gzr = torch.autograd.grad(
        _eval(which, _logp(vr), _logp(zr)).sum(),
        [vr, zr],
        allow_unused=True,
        materialize_grads=True,
    )
    torch.testing.assert_close(gz[:, keep], gzr, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gv[:, keep], gvr, rtol=1e-9, atol=1e-12)
    assert (gz[:, [1, 4, 7]] == 0).all()


def _q_zero_case():
    v = _logits((4, 6), 131)
    z = _logits((4, 6), 132)
    z[:, 2] = -INF  # q = 0 where p > 0
    return _logp(v), _logp(z), _probs(v), _probs(z)


@pytest.mark.parametrize(
    "which",
    [
        "kl",
        "cross_entropy",
        "renyi1.0",
        "renyi1.00005",
        "renyi1.005",
        "renyi1.5",
        "renyi2.0",
        "renyi5.0",
        "renyiinf",
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_support_of_p_outside_q_is_infinite(which, dtype):
    lp, lq, _, _ = _q_zero_case()
    d = _eval(which, lp.to(dtype), lq.to(dtype))
    assert torch.isinf(d).all() and (d > 0).all()


@pytest.mark.parametrize(
    "alpha,dtype",
    [(a, dt) for a in [0.0, 0.1, 0.5, 0.9, 0.98] for dt in (torch.float32, torch.float64)]
    + [
        (0.995, torch.float32),
        (0.99995, torch.float64),
    ],
)
def test_support_of_p_outside_q_is_finite_below_one(alpha, dtype):
    lp, lq, p, q = _q_zero_case()
    lqg = lq.to(dtype).clone().requires_grad_(True)
    d = renyi_divergence(lp.to(dtype), lqg, alpha)
    assert torch.isfinite(d).all()
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    np.testing.assert_allclose(
        d.double().detach().numpy(), ref_renyi(p, q, alpha), rtol=tol, atol=tol
    )
    (g,) = torch.autograd.grad(d.sum(), lqg)
    assert not torch.isnan(g).any()


def test_js_and_reverse_kl_finite_when_q_has_zeros():
    lp, lq, p, q = _q_zero_case()
    np.testing.assert_allclose(js_divergence(lp, lq).numpy(), ref_js(p, q), rtol=1e-12)
    assert js_divergence(lp, lq).max().item() <= math.log(2)
    np.testing.assert_allclose(reverse_kl_divergence(lp, lq).numpy(), ref_kl(q, p), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Gradients: ∂D_α/∂z = q − r_α (T = 1)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 2), (8, 10), (64, 100)])
@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 0.9, 1 - 5e-5, 1.0, 1 + 5e-5, 1.5, 2.0, 5.0])
def test_renyi_gradient_is_q_minus_r(alpha, shape):
    v, z, _, _ = _pair(shape, seed=141)
    z = z.clone().requires_grad_(True)
    lp, lq = _logp(v), _logp(z)
    (g,) = torch.autograd.grad(renyi_divergence(lp, lq, alpha).sum(), z)
    q = torch.softmax(z.detach(), -1)
    r = torch.softmax(alpha * lp + (1 - alpha) * lq.detach(), -1)
    torch.testing.assert_close(g, q - r, rtol=0, atol=1e-8)
    if alpha == 1.0:
        torch.testing.assert_close(g, q - torch.softmax(v, -1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.5, 0.995, 1.0, 2.0])
def test_renyi_gradient_float32(alpha):
    v, z, _, _ = _pair((16, 10), seed=151)
    z32 = z.float().requires_grad_(True)
    (g,) = torch.autograd.grad(renyi_divergence(_logp(v.float()), _logp(z32), alpha).sum(), z32)
    lp, lq = _logp(v), _logp(z)
    expected = torch.softmax(z, -1) - torch.softmax(alpha * lp + (1 - alpha) * lq, -1)
    torch.testing.assert_close(g.double(), expected, rtol=0, atol=1e-4)


def test_kl_gradient_wrt_teacher_log_probs_is_finite_and_correct():
    """∂KL/∂v_j = p_j·(log p_j − log q_j − KL) at T = 1."""
    v, z, _, _ = _pair((6, 9), seed=161)
    v = v.clone().requires_grad_(True)
    lp, lq = _logp(v), _logp(z)
    d = kl_divergence(lp, lq)
    (g,) = torch.autograd.grad(d.sum(), v)
    p = lp.detach().exp()
    expected = p * (lp.detach() - lq - d.detach().unsqueeze(-1))
    torch.testing.assert_close(g, expected, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_negative_alpha_rejected():
    lp = _logp(_logits((2, 3), 1))
    with pytest.raises(ValueError, match=r"alpha must be a number ≥ 0.*-0\.5"):
        renyi_divergence(lp, lp, -0.5)
    with pytest.raises(ValueError, match=r"alpha must be a number"):
        get_divergence("renyi", -1.0)


def test_nan_alpha_rejected():
    lp = _logp(_logits((2, 3), 1))
    with pytest.raises(ValueError, match=r"alpha must be a number ≥ 0.*nan"):
        renyi_divergence(lp, lp, float("nan"))
    with pytest.raises(ValueError, match=r"nan"):
        get_divergence("renyi", float("nan"))


@pytest.mark.parametrize(
    "fn",
    [
        kl_divergence,
        reverse_kl_divergence,
        js_divergence,
        cross_entropy,
        lambda a, b: renyi_divergence(a, b, 0.5),
    ],
)
def test_shape_mismatch_rejected(fn):
    a, b = _logp(_logits((2, 3), 1)), _logp(_logits((2, 4), 2))
    with pytest.raises(ValueError, match=r"same shape.*(\(2, 3\).*\(2, 4\)|\(2, 4\).*\(2, 3\))"):
        fn(a, b)


def test_scalar_input_rejected():
    with pytest.raises(ValueError, match="scalar"):
        kl_divergence(torch.tensor(0.0), torch.tensor(0.0))


def test_unknown_divergence_lists_valid_names():
    with pytest.raises(ValueError, match="unknown divergence 'kll'") as info:
        get_divergence("kll")
    msg = str(info.value)
    for name in [*DIVERGENCES, "renyi"]:
        assert name in msg


def test_alpha_for_non_renyi_rejected():
    for name in NAMES:
        with pytest.raises(
            ValueError, match=rf"alpha is only used by the 'renyi' divergence.*{name}"
        ):
            get_divergence(name, alpha=0.5)


def test_renyi_without_alpha_rejected():
    with pytest.raises(ValueError, match="needs an order"):
        get_divergence("renyi")


# ---------------------------------------------------------------------------------------------
# log_mean_exp
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_log_mean_exp_is_log_of_mean_probability(dtype, tol):
    logits = _logits((5, 7, 11), 171)  # 5 models, 7 samples, 11 classes
    logits[:, 0, 3] = -INF  # a class every model masks stays masked
    lps = _logp(logits.to(dtype))
    probs = _probs(logits)
    got = log_mean_exp(lps, dim=0)
    assert got.shape == (7, 11)
    with np.errstate(divide="ignore"):
        expected = np.log(probs.mean(0))
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=tol, atol=tol)
    assert got[0, 3].item() == -INF
    # the average of distributions is a distribution
    np.testing.assert_allclose(got.double().exp().sum(-1).numpy(), 1.0, rtol=0, atol=10 * tol)
    # other dims
    got1 = log_mean_exp(lps, dim=1)
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(got1.double().numpy(), np.log(probs.mean(1)), rtol=tol, atol=tol)
