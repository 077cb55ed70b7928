"""Numerical reference tests of the response-based loss terms (kdlab.losses.response).

Notation as in design.md §3: student logits z, teacher logits v, temperature T,
q = softmax(z/T), p = softmax(v/T), N classes, B samples. References are float64 formulas on
probabilities (numpy) and closed-form gradients; autograd is only ever the thing under test.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from kdlab.divergences import kl_divergence
from kdlab.errors import ConfigError
from kdlab.losses import (
    CrossEntropy,
    LogitMSE,
    Objective,
    SoftCrossEntropy,
    SoftTarget,
    build_term,
    hinton_loss,
)
from kdlab.types import Batch, ModelOutput

B, N = 6, 10


# ---------------------------------------------------------------------------------------------
# Independent float64 references
# ---------------------------------------------------------------------------------------------


def _logits(shape, seed, scale=2.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _case(seed=0, b=B, n=N, scale=2.0, zero_mean=False):
    z, v = _logits((b, n), seed, scale), _logits((b, n), seed + 500, scale)
    if zero_mean:
        z = z - z.mean(-1, keepdim=True)
        v = v - v.mean(-1, keepdim=True)
    y = torch.randint(0, n, (b,), generator=torch.Generator().manual_seed(seed + 7))
    return z, v, Batch(torch.zeros(b, 3), y)


def _softmax(x, T=1.0) -> np.ndarray:
    x = torch.as_tensor(x).detach().double().numpy() / T
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def ref_kl(p, q):
    return (p * (np.log(p) - np.log(q))).sum(-1)


def ref_entropy(p):
    return -(p * np.log(p)).sum(-1)


def ref_renyi(p, q, a):
    if a == 1:
        return ref_kl(p, q)
    return np.log((p**a * q ** (1 - a)).sum(-1)) / (a - 1)


def ref_js(p, q):
    m = 0.5 * (p + q)
    return 0.5 * ref_kl(p, m) + 0.5 * ref_kl(q, m)


def ref_ce(z, y):
    lq = torch.log_softmax(torch.as_tensor(z).detach().double(), -1).numpy()
    return float(-lq[np.arange(len(y)), y.numpy()].mean())


def ref_logit_mse(z, v, center):
    z, v = z.detach().double().numpy(), v.detach().double().numpy()
    if center:
        z = z - z.mean(-1, keepdims=True)
        v = v - v.mean(-1, keepdims=True)
    return float(((z - v) ** 2).mean())


def _run(term, z, v, batch):
    return term(ModelOutput(z), None if v is None else ModelOutput(v), batch)


def _grad_z(term, z, v, batch):
    zz = z.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(_run(term, zz, v, batch), zz)
    return g


# ---------------------------------------------------------------------------------------------
# KD value and gradient identities
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 10.0])
def test_kd_gradient_identity(T):
    """∂KL(p‖q)/∂z_j = (1/T)(q_j − p_j) per sample."""
    z, v, batch = _case(seed=1)
    expected = torch.from_numpy((_softmax(z, T) - _softmax(v, T)) / T)
    # per-sample divergence
    zz = z.clone().requires_grad_(True)
    kl = kl_divergence(torch.log_softmax(v / T, -1), torch.log_softmax(zz / T, -1))
    (g,) = torch.autograd.grad(kl.sum(), zz)
    torch.testing.assert_close(g, expected, rtol=0, atol=1e-12)
    # the term without T² scaling, times batch size (batchmean)
    g_term = _grad_z(SoftTarget(temperature=T, t2_scaling=False), z, v, batch) * B
    torch.testing.assert_close(g_term, expected, rtol=0, atol=1e-12)
    # with T² scaling: T²/B · (1/T)(q − p)
    g_t2 = _grad_z(SoftTarget(temperature=T), z, v, batch)
    torch.testing.assert_close(g_t2, expected * T * T / B, rtol=0, atol=1e-12)


@pytest.mark.parametrize("T", [1.0, 3.0, 4.0, 20.0])
def test_soft_target_value_is_t2_batchmean_kl(T):
    z, v, batch = _case(seed=2)
    kl = ref_kl(_softmax(v, T), _softmax(z, T))
    value = _run(SoftTarget(temperature=T), z, v, batch).item()
    np.testing.assert_allclose(value, T * T * kl.mean(), rtol=1e-12)
    # batchmean (sum over classes, mean over samples), not a mean over all B·N elements
    assert abs(value / (T * T * kl.sum() / (B * N)) - N) < 1e-9
    np.testing.assert_allclose(
        _run(SoftTarget(temperature=T, t2_scaling=False), z, v, batch).item(), kl.mean(), rtol=1e-12
    )


def test_soft_target_float32_matches_float64():
    z, v, batch = _case(seed=3, b=64, n=100, scale=4.0)
    ref = 16.0 * ref_kl(_softmax(v, 4.0), _softmax(z, 4.0)).mean()
    got = _run(SoftTarget(temperature=4.0), z.float(), v.float(), batch)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.item(), ref, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# High-temperature limit (seed 002; seed 003 eq. 1.15)
# ---------------------------------------------------------------------------------------------

TEMPS = [1.0, 10.0, 100.0, 1000.0]


def test_high_temperature_gradient_is_logit_matching():
    """Zero-mean logits: T²·∂KL/∂z → (z − v)/N; the relative error shrinks like 1/T."""
    z, v, batch = _case(seed=4, zero_mean=True)
    limit = (z - v) / N
    errs = []
    for T in TEMPS:
        zz = z.clone().requires_grad_(True)
        kl = kl_divergence(torch.log_softmax(v / T, -1), torch.log_softmax(zz / T, -1))
        (g,) = torch.autograd.grad(T * T * kl.sum(), zz)
        errs.append(((g - limit).abs().max() / limit.abs().max()).item())
        # the term (T² scaling, batchmean) gives the same per-sample gradient divided by B
        g_term = _grad_z(SoftTarget(temperature=T), z, v, batch) * B
        torch.testing.assert_close(g_term, g, rtol=0, atol=1e-12)
    assert all(a > b for a, b in itertools.pairwise(errs)), errs
    assert errs[-1] < 5e-3, errs
    assert errs[0] > 0.1  # T = 1 is far from the limit: the check is not vacuous


def test_high_temperature_value_is_half_centered_logit_mse():
    z, v, batch = _case(seed=5, zero_mean=True)
    half_mse = 0.5 * _run(LogitMSE(center=True), z, v, batch).item()
    np.testing.assert_allclose(half_mse, 0.5 * ref_logit_mse(z, v, center=True), rtol=1e-6)
    errs = [abs(_run(SoftTarget(temperature=T), z, v, batch).item() / half_mse - 1) for T in TEMPS]
    assert all(a > b for a, b in itertools.pairwise(errs)), errs
    assert errs[-1] < 1e-3, errs


def test_high_temperature_limit_needs_centering_for_non_zero_mean_logits():
    """Softmax ignores per-sample shifts, so T²·KL → ½·LogitMSE(center=True), not center=False."""
    z, v, batch = _case(seed=6, zero_mean=True)
    shift_z = torch.linspace(-3, 5, B, dtype=torch.float64).unsqueeze(-1)
    zs, vs = z + shift_z, v - 2.0
    t2kl = _run(SoftTarget(temperature=1000.0), zs, vs, batch).item()
    centred = 0.5 * _run(LogitMSE(center=True), zs, vs, batch).item()
    raw = 0.5 * _run(LogitMSE(center=False), zs, vs, batch).item()
    np.testing.assert_allclose(centred, 0.5 * ref_logit_mse(z, v, center=False), rtol=1e-6)
    np.testing.assert_allclose(raw, 0.5 * ref_logit_mse(zs, vs, center=False), rtol=1e-6)
    assert abs(t2kl / centred - 1) < 1e-3
    assert abs(t2kl / raw - 1) > 0.5
    # the gradient's limit is the centred difference divided by N
    g = _grad_z(SoftTarget(temperature=1000.0), zs, vs, batch) * B
    d = zs - vs
    limit = (d - d.mean(-1, keepdim=True)) / N
    assert ((g - limit).abs().max() / limit.abs().max()).item() < 5e-3


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
def test_renyi_high_temperature_limit(alpha):
    """T²·D_α → α·½·LogitMSE(center=True) (zero-mean logits)."""
    z, v, batch = _case(seed=7, zero_mean=True)
    target = alpha * 0.5 * ref_logit_mse(z, v, center=True)
    errs = []
    for T in TEMPS[1:]:
        term = SoftTarget(temperature=T, divergence="renyi", alpha=alpha)
        errs.append(abs(_run(term, z, v, batch).item() / target - 1))
    assert errs[0] > errs[1] > errs[2], errs
    assert errs[-1] < 2e-3, errs


# ---------------------------------------------------------------------------------------------
# Other divergences, reverse direction, soft cross-entropy
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_reverse_direction_is_kl_q_p(T):
    z, v, batch = _case(seed=8)
    p, q = _softmax(v, T), _softmax(z, T)
    rev = _run(SoftTarget(temperature=T, direction="reverse"), z, v, batch).item()
    np.testing.assert_allclose(rev, T * T * ref_kl(q, p).mean(), rtol=1e-12)
    assert abs(rev - T * T * ref_kl(p, q).mean()) > 1e-3  # forward differs
    # ∂KL(q‖p)/∂z_j = (1/T)·q_j·(log q_j − log p_j − KL(q‖p))
    expected = q * (np.log(q) - np.log(p) - ref_kl(q, p)[:, None]) / T
    g = _grad_z(SoftTarget(temperature=T, direction="reverse", t2_scaling=False), z, v, batch) * B
    np.testing.assert_allclose(g.numpy(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "spec,ref",
    [
        ({"divergence": "js"}, lambda p, q: ref_js(p, q)),
        ({"divergence": "renyi", "alpha": 0.5}, lambda p, q: ref_renyi(p, q, 0.5)),
        ({"divergence": "renyi", "alpha": 2.0}, lambda p, q: ref_renyi(p, q, 2.0)),
        ({"divergence": "renyi", "alpha": 1.0}, lambda p, q: ref_kl(p, q)),
        ({"divergence": "cross_entropy"}, lambda p, q: ref_kl(p, q) + ref_entropy(p)),
        (
            {"divergence": "renyi", "alpha": 2.0, "direction": "reverse"},
            lambda p, q: ref_renyi(q, p, 2.0),
        ),
    ],
)
def test_soft_target_with_other_divergences(spec, ref):
    T = 3.0
    z, v, batch = _case(seed=9)
    term = build_term({"type": "soft_target", "temperature": T, **spec})
    assert isinstance(term, SoftTarget)
    np.testing.assert_allclose(
        _run(term, z, v, batch).item(),
        T * T * ref(_softmax(v, T), _softmax(z, T)).mean(),
        rtol=1e-11,
    )


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_soft_cross_entropy_is_kl_plus_teacher_entropy(T):
    z, v, batch = _case(seed=10)
    p, q = _softmax(v, T), _softmax(z, T)
    value = _run(SoftCrossEntropy(temperature=T), z, v, batch).item()
    np.testing.assert_allclose(value, T * T * (ref_kl(p, q) + ref_entropy(p)).mean(), rtol=1e-12)
    literal = _run(SoftCrossEntropy(temperature=T, t2_scaling=False), z, v, batch).item()
    np.testing.assert_allclose(literal, -(p * np.log(q)).sum(-1).mean(), rtol=1e-12)
    # same gradient as SoftTarget(kl): the entropy is constant in z
    torch.testing.assert_close(
        _grad_z(SoftCrossEntropy(temperature=T), z, v, batch),
        _grad_z(SoftTarget(temperature=T), z, v, batch),
        rtol=0,
        atol=1e-13,
    )


def test_cross_entropy_and_logit_mse_match_direct_formulas():
    z, v, batch = _case(seed=11)
    np.testing.assert_allclose(
        _run(CrossEntropy(), z, v, batch).item(), ref_ce(z, batch.targets), rtol=1e-6
    )
    eps = 0.1
    lq = torch.log_softmax(z, -1).numpy()
    smooth = (1 - eps) * ref_ce(z, batch.targets) + eps * float((-lq).mean(-1).mean())
    np.testing.assert_allclose(
        _run(CrossEntropy(label_smoothing=eps), z, v, batch).item(), smooth, rtol=1e-6
    )
    assert _run(CrossEntropy(), z, None, batch).item() > 0  # needs no teacher
    for center in (False, True):
        np.testing.assert_allclose(
            _run(LogitMSE(center=center), z, v, batch).item(),
            ref_logit_mse(z, v, center),
            rtol=1e-6,
        )


# ---------------------------------------------------------------------------------------------
# Hinton loss and Objective
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T,beta", [(4.0, 0.9), (3.0, 0.5), (5.0, 0.1)])
def test_hinton_loss_total(T, beta):
    z, v, batch = _case(seed=12)
    out = Objective(hinton_loss(temperature=T, beta=beta))(ModelOutput(z), ModelOutput(v), batch)
    ce = ref_ce(z, batch.targets)
    kd = T * T * ref_kl(_softmax(v, T), _softmax(z, T)).mean()
    np.testing.assert_allclose(out.total.item(), (1 - beta) * ce + beta * kd, rtol=1e-6)
    assert set(out.terms) == {"ce", "kd"}
    np.testing.assert_allclose(out.terms["ce"].item(), ce, rtol=1e-6)  # unweighted
    np.testing.assert_allclose(out.terms["kd"].item(), kd, rtol=1e-12)


def test_hinton_loss_renyi_and_edge_betas():
    T = 4.0
    z, v, batch = _case(seed=13)
    ce = ref_ce(z, batch.targets)
    p, q = _softmax(v, T), _softmax(z, T)
    out = Objective(hinton_loss(T, 0.7, divergence="renyi", alpha=2.0))(
        ModelOutput(z), ModelOutput(v), batch
    )
    np.testing.assert_allclose(
        out.total.item(), 0.3 * ce + 0.7 * T * T * ref_renyi(p, q, 2.0).mean(), rtol=1e-6
    )
    # β = 1: only the soft targets; β = 0: plain CE and no teacher needed
    only_kd = Objective(hinton_loss(T, 1.0))(ModelOutput(z), ModelOutput(v), batch)
    np.testing.assert_allclose(only_kd.total.item(), T * T * ref_kl(p, q).mean(), rtol=1e-12)
    plain = Objective(hinton_loss(T, 0.0))
    assert not plain.needs_teacher
    np.testing.assert_allclose(plain(ModelOutput(z), None, batch).total.item(), ce, rtol=1e-6)


def test_objective_reports_unweighted_terms():
    z, v, batch = _case(seed=14)
    terms = [
        CrossEntropy(weight=0.3),
        SoftTarget(weight=2.0, temperature=3.0),
        LogitMSE(weight=0.5, center=True),
        SoftCrossEntropy(weight=0.25, temperature=2.0, name="sce"),
    ]
    out = Objective(terms)(ModelOutput(z), ModelOutput(v), batch)
    assert list(out.terms) == ["ce", "soft_target", "logit_mse", "sce"]
    expected = {
        "ce": ref_ce(z, batch.targets),
        "soft_target": 9.0 * ref_kl(_softmax(v, 3.0), _softmax(z, 3.0)).mean(),
        "logit_mse": ref_logit_mse(z, v, center=True),
        "sce": 4.0
        * (ref_kl(_softmax(v, 2.0), _softmax(z, 2.0)) + ref_entropy(_softmax(v, 2.0))).mean(),
    }
    for name, value in expected.items():
        np.testing.assert_allclose(out.terms[name].item(), value, rtol=1e-6, err_msg=name)
    total = (
        0.3 * expected["ce"]
        + 2.0 * expected["soft_target"]
        + 0.5 * expected["logit_mse"]
        + 0.25 * expected["sce"]
    )
    np.testing.assert_allclose(out.total.item(), total, rtol=1e-6)


def test_objective_gives_repeated_kinds_distinct_names():
    z, v, batch = _case(seed=15)
    temps = [1.0, 2.0, 8.0]
    obj = Objective([SoftTarget(temperature=t) for t in temps])
    assert [t.name for t in obj.terms] == ["soft_target", "soft_target_2", "soft_target_3"]
    out = obj(ModelOutput(z), ModelOutput(v), batch)
    assert list(out.terms) == ["soft_target", "soft_target_2", "soft_target_3"]
    for name, T in zip(out.terms, temps, strict=True):  # each name reports its own term's value
        np.testing.assert_allclose(
            out.terms[name].item(),
            T * T * ref_kl(_softmax(v, T), _softmax(z, T)).mean(),
            rtol=1e-12,
        )


def test_objective_names_stay_distinct_with_explicit_suffix_names():
    z, v, batch = _case(seed=16)
    obj = Objective([SoftTarget(name="soft_target_2"), SoftTarget(), SoftTarget()])
    names = [t.name for t in obj.terms]
    assert len(set(names)) == 3, names
    assert len(obj(ModelOutput(z), ModelOutput(v), batch).terms) == 3


# ---------------------------------------------------------------------------------------------
# Teacher gets no gradient
# ---------------------------------------------------------------------------------------------

TEACHER_TERMS = [
    lambda: SoftTarget(),
    lambda: SoftTarget(direction="reverse"),
    lambda: SoftTarget(divergence="js"),
    lambda: SoftTarget(divergence="renyi", alpha=0.5),
    lambda: SoftTarget(divergence="renyi", alpha=2.0, direction="reverse"),
    lambda: SoftCrossEntropy(),
    lambda: LogitMSE(),
    lambda: LogitMSE(center=True),
    lambda: Objective(hinton_loss(4.0, 0.9)),
]


@pytest.mark.parametrize("make", TEACHER_TERMS)
def test_teacher_gets_no_gradient(make):
    z, v, batch = _case(seed=17)
    z = z.clone().requires_grad_(True)
    teacher = nn.Linear(3, N).double()
    x = torch.randn(B, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    v_leaf = v.clone().requires_grad_(True)
    v_net = teacher(x) + v_leaf  # a teacher tensor with a graph and parameters behind it
    term = make()
    out = term(ModelOutput(z), ModelOutput(v_net), batch)
    loss = out.total if hasattr(out, "total") else out
    loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().max() > 0
    for t in [v_leaf, teacher.weight, teacher.bias]:
        assert t.grad is None or (t.grad == 0).all()


# ---------------------------------------------------------------------------------------------
# Low-precision logits
# ---------------------------------------------------------------------------------------------

LOW_PRECISION_TERMS = {
    "kl": lambda: SoftTarget(temperature=20.0),
    "reverse": lambda: SoftTarget(temperature=20.0, direction="reverse"),
    "js": lambda: SoftTarget(temperature=20.0, divergence="js"),
    "renyi0.5": lambda: SoftTarget(temperature=20.0, divergence="renyi", alpha=0.5),
    "renyi2": lambda: SoftTarget(temperature=20.0, divergence="renyi", alpha=2.0),
    "soft_ce": lambda: SoftCrossEntropy(temperature=20.0),
    "logit_mse": lambda: LogitMSE(),
    "ce": lambda: CrossEntropy(),
}


@pytest.mark.parametrize("dtype,rtol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("which", list(LOW_PRECISION_TERMS))
def test_half_precision_logits_at_t20(which, dtype, rtol):
    """Half/bfloat16 logits (scale ~5, T = 20): finite, within 1e-5 of float32 on the same rounded
    logits, and within the dtype's rounding (fp16 2e-3, bf16 2e-2) of float32 on the originals."""
    z, v, batch = _case(seed=18, b=32, n=N, scale=5.0)
    z32, v32 = z.float(), v.float()
    zl, vl = z32.to(dtype).requires_grad_(True), v32.to(dtype)
    term = LOW_PRECISION_TERMS[which]()
    low = _run(term, zl, vl, batch)
    assert torch.isfinite(low).all()
    same_rounding = _run(term, zl.detach().float(), vl.float(), batch)
    original = _run(term, z32, v32, batch)
    np.testing.assert_allclose(low.item(), same_rounding.item(), rtol=1e-5)
    np.testing.assert_allclose(low.item(), original.item(), rtol=rtol)
    (g,) = torch.autograd.grad(low, zl)
    assert g.dtype == dtype and torch.isfinite(g).all() and g.abs().max() > 0


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [0.0, -1.0, float("nan"), float("inf")])
@pytest.mark.parametrize("kind", ["soft_target", "soft_ce"])
def test_bad_temperature(kind, T):
    with pytest.raises(ConfigError, match="temperature must be a finite number > 0"):
        build_term({"type": kind, "temperature": T})
    with pytest.raises(ConfigError, match="temperature must be a finite number > 0"):
        (SoftTarget if kind == "soft_target" else SoftCrossEntropy)(temperature=T)
    with pytest.raises(ConfigError, match="temperature must be a finite number > 0"):
        hinton_loss(temperature=T)


@pytest.mark.parametrize("cls", [CrossEntropy, SoftTarget, SoftCrossEntropy, LogitMSE])
@pytest.mark.parametrize("weight", [-1.0, -1e-9, float("nan"), float("inf")])
def test_bad_weight(cls, weight):
    with pytest.raises(ConfigError, match=r"weight must be a finite number ≥ 0"):
        cls(weight=weight)
    with pytest.raises(ConfigError, match=rf"loss term '{cls.kind}'"):
        build_term({"type": cls.kind, "weight": weight})


def test_unknown_loss_type_lists_valid_and_suggests():
    with pytest.raises(ConfigError) as info:
        build_term({"type": "soft_targt", "temperature": 4})
    msg = str(info.value)
    assert "unknown loss 'soft_targt'" in msg
    assert "did you mean 'soft_target'" in msg
    listed = msg.split("valid losses: ")[1].split(", ")
    assert {"ce", "logit_mse", "soft_ce", "soft_target"} <= set(listed)
    with pytest.raises(ConfigError, match=r"valid losses: .*soft_target"):
        build_term({"temperature": 4})  # no type at all


def test_unknown_parameter_lists_valid_ones():
    with pytest.raises(ConfigError) as info:
        build_term({"type": "soft_target", "temp": 3})
    msg = str(info.value)
    assert "no parameter 'temp'" in msg
    assert (
        "valid parameters: weight, temperature, divergence, alpha, direction, t2_scaling, name"
        in msg
    )
    with pytest.raises(ConfigError, match="valid parameters: weight, center, name"):
        build_term({"type": "logit_mse", "centre": True})


@pytest.mark.parametrize(
    "spec,pattern",
    [
        (
            {"divergence": "kll"},
            r"unknown divergence 'kll'; "
            r"valid divergences: kl, reverse_kl, js, cross_entropy, renyi",
        ),
        ({"divergence": "kl", "alpha": 0.5}, r"alpha is only used by the 'renyi' divergence"),
        ({"divergence": "renyi"}, r"needs an order"),
        ({"divergence": "renyi", "alpha": -1.0}, r"alpha must be a number ≥ 0"),
        ({"divergence": "renyi", "alpha": float("nan")}, r"alpha must be a number ≥ 0"),
        ({"direction": "backward"}, r"direction must be 'forward' or 'reverse', got 'backward'"),
    ],
)
def test_bad_soft_target_options(spec, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_term({"type": "soft_target", **spec})


def test_bad_beta_and_label_smoothing():
    for beta in (-0.1, 1.5):
        with pytest.raises(ConfigError, match=r"beta must be in \[0, 1\]"):
            hinton_loss(beta=beta)
    with pytest.raises(ConfigError, match=r"label_smoothing must be in \[0, 1\)"):
        build_term({"type": "ce", "label_smoothing": 1.0})


@pytest.mark.parametrize("make", [SoftTarget, SoftCrossEntropy, LogitMSE])
def test_class_count_mismatch(make):
    z, v, batch = _case(seed=19)
    with pytest.raises(
        ConfigError, match=r"student logits \(6, 10\) and teacher logits \(6, 9\) differ"
    ):
        _run(make(), z, v[:, :9], batch)


@pytest.mark.parametrize("make", [SoftTarget, SoftCrossEntropy, LogitMSE])
def test_missing_teacher(make):
    z, _, batch = _case(seed=20)
    term = make()
    with pytest.raises(
        ConfigError, match=rf"loss term '{term.kind}' \({term.kind}\) needs a teacher"
    ):
        _run(term, z, None, batch)
    with pytest.raises(ConfigError, match="needs a teacher"):
        Objective([CrossEntropy(), make()])(ModelOutput(z), None, batch)


def test_objective_needs_a_term():
    with pytest.raises(ConfigError, match="at least one term"):
        Objective([])


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)
