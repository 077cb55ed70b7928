"""Numerical tests of neuron selectivity transfer (kdlab.losses.nst) and correlation congruence
(kdlab.losses.cc).

References are float64 loops in numpy written from the papers' formulas: NST's squared MMD
between the L2-normalised channel maps with the polynomial kernel (Huang & Wang 2017), and CC's
batch correlation matrix with the Taylor-expanded Gaussian RBF kernel (Peng et al. 2019).
"""

from __future__ import annotations

import itertools
import math
from decimal import Decimal, localcontext

import numpy as np
import pytest
import torch

from feature_helpers import assert_grad_only_to_student, outputs, rand, value
from kdlab.errors import ConfigError
from kdlab.losses import build_term
from kdlab.losses.cc import (
    CorrelationCongruence,
    cc_loss,
    correlation_matrix,
    log_taylor_rbf_coefficients,
    max_gamma,
    taylor_rbf_coefficients,
)
from kdlab.losses.nst import NeuronSelectivityTransfer, nst_loss

# ---------------------------------------------------------------------------------------------
# NST
# ---------------------------------------------------------------------------------------------


def mmd_reference(s: np.ndarray, t: np.ndarray, degree: int, constant: float) -> float:
    """Batch mean of the paper's MMD² with explicit loops over every pair of channels."""

    def channels(a):
        return [a[k].ravel() / np.linalg.norm(a[k].ravel()) for k in range(a.shape[0])]

    def kernel(x, y):
        return (float(x @ y) + constant) ** degree

    values = []
    for b in range(len(s)):
        fs, ft = channels(s[b]), channels(t[b])
        tt = sum(kernel(x, y) for x in ft for y in ft) / len(ft) ** 2
        ss = sum(kernel(x, y) for x in fs for y in fs) / len(fs) ** 2
        st = sum(kernel(x, y) for x in fs for y in ft) / (len(fs) * len(ft))
        values.append(tt + ss - 2 * st)
    return sum(values) / len(values)


@pytest.mark.parametrize(("degree", "constant"), [(2, 0.0), (3, 0.5), (1, 0.0)])
def test_nst_matches_the_mmd_reference(degree: int, constant: float) -> None:
    s, t = rand(3, 4, 5, 5), rand(3, 6, 5, 5, seed=1)  # channel counts differ: no adapter
    term = NeuronSelectivityTransfer(student="s", teacher="t", degree=degree, constant=constant)
    ref = mmd_reference(s.numpy(), t.numpy(), degree, constant)
    assert ref > 1e-3
    assert value(term, s, t) == pytest.approx(ref, rel=1e-10)
    assert len(term.connector) == 0


def test_nst_resizes_the_student_map_to_the_teachers_size() -> None:
    s, t = rand(2, 3, 8, 8), rand(2, 5, 4, 4, seed=1)
    pooled = s.numpy().reshape(2, 3, 4, 2, 4, 2).mean(axis=(3, 5))  # 2×2 average pooling
    ref = mmd_reference(pooled, t.numpy(), 2, 0.0)
    assert value(NeuronSelectivityTransfer(student="s", teacher="t"), s, t) == pytest.approx(
        ref, rel=1e-10
    )


def test_nst_upsamples_a_smaller_student_map_bilinearly_to_the_teachers_size() -> None:
    s, t = rand(2, 3, 3, 4), rand(2, 5, 5, 6, seed=1)
    # the resize step only: the code upsamples with mode="bilinear", align_corners=False
    grown = torch.nn.functional.interpolate(s, size=(5, 6), mode="bilinear", align_corners=False)
    ref = mmd_reference(grown.numpy(), t.numpy(), 2, 0.0)
    term = NeuronSelectivityTransfer(student="s", teacher="t")
    assert value(term, s, t) == pytest.approx(ref, rel=1e-10)
    assert [type(m).__name__ for m in term.connector] == ["Resize"]  # parameter-free


def test_nst_is_zero_for_the_same_channel_distribution() -> None:
    s = rand(3, 4, 5, 5)
    term = NeuronSelectivityTransfer(student="s", teacher="t")
    assert value(term, s, s.clone()) == pytest.approx(0.0, abs=1e-12)
    # the teacher holds every student channel twice, scaled: the same normalised distribution
    doubled = torch.cat([2.0 * s, 0.5 * s.flip(1)], dim=1)
    assert value(term, s, doubled) == pytest.approx(0.0, abs=1e-12)


def test_nst_mmd_is_never_negative() -> None:
    for seed in range(10):
        s, t = rand(2, 3, 4, 4, seed=seed).abs(), rand(2, 7, 4, 4, seed=seed + 100)
        for degree, constant in ((1, 0.0), (2, 0.0), (3, 1.0)):
            assert float(nst_loss(s, t, degree=degree, constant=constant)) >= -1e-12


def test_nst_gradients_reach_only_the_student() -> None:
    assert_grad_only_to_student(
        NeuronSelectivityTransfer(student="s", teacher="t"), rand(2, 3, 4, 4), rand(2, 5, 4, 4)
    )


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"degree": 0}, "degree must be a whole number"),
        ({"degree": 1.5}, "degree must be an integer"),
        ({"constant": -1.0}, "constant must be ≥ 0"),
        ({"student": None}, "needs the student's module path"),
        ({"kernel": "poly"}, "valid parameters"),
    ],
)
def test_nst_rejects_bad_parameters(params: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_term({"type": "nst", "student": "s", "teacher": "t", **params})


def test_nst_rejects_vectors_and_the_functional_rejects_unequal_positions() -> None:
    term = NeuronSelectivityTransfer(student="s", teacher="t")
    so, to, _ = outputs(rand(2, 6), rand(2, 6, seed=1))
    with pytest.raises(ConfigError, match=r"rank 3.*tap convolutional blocks"):
        term.prepare(so, to)
    with pytest.raises(ValueError, match="resize one map first"):
        nst_loss(rand(2, 3, 4, 4), rand(2, 3, 2, 2))


# ---------------------------------------------------------------------------------------------
# CC
# ---------------------------------------------------------------------------------------------


def taylor_kernel(x: np.ndarray, y: np.ndarray, gamma: float, order: int) -> float:
    u, v = x / np.linalg.norm(x), y / np.linalg.norm(y)
    c = float(u @ v)
    return sum(
        math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * c**p for p in range(order + 1)
    )


def cc_reference(s: np.ndarray, t: np.ndarray, gamma: float, order: int) -> float:
    s, t = s.reshape(len(s), -1), t.reshape(len(t), -1)
    b = len(s)
    total = 0.0
    for i in range(b):
        for j in range(b):
            d = taylor_kernel(t[i], t[j], gamma, order) - taylor_kernel(s[i], s[j], gamma, order)
            total += d * d
    return total / b**2


@pytest.mark.parametrize(("gamma", "order"), [(0.4, 2), (1.5, 4), (0.4, 1)])
def test_cc_matches_the_loop_reference(gamma: float, order: int) -> None:
    s, t = rand(5, 2, 3), rand(5, 9, seed=1)  # different sizes: ψ is B × B on both sides
    term = CorrelationCongruence(student="s", teacher="t", gamma=gamma, order=order)
    ref = cc_reference(s.numpy(), t.numpy(), gamma, order)
    assert value(term, s, t) == pytest.approx(ref, rel=1e-10, abs=1e-15)
    assert len(term.connector) == 0


def test_cc_taylor_form_converges_to_the_exact_rbf_kernel() -> None:
    x = rand(6, 5)
    u = x / x.norm(dim=1, keepdim=True)
    for gamma in (0.05, 0.4, 1.0):
        exact = torch.exp(-gamma * torch.cdist(u, u).pow(2))
        errors = [
            float((correlation_matrix(x, gamma=gamma, order=p) - exact).abs().max())
            for p in range(8)
        ]
        assert all(a > b for a, b in itertools.pairwise(errors)), errors
        assert float((correlation_matrix(x, gamma=gamma, order=30) - exact).abs().max()) < 1e-12
    # a small γ: the second-order form is already close
    exact = torch.exp(-0.01 * torch.cdist(u, u).pow(2))
    assert float((correlation_matrix(x, gamma=0.01, order=2) - exact).abs().max()) < 1e-5


def test_cc_is_zero_for_congruent_embeddings() -> None:
    t = rand(5, 4)
    term = CorrelationCongruence(student="s", teacher="t")
    assert value(term, t.clone(), t) == pytest.approx(0.0, abs=1e-14)
    # rotated, rescaled per sample and padded to another size: the same cosines
    q, _ = torch.linalg.qr(rand(4, 4, seed=3))
    s = torch.cat([(t @ q) * torch.arange(1.0, 6.0, dtype=t.dtype)[:, None], t.new_zeros(5, 3)], 1)
    assert value(term, s, t) == pytest.approx(0.0, abs=1e-14)


def test_cc_gradients_reach_only_the_student() -> None:
    assert_grad_only_to_student(
        CorrelationCongruence(student="s", teacher="t"), rand(4, 6), rand(4, 3)
    )


def test_cc_needs_two_samples_and_valid_parameters() -> None:
    term = CorrelationCongruence(student="s", teacher="t")
    assert term.min_batch == 2
    so, to, batch = outputs(rand(1, 4), rand(1, 4, seed=1))
    term.prepare(so, to)
    with pytest.raises(ConfigError, match="at least 2 per batch"):
        term(so, to, batch)
    with pytest.raises(ValueError, match="≥ 2 samples"):
        cc_loss(rand(1, 4), rand(1, 4))
    for params, match in (
        ({"gamma": 0.0}, "gamma must be a finite number > 0"),
        ({"order": -1}, "order must be a whole number"),
        ({"order": 2.5}, "order must be an integer"),
    ):
        with pytest.raises(ConfigError, match=match):
            build_term({"type": "cc", "student": "s", "teacher": "t", **params})


def naive_coefficients(gamma: float, order: int) -> list[float]:
    return [math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) for p in range(order + 1)]


def exact_log_coefficients(gamma: float, order: int) -> list[float]:
    """log(e^{−2γ}(2γ)^p/p!) in 60-digit decimal arithmetic, whose exponent range is unbounded."""
    with localcontext() as ctx:
        ctx.prec = 60
        two_gamma = Decimal(2) * Decimal(gamma)
        return [
            float(((-two_gamma).exp() * two_gamma**p / math.factorial(p)).ln())
            for p in range(order + 1)
        ]


@pytest.mark.parametrize(("gamma", "order"), [(0.4, 2), (0.4, 10), (3.0, 50)])
def test_cc_taylor_weights_match_the_explicit_formula(gamma: float, order: int) -> None:
    assert taylor_rbf_coefficients(gamma, order) == pytest.approx(
        naive_coefficients(gamma, order), rel=1e-13
    )


@pytest.mark.parametrize("gamma", [400.0, 1.0e6])
def test_cc_taylor_weights_are_computed_in_log_space(gamma: float) -> None:
    # the plain formula fails here: exp(−2γ) underflows to 0 (γ > 373), (2γ)^50 overflows (γ = 1e6)
    if gamma < 1e6:
        assert naive_coefficients(gamma, 50) == [0.0] * 51
    else:
        with pytest.raises(OverflowError):
            naive_coefficients(gamma, 50)
    exact = exact_log_coefficients(gamma, 50)
    assert log_taylor_rbf_coefficients(gamma, 50) == pytest.approx(exact, rel=1e-12)
    weights = taylor_rbf_coefficients(gamma, 50)
    assert weights == pytest.approx([math.exp(c) for c in exact], rel=1e-9)
    assert (weights[-1] > 0) == (gamma < 1e6)  # e^{−614} at γ = 400 is still a double


def test_cc_refuses_a_gamma_whose_weights_all_underflow_in_float32() -> None:
    spec = {"type": "cc", "student": "s", "teacher": "t"}
    with pytest.raises(
        ConfigError,
        match=r"gamma 1e\+06 is too large for order 50: .*below 1\.1e-19"
        r".* use gamma ≤ 71\.7 at order 50; the default is 0\.4$",
    ):
        build_term({**spec, "gamma": 1.0e6, "order": 50})
    with pytest.raises(ConfigError, match=r"use gamma ≤ 25\.4 at order 2 \(≤ 71\.7 at order 50\)"):
        build_term({**spec, "gamma": 30.0})
    assert max_gamma(2) == pytest.approx(25.416, abs=1e-3)
    # the bound is where float32 gives out: just inside, the loss is still > 0 in float32; well
    # beyond it (as the plain formula had it up to γ ≈ 373), it is exactly 0
    s, t = rand(6, 5).float(), rand(6, 5, seed=1).float()
    assert float(cc_loss(s, t, gamma=25.4, order=2)) > 0
    build_term({**spec, "gamma": 25.4})
    assert float(cc_loss(s, t, gamma=60.0, order=2)) == 0.0


def test_cc_refuses_order_0_which_makes_the_term_a_constant() -> None:
    with pytest.raises(
        ConfigError,
        match=r"from 1 to 50 .* got 0; order 0 keeps only the constant"
        r" exp\(−2γ\), so the term would always be 0",
    ):
        build_term({"type": "cc", "student": "s", "teacher": "t", "order": 0})


def test_cc_computes_in_float32_under_mixed_precision() -> None:
    s, t = rand(6, 5).float(), rand(6, 5, seed=1).float()
    plain = cc_loss(s, t, gamma=2.0, order=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = cc_loss(s, t, gamma=2.0, order=4)
    assert mixed.dtype == torch.float32 and float(mixed) == pytest.approx(float(plain), rel=1e-6)
