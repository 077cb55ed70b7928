"""Loss terms. Importing this package registers every built-in term kind.

Response terms read logits (response.py); feature and relation terms read intermediate outputs
captured by module path (feature.py, fitnets.py, attention.py, global_relation.py, lsp.py,
relation.py, rkd.py, sp.py, pkt.py, …). Every module of this folder is imported here, so a new
method is one new file whose class carries ``@register_term``.
"""

import importlib
import pkgutil

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
    check_batch_sizes,
    check_loss_specs,
    register_term,
)
from kdlab.losses.feature import FeatureTerm, prepare_terms
from kdlab.losses.fitnets import Hint
from kdlab.losses.global_relation import GlobalRelation
from kdlab.losses.lsp import LocalStructure
from kdlab.losses.pkt import PKT
from kdlab.losses.relation import Relation
from kdlab.losses.response import CrossEntropy, LogitMSE, SoftCrossEntropy, SoftTarget, hinton_loss
from kdlab.losses.rkd import RKDAngle, RKDDistance
from kdlab.losses.sp import SimilarityPreserving

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

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
    "check_batch_sizes",
    "check_loss_specs",
    "hinton_loss",
    "prepare_terms",
    "register_term",
]
