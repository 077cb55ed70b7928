"""Distillation schemes: each owns its trainable models and runs on the one engine."""

from kdlab.schemes.base import Scheme, Update, predict_logits
from kdlab.schemes.offline import OfflineScheme

__all__ = ["OfflineScheme", "Scheme", "Update", "predict_logits"]
