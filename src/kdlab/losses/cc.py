"""Correlation congruence (Peng et al., ICCV 2019, "Correlation Congruence for Knowledge
Distillation").

Each model's embeddings f_i (per-sample vectors, flattened; e.g. the penultimate layer) are
L2-normalised, and the batch's correlation matrix ψ(F) [B × B] holds the Gaussian RBF kernel
k(f_i, f_j) = exp(−γ‖f_i − f_j‖²) in the paper's P-order Taylor form: for unit vectors
‖f_i − f_j‖² = 2 − 2 f_iᵀf_j, so

    k(f_i, f_j) ≈ Σ_{p=0..P} exp(−2γ) · (2γ)^p / p! · (f_iᵀ f_j)^p,

which tends to the exact kernel as P grows. The loss is L_CC = ‖ψ(F_T) − ψ(F_S)‖²_F / B².
Defaults P = 2 and γ = 0.4: P = 2 is the paper's choice for the RBF kernel; γ = 0.4 is the
value of Knowledge-Distillation-Zoo's CIFAR scripts (with weight 100), which we could not
check against the paper's text.

Usable range: P from 1 to 50 (P = 0 leaves only the constant exp(−2γ): a loss of 0), and γ up to
25.4 at P = 2 (71.7 at P = 50; see ``max_gamma``). Beyond that every weight is below 1e-19,
the loss (a product of two weights) underflows in float32, and the term never trains, so
kdlab refuses such a γ. The weights are computed in log space, and the term in float32 or wider
(also under mixed precision).

Embedding sizes may differ: ψ is B × B on both sides, so no adapter is needed (``adapter:
linear`` adds a trainable one on the student side anyway). The paper compares embeddings of
equal size; a linear map in front of a normalised kernel only lets the student re-weight
directions its own last layer could re-weight as well, so kdlab leaves it out by default.

Paper vs code: the paper's full objective is α·CE + (1 − α)·KD + β·L_CC — combine this term
with ``soft_target`` for it. RepDistiller's ``Correlation`` (its "CC", weight β = 0.02) is a
different function — the mean over neighbouring samples i, i+1 of Σ_d |s − t|_{i,d}·|s − t|_{i+1,d}
on trainable 128-d embeddings — not the kernel matrix above; kdlab follows the paper.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.divergences import at_least_float32
from kdlab.errors import ConfigError
from kdlab.losses.base import register_term
from kdlab.losses.feature import flat
from kdlab.losses.relation import RelationTerm
from kdlab.types import Batch, ModelOutput

#: The smallest Taylor weight kept usable: the loss and its gradient are products of two
#: weights, which below √(float32's smallest normal) ≈ 1.1e-19 underflow, leaving the term 0.
MIN_WEIGHT = math.sqrt(torch.finfo(torch.float32).tiny)
#: The largest Taylor order P.
MAX_ORDER = 50


def log_taylor_rbf_coefficients(gamma: float, order: int) -> list[float]:
    """log(exp(−2γ)·(2γ)^p / p!) for p = 0..P, in log space so that no γ or P overflows."""
    log_two_gamma = math.log(2.0 * gamma)
    return [-2.0 * gamma + p * log_two_gamma - math.lgamma(p + 1) for p in range(order + 1)]


def taylor_rbf_coefficients(gamma: float, order: int) -> list[float]:
    """exp(−2γ)·(2γ)^p / p! for p = 0..P: the Taylor weights of the unit-vector RBF kernel."""
    return [math.exp(c) for c in log_taylor_rbf_coefficients(gamma, order)]


def max_gamma(order: int) -> float:
    """The largest γ whose largest Taylor weight (p ≤ ``order``) is still ≥ ``MIN_WEIGHT``."""
    floor = math.log(MIN_WEIGHT)
    low, high = 0.5, 1.0  # the largest weight only falls with γ beyond 2γ = P, where it is p = P
    while max(log_taylor_rbf_coefficients(high, order)) >= floor:
        low, high = high, 2 * high
    for _ in range(60):  # bisection to float precision
        mid = (low + high) / 2
        if max(log_taylor_rbf_coefficients(mid, order)) >= floor:
            low = mid
        else:
            high = mid
    return low


def correlation_matrix(x: Tensor, *, gamma: float = 0.4, order: int = 2) -> Tensor:
    """ψ(F) [B, B]: the Taylor-approximated RBF kernel between the L2-normalised rows of ``x``."""
    u = F.normalize(flat(x), dim=1, eps=1e-12)
    cosine = u @ u.T
    total = cosine.new_zeros(cosine.shape)
    power = cosine.new_ones(cosine.shape)
    for coefficient in taylor_rbf_coefficients(gamma, order):
        total = total + coefficient * power
        power = power * cosine
    return total


def cc_loss(student: Tensor, teacher: Tensor, *, gamma: float = 0.4, order: int = 2) -> Tensor:
    """‖ψ(F_T) − ψ(F_S)‖²_F / B² for embeddings [B, ...] of any (per-model) size."""
    b = student.shape[0]
    if b != teacher.shape[0] or b < 2:
        raise ValueError(
            f"cc_loss needs the same batch of ≥ 2 samples from both models, got student "
            f"{tuple(student.shape)} and teacher {tuple(teacher.shape)}"
        )
    # float32 at least, also under mixed precision: the weights are chosen to fit float32
    with torch.autocast(student.device.type, enabled=False):
        s, t = at_least_float32(student), at_least_float32(teacher)
        diff = correlation_matrix(t, gamma=gamma, order=order) - correlation_matrix(
            s, gamma=gamma, order=order
        )
        return diff.pow(2).sum() / (b * b)


def _check_gamma(gamma: float, order: int) -> None:
    """Refuse a γ whose Taylor weights are all too small for float32: the term is then 0."""
    if max(log_taylor_rbf_coefficients(gamma, order)) >= math.log(MIN_WEIGHT):
        return
    usable = f"gamma ≤ {_floor(max_gamma(order))} at order {order}"
    if order < MAX_ORDER:
        usable += f" (≤ {_floor(max_gamma(MAX_ORDER))} at order {MAX_ORDER})"
    raise ConfigError(
        f"gamma {gamma:g} is too large for order {order}: every Taylor weight "
        f"exp(−2γ)·(2γ)^p/p! is below {MIN_WEIGHT:.1e}, so the loss underflows to 0 in float32 "
        f"and the term never trains; use {usable}; the default is 0.4"
    )


def _floor(bound: float) -> float:
    return math.floor(bound * 10) / 10  # rounded down, so that the value shown is accepted


@register_term
class CorrelationCongruence(RelationTerm):
    """‖ψ(F_T) − ψ(F_S)‖²_F / B², ψ the P-order Taylor RBF kernel matrix of the batch."""

    kind = "cc"

    def __init__(
        self,
        student: str | None = None,
        teacher: str | None = None,
        weight: float = 1.0,
        gamma: float = 0.4,
        order: int = 2,
        adapter: str = "auto",
        adapter_bn: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(student, teacher, weight, adapter, adapter_bn, name)
        if not (gamma > 0 and math.isfinite(gamma)):
            raise ConfigError(f"gamma must be a finite number > 0 (e.g. 0.4), got {gamma!r}")
        if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= MAX_ORDER:
            raise ConfigError(
                f"order must be a whole number from 1 to {MAX_ORDER} (the Taylor order P; the "
                f"paper uses 2), got {order!r}; order 0 keeps only the constant exp(−2γ), so the "
                "term would always be 0"
            )
        _check_gamma(float(gamma), order)
        self.gamma, self.order = float(gamma), int(order)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        s, t = self.flat_features(student, teacher)
        return cc_loss(s, t, gamma=self.gamma, order=self.order)


__all__ = [
    "MAX_ORDER",
    "MIN_WEIGHT",
    "CorrelationCongruence",
    "cc_loss",
    "correlation_matrix",
    "log_taylor_rbf_coefficients",
    "max_gamma",
    "taylor_rbf_coefficients",
]
