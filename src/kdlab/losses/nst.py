"""Neuron selectivity transfer (Huang & Wang 2017, "Like What You Like: Knowledge Distill via
Neuron Selectivity Transfer").

Each channel k of a feature map A [C, H, W] is one sample f_k = vec(A_k) / ‖vec(A_k)‖₂ ∈ R^{HW}
(its spatial "selectivity pattern"); a map is a distribution of C such samples. The loss is the
squared maximum mean discrepancy between the teacher's and the student's channel distributions,

    MMD²(T, S) = (1/C_T²) Σ_ii' k(t_i, t_i') + (1/C_S²) Σ_jj' k(s_j, s_j')
                 − (2/(C_T·C_S)) Σ_ij k(t_i, s_j),

with the polynomial kernel k(x, y) = (xᵀy + c)^d (paper default d = 2, c = 0; d = 1, c = 0 is
the paper's linear kernel, ‖mean_i t_i − mean_j s_j‖²), averaged over the batch. The channel
counts may differ; the positions must correspond, so the spatial sizes must match: when they
differ the student's map is resized to the teacher's (adaptive average pooling when shrinking,
bilinear when growing — kdlab's parameter-free adapter) before the normalisation.

Paper vs code: the paper's objective is H(y, p_S) + (λ/2)·MMD²; RepDistiller's ``NSTLoss`` (the
reference most CIFAR numbers come from) computes the same MMD² with d = 2, c = 0, averaged over
the batch — kdlab's value equals it; its CIFAR-100 weight β = 50 plays the role of λ/2. Where
the sizes differ RepDistiller pools whichever map is larger, the teacher's included; kdlab never
alters the teacher's map and resizes the student's instead (identical whenever the student's map
is the larger one, the usual case).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import ConfigError
from kdlab.losses.base import register_term
from kdlab.losses.feature import FeatureTerm
from kdlab.types import Batch, ModelOutput


def channel_distribution(a: Tensor, eps: float = 1e-12) -> Tensor:
    """[B, C, H·W]: each channel's map flattened and L2-normalised (NST's samples f_k)."""
    return F.normalize(a.reshape(a.shape[0], a.shape[1], -1), dim=2, eps=eps)


def mean_polynomial_kernel(x: Tensor, y: Tensor, degree: int, constant: float) -> Tensor:
    """[B]: mean over i, j of (x_iᵀ y_j + c)^d for samples x [B, n, D] and y [B, m, D]."""
    return (x @ y.transpose(1, 2) + constant).pow(degree).mean((1, 2))


def nst_loss(student: Tensor, teacher: Tensor, *, degree: int = 2, constant: float = 0.0) -> Tensor:
    """Batch mean of MMD²(teacher channels, student channels) with k(x, y) = (xᵀy + c)^d.

    ``student`` [B, C_S, H, W] and ``teacher`` [B, C_T, H, W] (any per-sample shape whose first
    axis is channels) must have the same number of positions per channel.
    """
    s, t = channel_distribution(student), channel_distribution(teacher)
    if s.shape[0] != t.shape[0] or s.shape[2] != t.shape[2]:
        raise ValueError(
            f"nst_loss needs the same batch and positions per channel, got student "
            f"{tuple(student.shape)} and teacher {tuple(teacher.shape)}; resize one map first"
        )
    mmd = (
        mean_polynomial_kernel(t, t, degree, constant)
        + mean_polynomial_kernel(s, s, degree, constant)
        - 2.0 * mean_polynomial_kernel(s, t, degree, constant)
    )
    return mmd.mean()


@register_term
class NeuronSelectivityTransfer(FeatureTerm):
    """mean over the batch of MMD²(channels of A^T, channels of A^S), polynomial kernel."""

    kind = "nst"
    match = "spatial"
    ranks = (3,)

    def __init__(
        self,
        student: str | None = None,
        teacher: str | None = None,
        weight: float = 1.0,
        degree: int = 2,
        constant: float = 0.0,
        adapter: str = "auto",
        adapter_bn: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(student, teacher, weight, adapter, adapter_bn, name)
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
            raise ConfigError(
                f"degree must be a whole number ≥ 1 (2 is the paper's polynomial kernel, 1 the "
                f"linear one), got {degree!r}"
            )
        if not constant >= 0:
            raise ConfigError(
                f"constant must be ≥ 0 (the kernel (xᵀy + c)^d is a valid kernel only then; the "
                f"paper uses 0), got {constant!r}"
            )
        self.degree, self.constant = int(degree), float(constant)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        s, t = self.features(student, teacher)
        return nst_loss(s, t, degree=self.degree, constant=self.constant)


__all__ = ["NeuronSelectivityTransfer", "channel_distribution", "nst_loss"]
