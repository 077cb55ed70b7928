"""Activation boundaries (Heo et al., AAAI 2019): the student learns *where* each teacher neuron
switches on, not how strongly.

With pre-ReLU responses t of the teacher, the student's pre-ReLU responses s mapped by a
connector r (1×1 convolution + BatchNorm in the paper; a linear layer for vectors),
ρ(t) = 1[t > 0] and a margin m (paper: 1):

    L = mean_b Σ_i [ ρ(t_i)·relu(m − r(s)_i)² + (1 − ρ(t_i))·relu(m + r(s)_i)² ]

— zero once every student neuron is on the teacher's side of zero by at least m.

Normalisation: the paper writes the squared norm per sample (``reduction: batchmean``, kdlab's
default). The authors' code (bhheo/AB_distillation, also RepDistiller) sums over the batch,
divides by the batch size and then by 1000/3, and weights the layers 2^(i−n+1) (the deepest
layer 1, each shallower one half the next) — i.e. ``batchmean`` with weight 0.003·2^(i−n+1).
``reduction: mean`` averages over every element instead (size-independent).

Training, as in the paper: an initialisation stage trains the student's layers up to the taps on
this loss alone, then the whole student trains on cross-entropy (or KD). In kdlab that is
``distill.stages`` (see examples/fashion_mnist_ab.yaml). Tap *pre-ReLU* outputs (the convolution
or BatchNorm before a ReLU, e.g. ``features.1.1`` of kdlab's SmallCNN): after a ReLU the
teacher's responses are never negative and ρ carries no boundary.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import ConfigError
from kdlab.losses.base import check_reduction, register_term
from kdlab.losses.feature import FeatureTerm, flat
from kdlab.types import Batch, ModelOutput

REDUCTIONS = ("batchmean", "mean")


def ab_loss(
    student: Tensor, teacher: Tensor, *, margin: float = 1.0, reduction: str = "batchmean"
) -> Tensor:
    """Activation-boundary loss between the (connected) student's and the teacher's pre-ReLU
    responses of one shape [B, ...]; ``reduction`` ``batchmean`` (Σ per sample, mean over the
    batch) or ``mean`` (mean over every element)."""
    check_reduction(reduction, REDUCTIONS)
    active = (teacher > 0).to(student.dtype)
    per_element = active * F.relu(margin - student).pow(2) + (1 - active) * F.relu(
        margin + student
    ).pow(2)
    if reduction == "mean":
        return per_element.mean()
    return flat(per_element).sum(1).mean()


@register_term
class ActivationBoundary(FeatureTerm):
    """AB loss on pre-ReLU taps through a trainable connector (see the module docstring)."""

    kind = "ab"
    match = "all"

    def __init__(
        self,
        student: str | None = None,
        teacher: str | None = None,
        weight: float = 1.0,
        margin: float = 1.0,
        reduction: str = "batchmean",
        adapter: str = "conv",
        adapter_bn: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(student, teacher, weight, adapter, adapter_bn, name)
        if not margin >= 0:
            raise ConfigError(f"margin must be a number ≥ 0 (the paper uses 1.0), got {margin}")
        check_reduction(reduction, REDUCTIONS)
        self.margin, self.reduction = float(margin), reduction

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        s, t = self.features(student, teacher)
        return ab_loss(s, t, margin=self.margin, reduction=self.reduction)
