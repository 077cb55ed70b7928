"""Relation-based distillation (seed 001 §3.3): match how samples relate, not the samples.

L_R(F_t, F_s) = L(φ_t(t_i, t_j), φ_s(s_i, s_j)) over the pairs of a batch. The student's and
the teacher's features may have any, different, sizes: each side builds its own batch×batch
relation matrix, so no adapter is needed (``adapter: linear`` adds a trainable embedding anyway).
Features are flattened per sample. Pairs are ordered and distinct (i ≠ j): the diagonal
(a sample with itself) carries no information and is left out of every mean.

This module holds the shared helpers and the generic term ``relation`` (seed 001's formula with
φ ∈ {distance, cosine} and L ∈ {l1, l2, ce}); the named methods live in rkd.py (RKD distance and
angle), sp.py (similarity-preserving) and pkt.py (probabilistic knowledge transfer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import ConfigError
from kdlab.losses.base import register_term
from kdlab.losses.feature import FeatureTerm, flat
from kdlab.types import Batch, ModelOutput


class RelationTerm(FeatureTerm):
    """A feature term over batch×batch relations: any feature shapes, ≥ 2 samples per batch."""

    match = "batch"
    min_batch = 2

    def flat_features(
        self, student: ModelOutput, teacher: ModelOutput | None
    ) -> tuple[Tensor, Tensor]:
        s, t = self.features(student, teacher)
        return flat(s), flat(t)


def off_diagonal(n: int, device: torch.device | None = None) -> Tensor:
    """Boolean [n, n] mask of the pairs i ≠ j."""
    return ~torch.eye(n, dtype=torch.bool, device=device)


def pairwise_distance(x: Tensor) -> Tensor:
    """‖x_i − x_j‖₂ for rows of ``x`` [B, D] → [B, B].

    Computed from differences, not from the Gram matrix (no cancellation), and with a zero
    (not NaN) gradient where two samples coincide.
    """
    x = x.unsqueeze(0)
    return torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")[0]


def mean_normalised_distance(x: Tensor, eps: float = 1e-12) -> Tensor:
    """RKD's ψ_D: pairwise distances divided by μ, their mean over the pairs i ≠ j."""
    d = pairwise_distance(x)
    mu = d[off_diagonal(len(x), x.device)].mean()
    return d / mu.clamp_min(eps)


def cosine_similarity_matrix(x: Tensor, eps: float = 1e-12) -> Tensor:
    u = F.normalize(x, dim=1, eps=eps)
    return u @ u.T


PHI = ("distance", "cosine")
CRITERIA = ("l1", "l2", "ce")


def relation_matrix(x: Tensor, relation: str) -> Tensor:
    """φ over the rows of ``x``: mean-normalised distances or cosine similarities, [B, B]."""
    return mean_normalised_distance(x) if relation == "distance" else cosine_similarity_matrix(x)


def relation_loss(
    f_s: Tensor,
    f_t: Tensor,
    relation: str = "distance",
    criterion: str = "l2",
    temperature: float = 1.0,
) -> Tensor:
    """Seed 001's L(φ_t(t_i, t_j), φ_s(s_i, s_j)) over the ordered pairs i ≠ j (see Relation)."""
    if relation not in PHI or criterion not in CRITERIA:
        raise ConfigError(
            f"relation must be one of {', '.join(PHI)} and criterion one of "
            f"{', '.join(CRITERIA)}, got {relation!r} and {criterion!r}"
        )
    s, t = flat(f_s), flat(f_t)
    ps, pt = relation_matrix(s, relation), relation_matrix(t, relation)
    n = len(s)
    mask = off_diagonal(n, s.device)
    if criterion == "l1":
        return (ps - pt)[mask].abs().mean()
    if criterion == "l2":
        return (ps - pt)[mask].pow(2).mean()
    sign = -1.0 if relation == "distance" else 1.0
    # rows without the diagonal: [B, B−1] logits per anchor
    ls = (sign * ps / temperature)[mask].view(n, n - 1)
    lt = (sign * pt / temperature)[mask].view(n, n - 1)
    return -(torch.softmax(lt, 1) * torch.log_softmax(ls, 1)).sum(1).mean()


@register_term
class Relation(RelationTerm):
    """Seed 001's L(φ_t(t_i, t_j), φ_s(s_i, s_j)) over the ordered pairs i ≠ j of a batch.

    φ: ``distance`` — ‖f_i − f_j‖/μ (μ the batch's mean pairwise distance, so teacher and
    student are on one scale); ``cosine`` — cosine similarity.
    L: ``l1`` / ``l2`` — mean |Δ| / mean Δ² over the pairs; ``ce`` — per anchor i, the relations
    to the other samples as logits (−φ/τ for distances: closer is more likely, φ/τ for cosine),
    cross-entropy H(softmax_t, softmax_s) averaged over anchors. CE = KL + the teacher's entropy,
    so its minimum is that entropy, not 0.
    """

    kind = "relation"

    def __init__(
        self,
        student: str | None = None,
        teacher: str | None = None,
        weight: float = 1.0,
        relation: str = "distance",
        criterion: str = "l2",
        temperature: float = 1.0,
        adapter: str = "auto",
        adapter_bn: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(student, teacher, weight, adapter, adapter_bn, name)
        if relation not in PHI:
            raise ConfigError(f"relation must be one of {', '.join(PHI)}, got {relation!r}")
        if criterion not in CRITERIA:
            raise ConfigError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.relation, self.criterion, self.temperature = relation, criterion, float(temperature)

    def phi(self, x: Tensor) -> Tensor:
        return relation_matrix(x, self.relation)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        s, t = self.flat_features(student, teacher)
        return relation_loss(s, t, self.relation, self.criterion, self.temperature)


__all__ = [
    "Relation",
    "RelationTerm",
    "cosine_similarity_matrix",
    "mean_normalised_distance",
    "off_diagonal",
    "pairwise_distance",
    "relation_loss",
    "relation_matrix",
]
