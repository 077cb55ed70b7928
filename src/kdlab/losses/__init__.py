"""Loss terms. Importing this package registers every built-in term kind."""

from kdlab.losses.base import (
    TERMS,
    LossOutput,
    Objective,
    Term,
    build_objective,
    build_term,
    register_term,
)
from kdlab.losses.response import CrossEntropy, LogitMSE, SoftCrossEntropy, SoftTarget, hinton_loss

__all__ = [
    "TERMS",
    "CrossEntropy",
    "LogitMSE",
    "LossOutput",
    "Objective",
    "SoftCrossEntropy",
    "SoftTarget",
    "Term",
    "build_objective",
    "build_term",
    "hinton_loss",
    "register_term",
]
