"""VID (Ahn et al. 2019) and activation boundaries (Heo et al. 2019): values against explicit
float64 references, the closed-form gradient of VID's variance parameters, AB's zero once the
margin is met, gradients that never reach the teacher, and the errors of bad configurations."""

from __future__ import annotations

import math

import pytest
import torch

from feature_helpers import outputs, rand
from kdlab.errors import ConfigError
from kdlab.losses.ab import ActivationBoundary, ab_loss
from kdlab.losses.base import build_term
from kdlab.losses.vid import VID, vid_loss


def built_vid(s: torch.Tensor, t: torch.Tensor, **options) -> tuple[VID, tuple]:
    term = VID(student="s", teacher="t", **options)
    so, to, batch = outputs(s, t)
    term.prepare(so, to)
    term.double()
    with torch.no_grad():  # random α, so the variance term of the gradient is not trivial
        term.alpha.copy_(rand(t.shape[1], seed=7))
    return term, (so, to, batch)


def vid_reference(mean: torch.Tensor, t: torch.Tensor, alpha: torch.Tensor, eps: float) -> float:
    """mean over batch and positions of Σ_c [log σ_c + (t − μ)² / (2σ_c²)], explicit loops."""
    b, c, h, w = t.shape
    total = 0.0
    for i in range(b):
        for y in range(h):
            for x in range(w):
                for k in range(c):
                    var = math.log1p(math.exp(float(alpha[k]))) + eps
                    diff = float(t[i, k, y, x]) - float(mean[i, k, y, x])
                    total += 0.5 * math.log(var) + diff * diff / (2 * var)
    return total / (b * h * w)


def test_vid_matches_the_reference_and_its_reductions() -> None:
    s, t = rand(3, 4, 5, 5, seed=1), rand(3, 6, 5, 5, seed=2)
    term, (so, to, batch) = built_vid(s, t, eps=1e-3)
    value = float(term(so, to, batch).detach())
    mean = term.connector(s).detach()
    assert value == pytest.approx(vid_reference(mean, t, term.alpha.detach(), 1e-3), rel=1e-10)
    alpha = term.alpha.detach()
    per_mean = float(vid_loss(mean, t, alpha, eps=1e-3, reduction="mean"))
    per_map = float(vid_loss(mean, t, alpha, eps=1e-3, reduction="batchmean"))
    assert per_mean == pytest.approx(value / 6) and per_map == pytest.approx(value * 25)


def test_vid_alpha_gradient_is_the_closed_form_and_the_teacher_gets_none() -> None:
    s, t = rand(4, 3, 2, 2, seed=3), rand(4, 5, 2, 2, seed=4)
    s.requires_grad_(True)
    t.requires_grad_(True)
    term, (so, to, batch) = built_vid(s, t)
    term(so, to, batch).backward()
    mean, alpha = term.connector(s).detach(), term.alpha.detach()
    var = torch.nn.functional.softplus(alpha) + term.eps
    residual = (t.detach() - mean).pow(2).mean((0, 2, 3))  # mean over batch and positions
    # d/dα_c of ½ log v_c + r/(2 v_c), v_c = softplus(α_c) + ε: (1/(2v) − r/(2v²))·sigmoid(α)
    expected = (0.5 / var - residual / (2 * var.pow(2))) * torch.sigmoid(alpha)
    assert torch.allclose(term.alpha.grad, expected, rtol=1e-9, atol=1e-12)
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert all(p.grad is not None for p in term.connector.parameters())


def test_vid_starts_at_the_initial_variance_and_handles_vectors() -> None:
    term = VID(student="s", teacher="t", init_variance=5.0)
    so, to, batch = outputs(rand(6, 8), rand(6, 12))
    term.prepare(so, to)
    assert torch.allclose(term.variance(), torch.full((12,), 5.0, dtype=torch.float64), atol=1e-6)
    layers = [type(m).__name__ for m in term.connector]
    assert layers == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert term.connector[0].out_features == 12  # hidden defaults to the teacher's width
    term.double()
    assert torch.isfinite(term(so, to, batch))


def built_ab(s: torch.Tensor, t: torch.Tensor, **options) -> tuple[ActivationBoundary, tuple]:
    term = ActivationBoundary(student="s", teacher="t", **options)
    so, to, batch = outputs(s, t)
    term.prepare(so, to)
    term.double()
    return term, (so, to, batch)


def ab_reference(s: torch.Tensor, t: torch.Tensor, margin: float) -> float:
    """mean_b Σ_i [ρ(t)·relu(m − s)² + (1 − ρ(t))·relu(m + s)²], explicit loops."""
    total = 0.0
    for i in range(s.shape[0]):
        for sv, tv in zip(s[i].flatten().tolist(), t[i].flatten().tolist(), strict=True):
            total += max(margin - sv, 0.0) ** 2 if tv > 0 else max(margin + sv, 0.0) ** 2
    return total / s.shape[0]


def test_ab_matches_the_reference_through_its_connector() -> None:
    s, t = rand(3, 4, 3, 3, seed=5), rand(3, 6, 3, 3, seed=6)
    term, (so, to, batch) = built_ab(s, t, margin=0.7)
    assert [type(m).__name__ for m in term.connector] == ["Conv2d", "BatchNorm2d"]
    value = float(term(so, to, batch).detach())
    connected = term.connector(s).detach()  # the paper's r(s); BatchNorm in training mode
    assert value == pytest.approx(ab_reference(connected, t, 0.7), rel=1e-10)
    mean = float(ab_loss(connected, t, margin=0.7, reduction="mean"))
    assert mean == pytest.approx(value / (6 * 9))


def test_ab_is_zero_once_the_margin_is_met_and_not_before() -> None:
    t = rand(4, 5, 3, 3, seed=8)
    sign = torch.where(t > 0, 1.0, -1.0).double()
    assert float(ab_loss(5.0 * sign, t, margin=1.0)) == 0.0
    assert float(ab_loss(1.0 * sign, t, margin=1.0)) == 0.0  # exactly on the margin
    # half-way: every element contributes (m − 0.5)² = 0.25
    assert float(ab_loss(0.5 * sign, t, margin=1.0)) == pytest.approx(0.25 * 45)
    assert float(ab_loss(-5.0 * sign, t, margin=1.0)) == pytest.approx(36 * 45)


def test_ab_gradients_reach_the_student_and_connector_never_the_teacher() -> None:
    s, t = rand(4, 3, 2, 2, seed=9), rand(4, 5, 2, 2, seed=10)
    s.requires_grad_(True)
    t.requires_grad_(True)
    term, (so, to, batch) = built_ab(s, t)
    term(so, to, batch).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in term.connector.parameters())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "vid", "student": "a", "teacher": "b", "hidden": 0}, "hidden must be a positive"),
        ({"type": "vid", "student": "a", "teacher": "b", "init_variance": 0}, "init_variance must"),
        ({"type": "vid", "student": "a", "teacher": "b", "eps": 0}, "eps must be > 0"),
        ({"type": "vid", "student": "a", "teacher": "b", "reduction": "sum"}, "channels, mean"),
        ({"type": "vid", "teacher": "b"}, "needs the student's module path"),
        ({"type": "ab", "student": "a", "teacher": "b", "margin": -1}, "margin must be"),
        ({"type": "ab", "student": "a", "teacher": "b", "reduction": "sum"}, "of batchmean, mean"),
        ({"type": "ab", "student": "a", "teacher": "b", "adapter": "1x1"}, "adapter must be one"),
    ],
)  # fmt: skip
def test_bad_configs_name_the_fix(spec, message) -> None:
    with pytest.raises(ConfigError, match=message):
        build_term(spec)


def test_bad_feature_shapes_name_the_fix() -> None:
    so, to, _ = outputs(rand(2, 4), rand(2, 3, 2, 2))
    with pytest.raises(ConfigError, match="same rank"):
        VID(student="s", teacher="t").prepare(so, to)
    so, to, _ = outputs(rand(2, 4), rand(2, 6))
    with pytest.raises(ConfigError, match="use adapter: linear"):
        ActivationBoundary(student="s", teacher="t").prepare(so, to)
    term = ActivationBoundary(student="s", teacher="t", adapter="linear", adapter_bn=False)
    term.prepare(so, to)  # vectors work with a linear connector
    with pytest.raises(ConfigError, match="prepare_terms"):
        VID(student="s", teacher="t")(*outputs(rand(2, 4), rand(2, 6)))
