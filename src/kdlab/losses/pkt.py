"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018).

Each model's features (flattened) give conditional probabilities over the other samples of the
batch from the cosine-similarity kernel K(a, b) = ½(cos(a, b) + 1) ∈ [0, 1]:
p_{j|i} = K(x_i, x_j) / Σ_{k≠i} K(x_i, x_k) for j ≠ i. The loss is KL(P_T ‖ P_S) summed over j
and averaged over the anchors i (batchmean, like every KL in kdlab).

The paper excludes the sample itself (as in t-SNE); RepDistiller's popular version keeps the
diagonal and averages over all B² entries, which makes its values about 1/B of ours — divide
its weights by the batch size to compare.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdlab.losses.base import register_term
from kdlab.losses.relation import RelationTerm, cosine_similarity_matrix, off_diagonal
from kdlab.types import Batch, ModelOutput


def pkt_probabilities(x: Tensor, eps: float = 1e-12) -> Tensor:
    """[B, B−1] rows p_{j|i} over j ≠ i from the cosine kernel ½(cos + 1)."""
    n = len(x)
    kernel = (cosine_similarity_matrix(x) + 1.0) / 2.0
    kernel = kernel[off_diagonal(n, x.device)].view(n, n - 1)
    return kernel / kernel.sum(1, keepdim=True).clamp_min(eps)


@register_term
class PKT(RelationTerm):
    """mean_i Σ_{j≠i} p^T_{j|i} · log(p^T_{j|i} / p^S_{j|i}) with the cosine kernel."""

    kind = "pkt"

    def __init__(
        self,
        student: str | None = None,
        teacher: str | None = None,
        weight: float = 1.0,
        eps: float = 1e-7,
        adapter: str = "auto",
        adapter_bn: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(student, teacher, weight, adapter, adapter_bn, name)
        #: floor inside the logs: K = 0 for exactly opposite features would give log 0
        self.eps = float(eps)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        s, t = self.flat_features(student, teacher)
        p_s, p_t = pkt_probabilities(s), pkt_probabilities(t)
        log_ratio = torch.log(p_t.clamp_min(self.eps)) - torch.log(p_s.clamp_min(self.eps))
        return (p_t * log_ratio).sum(1).mean()
