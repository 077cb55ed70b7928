"""DIST: relational matching of predictions (Huang et al., "Knowledge Distillation from A Stronger
Teacher", NeurIPS 2022).

Notation: student logits z, teacher logits v [B, C], temperature τ, Y^S = softmax(z/τ),
Y^T = softmax(v/τ) row-wise, ρ the Pearson correlation coefficient. Instead of asking for equal
probabilities (KL), DIST asks for correlated ones:

    inter = 1/B · Σ_i (1 − ρ(Y^S_i,:, Y^T_i,:))     (each sample's class ranking, "inter-class")
    intra = 1/C · Σ_j (1 − ρ(Y^S_:,j, Y^T_:,j))     (each class across the batch, "intra-class")
    DIST  = τ²·(β·inter + γ·intra)

ρ ignores a positive affine change a·y + b of either vector, so a student may be less (or more)
confident than a stronger teacher as long as it ranks alike. The intra term compares samples, so
batches need ≥ 2 of them (``min_batch``).

Defaults follow the official code (hunto/image_classification_sota, ``DIST(beta=1, gamma=1,
tau=1)``), the paper's ImageNet setting. The paper states ρ; its code computes ρ as the cosine of
the centred vectors with 1e-8 added to the product of their norms, so constant vectors (e.g. one
class predicted identically across the batch) give ρ = 0 instead of 0/0. kdlab does the same
(``eps``). ``standardize`` z-scores each model's logits before the softmax (Sun et al., CVPR 2024;
:func:`kdlab.losses.response.standardize_logits`), with τ as their base temperature.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor

from kdlab.divergences import at_least_float32
from kdlab.errors import ConfigError, quote
from kdlab.losses.base import Term, register_term
from kdlab.losses.response import standardize_logits
from kdlab.types import Batch, ModelOutput


def pearson_correlation(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """ρ between matching rows of ``a`` and ``b`` [n, d] → [n]; 0 for a constant row."""
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    norms = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
    return (a * b).sum(-1) / (norms + eps)


def inter_class_relation(y_s: Tensor, y_t: Tensor, eps: float = 1e-8) -> Tensor:
    """mean over samples of 1 − ρ(row of Y^S, row of Y^T)."""
    return (1.0 - pearson_correlation(y_s, y_t, eps)).mean()


def intra_class_relation(y_s: Tensor, y_t: Tensor, eps: float = 1e-8) -> Tensor:
    """mean over classes of 1 − ρ(column of Y^S, column of Y^T)."""
    return inter_class_relation(y_s.transpose(0, 1), y_t.transpose(0, 1), eps)


def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
    standardize: bool = False,
    eps: float = 1e-8,
) -> Tensor:
    """τ²·(β·inter + γ·intra) on [batch, classes] logits (batch ≥ 2); the teacher's are detached."""
    z, v = at_least_float32(student_logits), at_least_float32(teacher_logits.detach())
    if z.dim() != 2 or z.shape != v.shape:
        raise ConfigError(
            f"dist: student logits {tuple(z.shape)} and teacher logits {tuple(v.shape)} must both "
            "be [batch, classes]; teacher and student must predict the same classes"
        )
    if len(z) < 2:
        raise ConfigError(
            f"dist compares samples within a batch and needs ≥ 2 per batch, got {len(z)}; "
            "use batch_size ≥ 2"
        )
    if standardize:
        z, v = standardize_logits(z), standardize_logits(v)
    y_s = torch.softmax(z / temperature, dim=1)
    y_t = torch.softmax(v.to(z.dtype) / temperature, dim=1)
    relation = beta * inter_class_relation(y_s, y_t, eps) + gamma * intra_class_relation(
        y_s, y_t, eps
    )
    return temperature**2 * relation


def _number(name: str, value: object, *, positive: bool = False) -> float:
    bound = "> 0" if positive else "≥ 0"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigError(f"dist: {name} must be a finite number {bound}, got {quote(value)}")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise ConfigError(f"dist: {name} must be a finite number {bound}, got {number}")
    return number


@register_term
class DIST(Term):
    """τ²·(β·inter + γ·intra) with 1 − Pearson correlations of the softened predictions."""

    kind = "dist"
    #: the intra-class term correlates samples: check_batch_sizes reads this
    min_batch = 2

    def __init__(
        self,
        weight: float = 1.0,
        beta: float = 1.0,
        gamma: float = 1.0,
        temperature: float = 1.0,
        standardize: bool = False,
        eps: float = 1e-8,
        name: str | None = None,
    ) -> None:
        super().__init__(weight, name)
        self.beta = _number("beta", beta)
        self.gamma = _number("gamma", gamma)
        if self.beta == 0 and self.gamma == 0:
            raise ConfigError(
                "dist: beta and gamma are both 0, so the term is always 0; give either a positive "
                "value (the paper: beta 1, gamma 1), or set the term's weight to 0"
            )
        self.temperature = _number("temperature", temperature, positive=True)
        self.standardize = bool(standardize)
        self.eps = _number("eps", eps, positive=True)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        v = self._teacher(teacher).logits.detach()
        return dist_loss(
            student.logits, v,
            beta=self.beta, gamma=self.gamma, temperature=self.temperature,
            standardize=self.standardize, eps=self.eps,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, beta={self.beta}, gamma={self.gamma}, "
            f"T={self.temperature}, standardize={self.standardize}"
        )
