"""Overhaul of feature distillation (OFD; Heo et al., ICCV 2019).

Teacher transform — a margin ReLU on the teacher's pre-ReLU response t: σ_m(t) = max(t, m_c),
with per-channel margin m_c = E[t_c | t_c < 0] (negative). Student transform — a regressor r
(1×1 convolution + BatchNorm) on the student's pre-ReLU response. Distance — partial L2, which
ignores a student response that is already below a non-positive teacher target:

    T = σ_m(t),  S = r(s),   d(T, S) = Σ_i { 0 if S_i ≤ T_i ≤ 0, (T_i − S_i)² otherwise }.

The margin. The paper computes m_c from the teacher's BatchNorm (γ_c, β_c) under a Gaussian
assumption: for t ~ N(μ, s²), E[t | t < 0] = μ − s·φ(μ/s)/Φ(−μ/s); where Φ(−μ/s) ≤ 0.001 the
authors' code uses −3s. A kdlab term sees features only, so it *measures* μ_c and s_c: it
accumulates per-channel sums of t and t² (buffers, saved in checkpoints) over the first
``margin_batches`` training batches, then keeps the margin fixed, and applies the same closed form
and fallback. kdlab's teacher runs in eval mode, so at a BatchNorm tap the measured moments are
those of its running-statistics output — ≈ β and |γ| when the running statistics fit the data
(the authors' CIFAR script runs its teacher in train mode, where they are β and |γ| exactly);
at any other pre-ReLU tap the margin is the Gaussian fit of that tap. Margins are per process
(under DDP each rank measures its own batches).

Normalisation: the paper states d summed over the feature; the authors' code
(clovaai/overhaul-distillation) sums over the batch too, divides by the batch size and by 1000
(CIFAR; 10000 in its ImageNet loop), and weights layer i of n by 2^−(n−i−1). ``reduction:
batchmean`` (default) is the per-sample sum averaged over the batch — set ``weight: 0.001``
(times the layer factor; 0.0001 for ImageNet) for the code's scale; ``mean`` averages over
every element.

Tap pre-ReLU outputs (e.g. ``features.1.1``, the BatchNorm before the ReLU of kdlab's SmallCNN):
the paper's distillation position is before the ReLU.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kdlab.errors import ConfigError
from kdlab.losses.base import check_reduction, register_term
from kdlab.losses.feature import FeatureTerm, flat
from kdlab.types import Batch, ModelOutput

REDUCTIONS = ("batchmean", "mean")
#: Below this P(t < 0) the conditional mean is unreliable; the authors' code then uses −3s.
MIN_NEGATIVE_MASS = 1e-3


def gaussian_negative_mean(mean: Tensor, std: Tensor) -> Tensor:
    """E[t | t < 0] for t ~ N(mean, std²), elementwise; −3·std where P(t < 0) ≤ 0.001."""
    std = std.clamp_min(torch.finfo(std.dtype).tiny)
    z = mean / std
    negative_mass = 0.5 * torch.erfc(z / math.sqrt(2.0))  # Φ(−z)
    density = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)  # φ(z)
    conditional = mean - std * density / negative_mass.clamp_min(MIN_NEGATIVE_MASS)
    return torch.where(negative_mass > MIN_NEGATIVE_MASS, conditional, -3.0 * std)


def margin_relu(teacher: Tensor, margin: Tensor) -> Tensor:
    """σ_m(t) = max(t, m_c) with ``margin`` [C] broadcast over the channel axis (axis 1)."""
    return torch.maximum(teacher, margin.view(1, -1, *([1] * (teacher.dim() - 2))))


def partial_l2(student: Tensor, target: Tensor, reduction: str = "batchmean") -> Tensor:
    """Σ (T − S)² except where S ≤ T ≤ 0; ``batchmean`` (per sample, mean over the batch) or
    ``mean`` (over every element)."""
    check_reduction(reduction, REDUCTIONS)
    counted = (student > target) | (target > 0)
    squared = (target - student).pow(2) * counted.to(student.dtype)
    return squared.mean() if reduction == "mean" else flat(squared).sum(1).mean()


def ofd_loss(
    student: Tensor, teacher: Tensor, margin: Tensor, *, reduction: str = "batchmean"
) -> Tensor:
    """Partial L2 between the regressed student response and σ_m(teacher) (margin per channel)."""
    return partial_l2(student, margin_relu(teacher, margin.to(teacher.dtype)), reduction)


@register_term
class OverhaulDistillation(FeatureTerm):
    """OFD: partial L2 to the margin-ReLU'd teacher through a 1×1 conv + BN regressor."""

    kind = "ofd"
    match = "all"

    def __init__(
        self,
        student: str | None = None,
        teacher: str | None = None,
        weight: float = 1.0,
        margin_batches: int = 50,
        reduction: str = "batchmean",
        adapter: str = "conv",
        adapter_bn: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(student, teacher, weight, adapter, adapter_bn, name)
        if (
            isinstance(margin_batches, bool)
            or not isinstance(margin_batches, int)
            or (margin_batches < 1)
        ):
            raise ConfigError(
                "margin_batches must be a positive integer (how many training batches measure "
                f"the teacher's margin), got {margin_batches!r}"
            )
        check_reduction(reduction, REDUCTIONS)
        self.margin_batches, self.reduction = margin_batches, reduction
        # Per-channel Σt, Σt² and the element count, sized in prepare (float64: long sums).
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("moments", torch.zeros(3, 0, dtype=torch.float64))

    def prepare(
        self, student: ModelOutput, teacher: ModelOutput | None, sample: Batch | None = None
    ) -> None:
        super().prepare(student, teacher, sample)
        feature = self._read(self._teacher(teacher), self.teacher_path, "teacher")
        if self.moments.shape[1] != feature.shape[1]:
            self.moments = torch.zeros(3, feature.shape[1], dtype=torch.float64,
                                       device=feature.device)  # fmt: skip
            self.batches_seen.zero_()

    @torch.no_grad()
    def observe(self, teacher: Tensor) -> None:
        """Add one batch of pre-ReLU teacher responses [B, C, ...] to the margin's moments."""
        values = teacher.detach().to(torch.float64).transpose(0, 1).reshape(teacher.shape[1], -1)
        self.moments[0] += values.sum(1)
        self.moments[1] += values.pow(2).sum(1)
        self.moments[2] += values.shape[1]
        self.batches_seen += 1

    def margin(self) -> Tensor:
        """m_c = E[t_c | t_c < 0] of the Gaussian fitted to the observed responses [C]."""
        if not bool(self.moments[2].gt(0).all()):
            raise ConfigError(
                f"{self._where()}the margin is measured on training batches, but none was seen; "
                "call the term in training mode first (kdlab's schemes do)"
            )
        total, squares, count = self.moments
        mean = total / count
        std = (squares / count - mean.pow(2)).clamp_min(0).sqrt()
        return gaussian_negative_mean(mean, std)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        s, t = self.features(student, teacher)
        if self.moments.shape[1] != t.shape[1]:
            raise ConfigError(
                f"{self._where()}the margin's statistics are not built; call "
                "kdlab.losses.feature.prepare_terms first (kdlab's schemes do it in prepare())"
            )
        if self.training and int(self.batches_seen) < self.margin_batches:
            self.observe(t)
        return ofd_loss(s, t, self.margin(), reduction=self.reduction)
