"""Loss terms. Importing this package registers every built-in term kind.

Response terms read logits (response.py); feature and relation terms read intermediate outputs
captured by module path (tapped.py, fitnets.py, attention.py, global_relation.py, lsp.py,
relation.py, rkd.py, sp.py, pkt.py).
"""

from kdlab.losses.attention import (
    AttentionFeature,
    AttentionTransfer,
    ChannelAttention,
    SpatialAttention,
)
from kdlab.losses.base import (
    TERMS,
    LossOutput,
    Objective,
    Term,
    build_objective,
    build_term,
    register_term,
)
from kdlab.losses.fitnets import Hint
from kdlab.losses.global_relation import GlobalRelation
from kdlab.losses.lsp import LocalStructure
from kdlab.losses.pkt import PKT
from kdlab.losses.relation import Relation
from kdlab.losses.response import CrossEntropy, LogitMSE, SoftCrossEntropy, SoftTarget, hinton_loss
from kdlab.losses.rkd import RKDAngle, RKDDistance
from kdlab.losses.sp import SimilarityPreserving
from kdlab.losses.tapped import FeatureTerm, prepare_terms

__all__ = [
    "PKT",
    "TERMS",
    "AttentionFeature",
    "AttentionTransfer",
    "ChannelAttention",
    "CrossEntropy",
    "FeatureTerm",
    "GlobalRelation",
    "Hint",
    "LocalStructure",
    "LogitMSE",
    "LossOutput",
    "Objective",
    "RKDAngle",
    "RKDDistance",
    "Relation",
    "SimilarityPreserving",
    "SoftCrossEntropy",
    "SoftTarget",
    "SpatialAttention",
    "Term",
    "build_objective",
    "build_term",
    "hinton_loss",
    "prepare_terms",
    "register_term",
]
