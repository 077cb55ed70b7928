"""Plain functions on tensors for kdlab's loss terms, for use outside kdlab's training loop.

``kdlab.losses.functional.rkd_distance(f_s, f_t)`` gives the value the ``rkd_distance`` term
gives on the same features: each function here is the one the term itself calls (re-exported
from the term's module), so the two cannot drift apart. Features are ``[batch, ...]`` tensors
(flattened per sample where the loss wants vectors, ``[B, C, H, W]`` where it wants maps);
trainable adapters are not part of these functions — apply your own regressor to ``f_s`` first
(``kdlab.losses.connectors.regressor`` builds the peers' one). Unlike the terms, the feature
functions do not detach the teacher's features: pass ``f_t.detach()`` (or compute it under
``torch.no_grad()``) as you would with RepDistiller's or torchdistill's loss modules. The one
exception is ``kdsvd``, whose teacher singular vectors are constants of the method (detached).

Logit losses detach the teacher's logits, which are a target: the response losses
(``soft_target``, ``soft_cross_entropy``, ``logit_mse``, ``cross_entropy``: the term of that kind
on student ``z`` and teacher ``v``, with the term's options as keyword arguments), ``dkd`` and
``dist``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from kdlab.losses.ab import ab_loss as activation_boundaries
from kdlab.losses.attention import (
    at_loss as attention_transfer,
)
from kdlab.losses.attention import (
    attention_feature_loss as attention_feature,
)
from kdlab.losses.attention import (
    attention_map,
    same_size,
)
from kdlab.losses.attention import (
    channel_attention_loss as channel_attention,
)
from kdlab.losses.attention import (
    spatial_attention_loss as spatial_attention,
)
from kdlab.losses.base import Term
from kdlab.losses.cc import cc_loss as correlation_congruence
from kdlab.losses.cc import correlation_matrix
from kdlab.losses.crd import crd_nce_loss, crd_softmax_loss
from kdlab.losses.dist import dist_loss as dist
from kdlab.losses.dist import inter_class_relation, intra_class_relation, pearson_correlation
from kdlab.losses.dkd import dkd_loss as dkd
from kdlab.losses.dkd import dkd_parts
from kdlab.losses.fitnets import hint_loss as hint
from kdlab.losses.fsp import fsp_loss as fsp
from kdlab.losses.fsp import fsp_matrix
from kdlab.losses.ft import ft_loss as factor_transfer
from kdlab.losses.kdsvd import kdsvd_loss as kdsvd
from kdlab.losses.lsp import lsp_loss as lsp
from kdlab.losses.nst import nst_loss as nst
from kdlab.losses.ofd import gaussian_negative_mean, margin_relu, partial_l2
from kdlab.losses.ofd import ofd_loss as overhaul
from kdlab.losses.pkt import pkt_loss as pkt
from kdlab.losses.pkt import pkt_probabilities
from kdlab.losses.relation import relation_loss as relation
from kdlab.losses.response import (
    CrossEntropy,
    LogitMSE,
    SoftCrossEntropy,
    SoftTarget,
    standardize_logits,
)
from kdlab.losses.review import hcl_loss as review_hcl
from kdlab.losses.rkd import angle_matrix
from kdlab.losses.rkd import rkd_angle_loss as rkd_angle
from kdlab.losses.rkd import rkd_distance_loss as rkd_distance
from kdlab.losses.sp import similarity_matrix
from kdlab.losses.sp import sp_loss as sp
from kdlab.losses.vid import vid_loss as vid
from kdlab.types import Batch, ModelOutput


def _on_logits(term: Term, z: Tensor, v: Tensor | None, targets: Tensor | None = None) -> Tensor:
    """The value of a logits-only term for student logits ``z`` and teacher logits ``v``."""
    teacher = None if v is None else ModelOutput(v, {})
    return term(ModelOutput(z, {}), teacher, Batch(z, targets))  # type: ignore[arg-type]


def soft_target(
    z: Tensor, v: Tensor, temperature: float = 4.0, divergence: str = "kl", **options: Any
) -> Tensor:
    """T²·mean_b D(softmax(v/T) ‖ softmax(z/T)) — the ``soft_target`` term (Hinton et al.);
    ``options``: its other parameters (``alpha``, ``direction``, ``t2_scaling``, …)."""
    term = SoftTarget(temperature=temperature, divergence=divergence, **options)
    return _on_logits(term, z, v)


def soft_cross_entropy(z: Tensor, v: Tensor, temperature: float = 4.0, **options: Any) -> Tensor:
    """T²·mean_b H(softmax(v/T), softmax(z/T)) — the ``soft_ce`` term."""
    return _on_logits(SoftCrossEntropy(temperature=temperature, **options), z, v)


def logit_mse(z: Tensor, v: Tensor, center: bool = False) -> Tensor:
    """Mean over batch and classes of (z − v)² — the ``logit_mse`` term."""
    return _on_logits(LogitMSE(center=center), z, v)


def cross_entropy(z: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Hard-label cross-entropy, mean over the batch — the ``ce`` term."""
    return _on_logits(CrossEntropy(label_smoothing=label_smoothing), z, None, targets)


__all__ = [
    "activation_boundaries",
    "angle_matrix",
    "attention_feature",
    "attention_map",
    "attention_transfer",
    "channel_attention",
    "correlation_congruence",
    "correlation_matrix",
    "crd_nce_loss",
    "crd_softmax_loss",
    "cross_entropy",
    "dist",
    "dkd",
    "dkd_parts",
    "factor_transfer",
    "fsp",
    "fsp_matrix",
    "gaussian_negative_mean",
    "hint",
    "inter_class_relation",
    "intra_class_relation",
    "kdsvd",
    "logit_mse",
    "lsp",
    "margin_relu",
    "nst",
    "overhaul",
    "partial_l2",
    "pearson_correlation",
    "pkt",
    "pkt_probabilities",
    "relation",
    "review_hcl",
    "rkd_angle",
    "rkd_distance",
    "same_size",
    "similarity_matrix",
    "soft_cross_entropy",
    "soft_target",
    "sp",
    "spatial_attention",
    "standardize_logits",
    "vid",
]
