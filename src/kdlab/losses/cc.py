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

import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import ConfigError
from kdlab.losses.base import register_term
from kdlab.losses.feature import flat
from kdlab.losses.relation import RelationTerm
from kdlab.types import Batch, ModelOutput


def taylor_rbf_coefficients(gamma: float, order: int) -> list[float]:
    """exp(−2γ)·(2γ)^p / p! for p = 0..P: the Taylor weights of the unit-vector RBF kernel."""
    return [
        math.exp(-2.0 * gamma) * (2.0 * gamma) ** p / math.factorial(p) for p in range(order + 1)
    ]


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
    diff = correlation_matrix(teacher, gamma=gamma, order=order) - correlation_matrix(
        student, gamma=gamma, order=order
    )
    return diff.pow(2).sum() / (b * b)


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
        if isinstance(order, bool) or not isinstance(order, int) or not 0 <= order <= 50:
            raise ConfigError(
                f"order must be a whole number from 0 to 50 (the Taylor order P; the paper uses "
                f"2), got {order!r}"
            )
        self.gamma, self.order = float(gamma), int(order)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        s, t = self.flat_features(student, teacher)
        return cc_loss(s, t, gamma=self.gamma, order=self.order)


__all__ = ["CorrelationCongruence", "cc_loss", "correlation_matrix", "taylor_rbf_coefficients"]
