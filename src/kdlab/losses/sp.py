"""Similarity-preserving distillation (Tung & Mori 2019).

For a batch of features A (flattened to [B, D]), G = A·Aᵀ is the batch's similarity (Gram)
matrix and G̃ its rows L2-normalised; the loss is ‖G̃_T − G̃_S‖_F² / B², as in the paper
(eq. 4) and the authors' code (and RepDistiller's, used there with β = 3000: the same weight
in kdlab). Student and teacher may have different feature sizes: both matrices are B×B.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdlab.losses.base import register_term
from kdlab.losses.feature import flat
from kdlab.losses.relation import RelationTerm
from kdlab.types import Batch, ModelOutput


def similarity_matrix(a: Tensor, eps: float = 1e-12) -> Tensor:
    """G̃ = row-L2-normalised A·Aᵀ for per-sample vectors ``a`` [B, D]."""
    return F.normalize(a @ a.T, dim=1, eps=eps)


def sp_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """(1/B²)·‖G̃_T − G̃_S‖_F² on features [B, ...] (flattened per sample)."""
    s, t = flat(f_s), flat(f_t)
    b = len(s)
    return (similarity_matrix(t) - similarity_matrix(s)).pow(2).sum() / (b * b)


@register_term
class SimilarityPreserving(RelationTerm):
    """(1/B²)·‖G̃_T − G̃_S‖_F² with G̃ the row-normalised batch Gram matrix."""

    kind = "sp"

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        s, t = self.flat_features(student, teacher)
        return sp_loss(s, t)
