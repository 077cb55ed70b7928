"""An ensemble of classifiers that acts as one teacher: the mean of the members' probabilities.

The output is a log-probability vector, log p̄ with p̄ = (1/M) Σ_m softmax(v_m), computed by
log-mean-exp of the members' log-softmax outputs (no probability is formed, so members that are
very sure — log-probabilities of −1e3 — still give finite, exact values). Log-probabilities are
valid logits: softmax(log p̄) = p̄, so every consumer that applies a softmax at temperature 1
(cross-entropy to the teacher, KL at T = 1, accuracy, agreement) sees exactly the mean.

Temperature. A soft-target term at T ≠ 1 computes softmax(log p̄ / T) ∝ p̄^(1/T): the *averaged*
distribution, tempered afterwards. That is not the mean of the members' tempered distributions,
(1/M) Σ_m softmax(v_m / T), which is what "the ensemble's soft targets at T" usually means
(Hinton et al. 2015). Give the ensemble that temperature, ``EnsembleTeacher(models,
temperature=T)``, and its output becomes T · log((1/M) Σ_m softmax(v_m / T)); a consumer at the
same T then computes softmax(that / T) = the mean of the tempered members, exactly. Consumers at
another temperature T' get that mean raised to the power T/T' and renormalised — still a proper
distribution, but say which one you meant. Metrics are computed at T = 1, so with temperature ≠ 1
the reported teacher accuracy is that of the T-averaged ensemble (argmax of its mean).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kdlab.divergences import at_least_float32, log_mean_exp
from kdlab.errors import ConfigError
from kdlab.inference import model_output


class EnsembleTeacher(nn.Module):
    """Several classifiers averaged in probability space; members live at ``members.<i>``.

    Usable wherever a teacher is (``kdlab.distill(EnsembleTeacher([a, b, c]), student, data)``);
    feature terms can tap a member's layers by path, e.g. ``members.0.features.1``.
    """

    def __init__(self, models: Sequence[nn.Module], temperature: float = 1.0) -> None:
        super().__init__()
        models = list(models)
        if not models:
            raise ConfigError("an ensemble needs at least one model; pass a list of nn.Modules")
        missing = [i for i, m in enumerate(models) if not isinstance(m, nn.Module)]
        if missing:
            raise ConfigError(
                f"ensemble member(s) {missing} are not nn.Modules "
                f"(got {', '.join(type(models[i]).__name__ for i in missing)}); "
                "pass trained models"
            )
        # Fail at construction when the members say how many classes they predict; models that
        # do not say are checked on their first batch (see forward).
        declared = {i: m.num_classes for i, m in enumerate(models) if hasattr(m, "num_classes")}
        if len(set(declared.values())) > 1:
            raise ConfigError(_mixed_classes_message(declared))
        temperature = float(temperature)
        if not math.isfinite(temperature) or temperature <= 0:
            raise ConfigError(
                f"ensemble temperature must be a finite number > 0, got {temperature}"
            )
        self.members = nn.ModuleList(models)
        self.temperature = temperature

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        # Any inputs, passed on as given: one tensor, or keyword inputs (token ids, masks).
        log_probs = []
        for i, member in enumerate(self.members):
            raw = member(*args, **kwargs)
            logits = at_least_float32(model_output(member, raw, f"ensemble member {i}").logits)
            log_probs.append(torch.log_softmax(logits / self.temperature, dim=-1))
        shapes = {i: lp.shape[-1] for i, lp in enumerate(log_probs)}
        if len(set(shapes.values())) > 1:
            raise ConfigError(_mixed_classes_message(shapes))
        return self.temperature * log_mean_exp(torch.stack(log_probs), dim=0)

    def extra_repr(self) -> str:
        return f"members={len(self.members)}, temperature={self.temperature}"


def _mixed_classes_message(classes: dict[int, int]) -> str:
    listed = ", ".join(f"member {i}: {n}" for i, n in classes.items())
    return (
        f"ensemble members predict different numbers of classes ({listed}); an ensemble "
        "averages distributions over the same classes, so give every member the same "
        "num_classes"
    )


__all__ = ["EnsembleTeacher"]
