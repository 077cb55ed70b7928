"""DKD (kdlab.losses.dkd): value against a float64 loop reference of the paper's formulas, the
KD = TCKD + (1 − p_t^T)·NCKD identity against soft_target, warm-up, gradients, bad input, and
the Fashion-MNIST example on digits."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from kdlab.config import parse_config
from kdlab.errors import ConfigError
from kdlab.experiment import run_experiment
from kdlab.losses import build_term
from kdlab.losses.dkd import DKD, dkd_loss, dkd_parts
from kdlab.losses.response import SoftTarget
from kdlab.types import Batch, ModelOutput
from test_dist_standardize import _z_score_by_hand
from test_examples import on_digits_for_one_epoch

B, N = 6, 7


def _case(seed: int = 0, b: int = B, n: int = N, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, n, generator=g, dtype=torch.float64) * scale
    v = torch.randn(b, n, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, n, (b,), generator=g)
    return z, v, y


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


def ref_parts(z, v, y, T: float) -> tuple[list[float], list[float], list[float]]:
    """Per-sample TCKD, NCKD and p_t^T from the paper's definitions, with explicit loops."""
    tckd, nckd, teacher_pt = [], [], []
    for i in range(len(y)):
        t = int(y[i])
        probs = []
        for logits in (v[i].tolist(), z[i].tolist()):  # teacher first, as in KL(teacher ‖ student)
            m = max(logits)
            e = [math.exp((x - m) / T) for x in logits]
            probs.append([x / sum(e) for x in e])
        p_t, p_s = probs
        b_t, b_s = [p_t[t], 1 - p_t[t]], [p_s[t], 1 - p_s[t]]
        hat_t = [p_t[j] / (1 - p_t[t]) for j in range(len(p_t)) if j != t]
        hat_s = [p_s[j] / (1 - p_s[t]) for j in range(len(p_s)) if j != t]
        tckd.append(_kl(b_t, b_s))
        nckd.append(_kl(hat_t, hat_s))
        teacher_pt.append(p_t[t])
    return tckd, nckd, teacher_pt


def _run(term, z, v, y, epoch: int = 100):
    return term(ModelOutput(z), ModelOutput(v), Batch(torch.zeros(len(y), 1), y, epoch=epoch))


@pytest.mark.parametrize(("alpha", "beta", "T"), [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (2.0, 0, 7)])
def test_value_matches_loop_reference(alpha, beta, T):
    z, v, y = _case(seed=int(T))
    tckd, nckd, _ = ref_parts(z, v, y, T)
    expected = T * T * sum(alpha * a + beta * b for a, b in zip(tckd, nckd, strict=True)) / B
    term = DKD(alpha=alpha, beta=beta, temperature=T, warmup=0)
    assert _run(term, z, v, y).item() == pytest.approx(expected, rel=1e-12)
    got_t, got_n = dkd_parts(z, v, y, T)
    for got, ref in ((got_t, tckd), (got_n, nckd)):
        expected = torch.tensor(ref, dtype=torch.float64)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_is_tckd_plus_teacher_weighted_nckd(T):
    """Paper eq. 1: KD = TCKD + (1 − p_t^T)·NCKD, per sample, so kdlab's soft_target equals it;
    DKD with α = β = 1 drops the (1 − p_t^T) factor and so exceeds KD."""
    z, v, y = _case(seed=3)
    tckd, nckd = dkd_parts(z, v, y, T)
    p_target = torch.softmax(v / T, 1).gather(1, y.view(-1, 1)).squeeze(1)
    kd = _run(SoftTarget(temperature=T), z, v, y)
    torch.testing.assert_close(
        kd, T * T * (tckd + (1 - p_target) * nckd).mean(), rtol=1e-12, atol=0
    )
    dkd = _run(DKD(alpha=1.0, beta=1.0, temperature=T, warmup=0), z, v, y)
    assert dkd.item() > kd.item() * (1 + 1e-3)


def test_zero_for_identical_logits_and_positive_otherwise():
    z, v, y = _case(seed=4)
    assert _run(DKD(warmup=0), z, z.clone(), y).item() == pytest.approx(0.0, abs=1e-12)
    assert _run(DKD(warmup=0), z, v, y).item() > 0.1


@pytest.mark.parametrize(("epoch", "factor"), [(0, 0.25), (1, 0.5), (3, 1.0), (50, 1.0)])
def test_warmup_factor_follows_zero_based_epoch(epoch, factor):
    z, v, y = _case(seed=5)
    full = _run(DKD(warmup=0), z, v, y, epoch=0).item()
    assert _run(DKD(warmup=4), z, v, y, epoch=epoch).item() == pytest.approx(factor * full)
    assert DKD(warmup=20).warmup_factor(0) == pytest.approx(1 / 20)  # the paper's first epoch


def test_gradient_reaches_only_the_student():
    z, v, y = _case(seed=6)
    z.requires_grad_(True)
    v.requires_grad_(True)
    _run(DKD(warmup=0), z, v, y).backward()
    assert v.grad is None
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def _non_target_kl(z, v, y, T: float) -> list[float]:
    """NCKD from softmax over the non-target logits alone (the same p̂, never forming 1 − p_t)."""
    out = []
    for i in range(len(y)):
        hats = []
        for logits in (v[i].tolist(), z[i].tolist()):
            rest = [x / T for j, x in enumerate(logits) if j != int(y[i])]
            e = [math.exp(x - max(rest)) for x in rest]
            hats.append([x / sum(e) for x in e])
        out.append(_kl(*hats))
    return out


def test_extreme_logits_stay_finite_where_a_minus_1000_mask_fails():
    """Target logit/T 5000 above the rest: masking by −1000 would leave the target in p̂, and
    log(1 − p_t) of a summed probability would be log 0."""
    z, v, y = _case(seed=7, scale=1.0)
    z, v = z.float(), v.float()
    v[torch.arange(B), y] += 20000.0
    z.requires_grad_(True)
    value = dkd_loss(z, v, y, temperature=4.0)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(z.grad).all()
    z64, v64 = z.detach().double(), v.double()
    _, nckd = dkd_parts(z64, v64, y, 4.0)
    expected = torch.tensor(_non_target_kl(z64, v64, y, 4.0), dtype=torch.float64)
    torch.testing.assert_close(nckd, expected, rtol=1e-10, atol=1e-14)


def test_standardize_ignores_each_models_logit_shift_and_scale():
    z, v, y = _case(seed=8)
    term = DKD(warmup=0, standardize=True, temperature=2.0)
    base = _run(term, z, v, y).item()
    moved = _run(term, 3.0 * z - 5.0, 0.5 * v + 2.0, y).item()
    assert moved == pytest.approx(base, rel=1e-10)
    assert _run(DKD(warmup=0, temperature=2.0), 3.0 * z, v, y).item() != pytest.approx(base)


@pytest.mark.parametrize("T", [4.0, 2.0])
def test_standardize_z_scores_before_the_base_temperature(T):
    """Sun et al. 2024: softmax(z-score(z) / T), so T survives standardization; z-scoring z / T
    would drop it and leave softmax at temperature 1."""
    z, v, y = _case(seed=9)
    zs, vs = _z_score_by_hand(z), _z_score_by_hand(v)
    got = _run(DKD(alpha=1.0, beta=8.0, temperature=T, warmup=0, standardize=True), z, v, y)
    plain = _run(DKD(alpha=1.0, beta=8.0, temperature=T, warmup=0), zs, vs, y)
    torch.testing.assert_close(got, plain, rtol=1e-9, atol=1e-12)
    tckd, nckd, _ = ref_parts(zs, vs, y, T)
    expected = T * T * sum(a + 8.0 * b for a, b in zip(tckd, nckd, strict=True)) / B
    assert got.item() == pytest.approx(expected, rel=1e-9)
    assert _run(DKD(temperature=T, warmup=0), z, v, y).item() != pytest.approx(expected, rel=1e-3)


def _prepare(term: DKD, epochs: int) -> None:
    z, v, y = _case()
    term.prepare(ModelOutput(z), ModelOutput(v), Batch(torch.zeros(B, 1), y, epochs=epochs))


def test_warmup_longer_than_training_is_refused_in_prepare():
    with pytest.raises(ConfigError, match=r"warmup is 20 epochs but training runs only 10.*≤ 10"):
        _prepare(DKD(), 10)
    _prepare(DKD(warmup=10), 10)  # equal is fine
    _prepare(DKD(), 0)  # unknown length: nothing to check


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"alpha": -1}, "alpha must be a finite number ≥ 0"),
        ({"beta": float("nan")}, "beta must be a finite number ≥ 0"),
        ({"alpha": 0, "beta": 0}, "both 0.*set the term's weight to 0"),
        ({"temperature": 0}, "temperature must be a finite number > 0"),
        ({"warmup": -2}, "warmup is a number of epochs, an integer ≥ 0"),
        ({"warmup": 2.5}, "warmup must be an integer"),
    ],
)
def test_bad_parameters_name_the_fix(spec, match):
    with pytest.raises(ConfigError, match=match):
        build_term({"type": "dkd", **spec})


def test_bad_labels_name_the_fix():
    z, v, y = _case()
    with pytest.raises(ConfigError, match="one integer class label per sample"):
        dkd_loss(z, v, torch.rand(B, N))
    with pytest.raises(ConfigError, match=r"labels must lie in \[0, 6\]"):
        dkd_loss(z, v, torch.full((B,), N))
    with pytest.raises(ConfigError, match="must predict the same classes"):
        dkd_loss(z, v[:, :-1], y)


def test_fashion_mnist_example_runs_on_digits():
    path = Path(__file__).resolve().parents[1] / "examples" / "fashion_mnist_dkd.yaml"
    raw = on_digits_for_one_epoch(path)
    for term in raw["distill"]["loss"]:
        if term["type"] == "dkd":
            assert 0 < term["warmup"] <= 10  # the file's 10 epochs
            term["warmup"] = 1  # shrunk to one epoch, like the run itself
    result = run_experiment(parse_config(raw, str(path)), progress=False)
    distilled = [r for r in result.runs if r.role.startswith("distilled")]
    assert distilled and math.isfinite(distilled[0].history[-1]["dkd"])
    assert distilled[0].history[-1]["dkd"] > 0  # the teacher's predictions were distilled
