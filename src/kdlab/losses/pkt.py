"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018).

Each model's features (flattened) give conditional probabilities over the other samples of the
batch from the cosine-similarity kernel K(a, b) = ½(cos(a, b) + 1) ∈ [0, 1]:
p_{j|i} = K(x_i, x_j) / Σ_{k≠i} K(x_i, x_k) for j ≠ i. The loss is KL(P_T ‖ P_S) summed over j
and averaged over the anchors i (``reduction: batchmean``, like every KL in kdlab).

The paper excludes the sample itself (as in t-SNE; kdlab's default). The authors' code and
RepDistiller keep the diagonal — p_{j|i} = K(x_i, x_j) / Σ_k K(x_i, x_k) over every k, i
included — and average p·log(p_T/p_S) over all B² entries: ``diagonal: true, reduction: mean``
gives that value (up to where the ε floor sits: they add ε inside the log's ratio, kdlab floors
each probability at ε), so RepDistiller's β = 30000 carries over unchanged. With the default
form the value is about B times theirs: divide their weight by the batch size.
``reduction: mean`` averages over the compared entries (B² with the diagonal, B(B−1) without).
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdlab.losses.base import check_reduction, register_term
from kdlab.losses.feature import flat
from kdlab.losses.relation import RelationTerm, cosine_similarity_matrix, off_diagonal
from kdlab.types import Batch, ModelOutput

REDUCTIONS = ("batchmean", "mean")


def pkt_probabilities(x: Tensor, eps: float = 1e-12, diagonal: bool = False) -> Tensor:
    """Rows p_{j|i} from the cosine kernel ½(cos + 1): [B, B−1] over j ≠ i, or [B, B] over
    every j (the sample itself included) with ``diagonal``."""
    n = len(x)
    kernel = (cosine_similarity_matrix(x) + 1.0) / 2.0
    if not diagonal:
        kernel = kernel[off_diagonal(n, x.device)].view(n, n - 1)
    return kernel / kernel.sum(1, keepdim=True).clamp_min(eps)


def pkt_loss(
    f_s: Tensor,
    f_t: Tensor,
    eps: float = 1e-7,
    diagonal: bool = False,
    reduction: str = "batchmean",
) -> Tensor:
    """KL(P_T ‖ P_S) of the batches' cosine-kernel conditional probabilities.

    ``batchmean``: summed over j, mean over the anchors i; ``mean``: mean over all entries.
    """
    check_reduction(reduction, REDUCTIONS)
    p_s = pkt_probabilities(flat(f_s), diagonal=diagonal)
    p_t = pkt_probabilities(flat(f_t), diagonal=diagonal)
    # floor inside the logs: K = 0 for exactly opposite features would give log 0
    terms = p_t * (torch.log(p_t.clamp_min(eps)) - torch.log(p_s.clamp_min(eps)))
    return terms.mean() if reduction == "mean" else terms.sum(1).mean()


@register_term
class PKT(RelationTerm):
    """mean_i Σ_j p^T_{j|i} · log(p^T_{j|i} / p^S_{j|i}) with the cosine kernel (j ≠ i unless
    ``diagonal``); ``reduction: mean`` averages over the entries instead (RepDistiller)."""

    kind = "pkt"

    def __init__(
        self,
        student: str | None = None,
        teacher: str | None = None,
        weight: float = 1.0,
        eps: float = 1e-7,
        diagonal: bool = False,
        reduction: str = "batchmean",
        adapter: str = "auto",
        adapter_bn: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(student, teacher, weight, adapter, adapter_bn, name)
        check_reduction(reduction, REDUCTIONS, "mean with diagonal: true is RepDistiller's PKT")
        self.eps = float(eps)
        self.diagonal, self.reduction = bool(diagonal), reduction

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        s, t = self.flat_features(student, teacher)
        return pkt_loss(s, t, self.eps, self.diagonal, self.reduction)
