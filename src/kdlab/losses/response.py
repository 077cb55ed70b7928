"""Response-based terms: they read only logits (seeds 001–004; Hinton et al. 2015).

Notation: student logits z, teacher logits v, temperature T, p = softmax(v/T), q = softmax(z/T).
Every term averages over the batch a per-sample quantity summed over classes ("batchmean"),
the reduction under which the gradient identities below hold.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.divergences import cross_entropy, get_divergence
from kdlab.errors import ConfigError
from kdlab.losses.base import Term, at_least_float32, register_term, temperature_softmax
from kdlab.types import Batch, ModelOutput


def _check_temperature(temperature: float) -> float:
    temperature = float(temperature)
    if not math.isfinite(temperature) or temperature <= 0:
        raise ConfigError(f"temperature must be a finite number > 0, got {temperature}")
    return temperature


def standardize_logits(logits: Tensor, eps: float = 1e-12) -> Tensor:
    """Z-score each sample's logits over the classes: (z − mean(z)) / σ(z) (Sun et al. 2024).

    σ is the population standard deviation, sqrt(mean((z − mean z)²)), as in the paper's
    Algorithm 1; the authors' code uses ``torch.std`` (the N−1 sample deviation) plus 1e-7, which
    equals kdlab's result times sqrt((N−1)/N), i.e. a base temperature larger by sqrt(N/(N−1)).
    ``eps`` is added to the variance, not to σ, so constant logits give zeros with a finite
    gradient. Computed in float32 or wider.
    """
    x = at_least_float32(logits)
    centred = x - x.mean(-1, keepdim=True)
    variance = centred.square().mean(-1, keepdim=True)
    return centred / torch.sqrt(variance + eps)


def _check_classes(z: Tensor, v: Tensor) -> None:
    if z.shape != v.shape:
        raise ConfigError(
            f"student logits {tuple(z.shape)} and teacher logits {tuple(v.shape)} differ; "
            "teacher and student must predict the same classes"
        )


@register_term
class CrossEntropy(Term):
    """Hard-label cross-entropy H(y, softmax(z)), mean over the batch."""

    kind = "ce"
    needs_teacher = False

    def __init__(self, weight: float = 1.0, label_smoothing: float = 0.0, name: str | None = None):
        super().__init__(weight, name)
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        return F.cross_entropy(
            at_least_float32(student.logits), batch.targets, label_smoothing=self.label_smoothing
        )


@register_term
class SoftTarget(Term):
    """Soft-target distillation: T²·mean_b D(p‖q) (forward) or T²·mean_b D(q‖p) (reverse).

    ``divergence`` is any of :mod:`kdlab.divergences` (``kl``, ``js``, ``renyi`` with ``alpha``,
    …). With KL, ∂/∂z_j = (1/T)(q_j − p_j); the T² factor (``t2_scaling``) keeps the gradient's
    scale independent of T (seed 003 eq. 1.11). As T → ∞ with zero-mean logits T²·KL tends to
    half the squared logit distance averaged over classes, i.e. logit matching (seed 002).
    The teacher's logits are detached: gradients reach only the student.

    ``standardize`` z-scores both models' logits first (:func:`standardize_logits`; Sun et al.,
    "Logit Standardization in Knowledge Distillation", CVPR 2024), so the loss ignores each
    sample's logit shift and scale and compares only their pattern. T is then the paper's "base
    temperature" (its runs: T = 2, CE weight 0.1, KD weight 9) and T² still multiplies the loss,
    as in the paper's Algorithm 2 and code.
    """

    kind = "soft_target"

    def __init__(
        self,
        weight: float = 1.0,
        temperature: float = 4.0,
        divergence: str = "kl",
        alpha: float | None = None,
        direction: str = "forward",
        t2_scaling: bool = True,
        name: str | None = None,
        standardize: bool = False,  # last, so the earlier parameters keep their positions
    ) -> None:
        super().__init__(weight, name)
        self.temperature = _check_temperature(temperature)
        if direction not in ("forward", "reverse"):
            raise ConfigError(f"direction must be 'forward' or 'reverse', got {direction!r}")
        try:
            self.divergence = get_divergence(divergence, alpha)
        except ValueError as err:
            raise ConfigError(str(err)) from err
        self.divergence_name, self.alpha = divergence, alpha
        self.direction = direction
        self.t2_scaling = bool(t2_scaling)
        self.standardize = bool(standardize)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        z, v = student.logits, self._teacher(teacher).logits.detach()
        _check_classes(z, v)
        if self.standardize:
            z, v = standardize_logits(z), standardize_logits(v)
        log_p = temperature_softmax(v, self.temperature)
        log_q = temperature_softmax(z, self.temperature)
        per_sample = (
            self.divergence(log_p, log_q)
            if self.direction == "forward"
            else self.divergence(log_q, log_p)
        )
        scale = self.temperature**2 if self.t2_scaling else 1.0
        return scale * per_sample.mean()

    def extra_repr(self) -> str:
        alpha = f", alpha={self.alpha}" if self.alpha is not None else ""
        return (
            f"{super().extra_repr()}, T={self.temperature}, divergence={self.divergence_name}"
            f"{alpha}, direction={self.direction}"
            + (", standardize=True" if self.standardize else "")
        )


@register_term
class SoftCrossEntropy(Term):
    """Seed 004's H(P_T^τ, P_S^τ) = −Σ_j p_j log q_j at temperature τ, mean over the batch.

    Same gradient as KL(p‖q) (they differ by the teacher's entropy, a constant for the student),
    but the logged value includes that entropy. ``t2_scaling`` multiplies by τ² as in Hinton et al.;
    seed 004's formula has no τ², so set ``t2_scaling: false`` to reproduce it literally.
    """

    kind = "soft_ce"

    def __init__(
        self,
        weight: float = 1.0,
        temperature: float = 4.0,
        t2_scaling: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(weight, name)
        self.temperature = _check_temperature(temperature)
        self.t2_scaling = bool(t2_scaling)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        v = self._teacher(teacher).logits.detach()
        _check_classes(student.logits, v)
        per_sample = cross_entropy(
            temperature_softmax(v, self.temperature),
            temperature_softmax(student.logits, self.temperature),
        )
        scale = self.temperature**2 if self.t2_scaling else 1.0
        return scale * per_sample.mean()


@register_term
class LogitMSE(Term):
    """Logit matching (Caruana et al.; seed 002): mean over batch and classes of (z − v)².

    With ``center`` each sample's logits are made zero-mean first (softmax ignores a shift, and
    Hinton's high-T argument assumes zero-mean logits); then T²·KL → ½·LogitMSE as T → ∞.
    """

    kind = "logit_mse"

    def __init__(self, weight: float = 1.0, center: bool = False, name: str | None = None):
        super().__init__(weight, name)
        self.center = bool(center)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        z = at_least_float32(student.logits)
        v = at_least_float32(self._teacher(teacher).logits.detach()).to(z.dtype)
        _check_classes(z, v)
        if self.center:
            z = z - z.mean(-1, keepdim=True)
            v = v - v.mean(-1, keepdim=True)
        return F.mse_loss(z, v)


def hinton_loss(
    temperature: float = 4.0,
    beta: float = 0.9,
    divergence: str = "kl",
    alpha: float | None = None,
) -> list[Term]:
    """Seed 003 eq. 1.13: (1−β)·CE(y, softmax(z)) + β·T²·D(p‖q)."""
    if not 0.0 <= beta <= 1.0:
        raise ConfigError(f"beta must be in [0, 1], got {beta}")
    return [
        CrossEntropy(weight=1.0 - beta),
        SoftTarget(
            weight=beta, temperature=temperature, divergence=divergence, alpha=alpha, name="kd"
        ),
    ]
