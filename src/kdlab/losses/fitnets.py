"""FitNets hints (Romero et al. 2015; seed 004): ½‖u_T(x) − r(v_S(x))‖².

u_T is the teacher's *hint* layer, v_S the student's *guided* layer and r the regressor — here
the term's adapter (a 1×1 convolution for maps, a linear layer for vectors; FitNets used a
convolution). In the paper, stage 1 trains the student up to its guided layer on this loss alone
and stage 2 runs soft-target KD on the whole student: use ``distill.stages``
(kdlab.schemes.offline) with ``trainable`` listing the guided part in stage 1.

Peers: RepDistiller and mdistiller regress with ``ConvReg`` (conv → BatchNorm → ReLU, here
``adapter: regressor``) and take ``nn.MSELoss()`` — the mean over every element, no ½ — with
weight β = 100 (RepDistiller's FitNet recipe, in one stage beside CE and KD). kdlab's default
``batchmean`` follows the paper; ``reduction: mse`` gives the peers' value, so their β carries
over unchanged: batchmean = ½·(C·H·W)·mse and mean = ½·mse, so β = 100 under ``mse`` is
200/(C·H·W) under ``batchmean`` (C·H·W the teacher hint's elements per sample) and 200 under
``mean``.
"""

from __future__ import annotations

from torch import Tensor

from kdlab.losses.base import check_reduction, register_term
from kdlab.losses.feature import FeatureTerm, flat
from kdlab.types import Batch, ModelOutput

REDUCTIONS = ("batchmean", "mean", "mse")


def hint_loss(f_s: Tensor, f_t: Tensor, reduction: str = "batchmean") -> Tensor:
    """FitNets' hint on (already regressed) student features ``f_s`` and teacher ``f_t``.

    ``batchmean``: ½·(1/B)·Σ_b ‖f_t,b − f_s,b‖²; ``mean``: ½·mean of (f_t − f_s)²; ``mse``:
    mean of (f_t − f_s)² (= ``F.mse_loss``, the peers' value).
    """
    check_reduction(reduction, REDUCTIONS)
    squared = flat(f_t - f_s).pow(2)
    if reduction == "mse":
        return squared.mean()
    if reduction == "mean":
        return 0.5 * squared.mean()
    return 0.5 * squared.sum(1).mean()


@register_term
class Hint(FeatureTerm):
    """½‖u_T − r(v_S)‖², reduced over the batch by ``reduction``.

    - ``batchmean`` (default, the paper's objective): the per-sample squared norm, halved and
      averaged over the batch — ½·(1/B)·Σ_b ‖u_b − r(v_b)‖². Its size grows with the hint's
      number of elements, which matters only relative to other terms' weights.
    - ``mean``: ½ · mean over every element (what RepDistiller/torchdistill's ``MSELoss`` give,
      halved) = batchmean / elements-per-sample; handy when mixing with KD in one stage.
    - ``mse``: mean over every element, not halved — exactly ``nn.MSELoss()``, the peers'
      value, so their weights (RepDistiller's β = 100) carry over unchanged.
    """

    kind = "hint"
    match = "all"

    def __init__(
        self,
        student: str | None = None,
        teacher: str | None = None,
        weight: float = 1.0,
        reduction: str = "batchmean",
        adapter: str = "auto",
        adapter_bn: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(student, teacher, weight, adapter, adapter_bn, name)
        check_reduction(reduction, REDUCTIONS, "mse: the peers' nn.MSELoss")
        self.reduction = reduction

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        s, t = self.features(student, teacher)
        return hint_loss(s, t, self.reduction)
