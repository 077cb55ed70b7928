"""Signs that a run learned nothing, though no loss became NaN: a loss that grew by orders of
magnitude, a teacher at chance level. They warn (:class:`TrainingWarning`); with ``strict`` they
stop the experiment (:class:`UnhealthyRunError`), before students are distilled from noise.

Adam at lr 1e8 is the case in point: the loss stays finite, the teacher ends at 9.8 % on digits,
and without these checks every student would be distilled from it without a word.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import torch

from kdlab.errors import KdlabError

#: A loss that ends (or peaks) this many times above its first epoch's value has diverged.
GROWTH_LIMIT = 100.0
#: A teacher within this many points of always answering the most common class is at chance.
CHANCE_MARGIN = 0.02


class TrainingWarning(UserWarning):
    """A run finished, but what it learned is suspect (see the message)."""


class TrainingNotice(UserWarning):
    """Something a user should know about how a run trains (not a problem), in one line."""


class UnhealthyRunError(KdlabError):
    """``strict: true`` and a run looks like it learned nothing."""


def report(message: str, strict: bool) -> None:
    if strict:
        raise UnhealthyRunError(f"{message} (stopped because the config sets strict: true)")
    warnings.warn(TrainingWarning(message), stacklevel=3)


def loss_growth(history: Sequence[Mapping[str, float]]) -> tuple[str, float, float] | None:
    """(column, first value, largest later value) of a loss column that grew ≥ GROWTH_LIMIT×."""
    for key in history[0] if history else ():
        if key != "loss" and not key.endswith(".loss"):
            continue
        values = [row[key] for row in history if key in row and math.isfinite(row[key])]
        if len(values) < 2 or values[0] <= 0:
            continue
        peak = max(values[1:])
        if peak >= GROWTH_LIMIT * values[0]:
            return key, values[0], peak
    return None


def check_history(history: Sequence[Mapping[str, float]], label: str, strict: bool) -> None:
    """Report a run whose loss grew by orders of magnitude while it trained."""
    grown = loss_growth(history)
    if grown is not None:
        key, first, peak = grown
        report(
            f"the {key} of {label!r} grew from {first:.4g} (epoch 1) to {peak:.4g} "
            f"({peak / first:.0f}×): training diverged without becoming NaN; lower the learning "
            "rate or clip gradients (clip_grad_norm)",
            strict,
        )


def check_teacher(logits: torch.Tensor, labels: torch.Tensor, label: str, strict: bool) -> None:
    """Report a teacher whose validation accuracy is no better than the most common class."""
    if len(labels) == 0:
        return
    accuracy = float((logits.argmax(-1) == labels).float().mean())
    majority = float(torch.bincount(labels).max()) / len(labels)
    if accuracy <= majority + CHANCE_MARGIN:
        report(
            f"{label!r} reaches {100 * accuracy:.1f}% validation accuracy, chance level "
            f"(always answering the most common class gives {100 * majority:.1f}%): a student "
            "distilled from it learns nothing; check the teacher's training (learning rate, "
            "epochs, loss) or its checkpoint",
            strict,
        )


__all__ = ["TrainingWarning", "UnhealthyRunError", "check_history", "check_teacher"]
