"""Decoupled Knowledge Distillation, DKD (Zhao et al., CVPR 2022).

Notation: student logits z, teacher logits v, label t, temperature T, p = softmax(·/T) of either
model. The paper splits KD into a target and a non-target part:

    b = [p_t, 1 − p_t]                       (binary target / non-target probabilities)
    p̂_j = p_j / (1 − p_t) for j ≠ t           (softmax over the non-target logits only)
    TCKD = KL(b^T ‖ b^S),   NCKD = KL(p̂^T ‖ p̂^S)
    KD   = TCKD + (1 − p_t^T)·NCKD           (paper eq. 1, an exact identity)
    DKD  = (α·TCKD + β·NCKD)·T²,  averaged over the batch,

so NCKD is no longer damped by the teacher's confidence 1 − p_t^T. The paper's code (mdistiller)
also multiplies the loss by min(epoch / warmup, 1) with 1-based epochs (warm-up 20 on CIFAR-100,
α = 1, β = 8, T = 4; CE weight 1). kdlab's epochs are 0-based, hence min((epoch + 1)/warmup, 1).

Numerics, where kdlab differs from the authors' code (the value is the same): mdistiller forms b
by summing softmax probabilities and then takes ``torch.log`` of them, and gets p̂ by subtracting
1000 from the target logit (divided by T) before a softmax. The log of a summed probability is
−inf once 1 − p_t underflows (a confident model, a low T, half precision), and the −1000 only
hides the target if no logit/T lies 1000 above the others; either failure gives inf or NaN losses.
kdlab stays in log space: log b = [z_t/T − lse(z/T), lse_{j≠t}(z_j/T) − lse(z/T)] and
log p̂ = z/T − lse_{j≠t}(z_j/T) with the target masked to −inf, which is exact for any logits;
kdlab.divergences gives 0·log 0 = 0 for the masked class without NaN gradients.

``standardize`` z-scores each model's logits first (Sun et al., CVPR 2024; see
:func:`kdlab.losses.response.standardize_logits`); T is then their "base temperature" and the T²
factor stays, as in that paper's code.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor

from kdlab.divergences import at_least_float32, kl_divergence
from kdlab.errors import ConfigError, quote
from kdlab.losses.base import Term, register_term
from kdlab.losses.response import standardize_logits
from kdlab.types import Batch, ModelOutput


def _log_binary_and_non_target(
    logits: Tensor, targets: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """(log b [B, 2], log p̂ [B, N]) at temperature T; p̂ is −inf at the target class."""
    scaled = at_least_float32(logits) / temperature
    target_mask = torch.zeros_like(scaled, dtype=torch.bool)
    target_mask.scatter_(1, targets.view(-1, 1), True)
    log_all = torch.logsumexp(scaled, dim=1, keepdim=True)
    # masking (not subtracting a large constant) removes the target exactly for any logits
    non_target = scaled.masked_fill(target_mask, -math.inf)
    log_rest = torch.logsumexp(non_target, dim=1, keepdim=True)
    target_logit = scaled.gather(1, targets.view(-1, 1))
    log_binary = torch.cat([target_logit - log_all, log_rest - log_all], dim=1)
    return log_binary, non_target - log_rest


def dkd_parts(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """Per-sample (TCKD, NCKD) at temperature T, without the T² factor; each of shape [B]."""
    _check_inputs(student_logits, teacher_logits, targets)
    binary_s, rest_s = _log_binary_and_non_target(student_logits, targets, temperature)
    binary_t, rest_t = _log_binary_and_non_target(teacher_logits, targets, temperature)
    return kl_divergence(binary_t, binary_s), kl_divergence(rest_t, rest_s)


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    standardize: bool = False,
) -> Tensor:
    """(α·TCKD + β·NCKD)·T², mean over the batch (no warm-up; the term applies that). The
    teacher's logits are a target: detached, as in every logit loss of kdlab.losses.functional."""
    teacher_logits = teacher_logits.detach()
    if standardize:
        student_logits = standardize_logits(student_logits)
        teacher_logits = standardize_logits(teacher_logits)
    tckd, nckd = dkd_parts(student_logits, teacher_logits, targets, temperature)
    return temperature**2 * (alpha * tckd + beta * nckd).mean()


def _check_inputs(z: Tensor, v: Tensor, targets: Tensor) -> None:
    if z.dim() != 2 or z.shape != v.shape:
        raise ConfigError(
            f"dkd: student logits {tuple(z.shape)} and teacher logits {tuple(v.shape)} must both "
            "be [batch, classes]; teacher and student must predict the same classes"
        )
    if targets.dtype.is_floating_point or targets.shape != z.shape[:1]:
        raise ConfigError(
            f"dkd needs one integer class label per sample (shape [{z.shape[0]}]), got targets of "
            f"shape {tuple(targets.shape)} and dtype {targets.dtype}; use it with class labels, "
            "or use soft_target for soft or multi-label targets"
        )
    if len(targets) and (targets.min() < 0 or targets.max() >= z.shape[1]):
        raise ConfigError(
            f"dkd: labels must lie in [0, {z.shape[1] - 1}] for {z.shape[1]} classes, got "
            f"{int(targets.min())}..{int(targets.max())}; check that the model's class count "
            "matches the data"
        )


def _number(name: str, value: object, *, positive: bool = False) -> float:
    bound = "> 0" if positive else "≥ 0"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigError(f"dkd: {name} must be a finite number {bound}, got {quote(value)}")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise ConfigError(f"dkd: {name} must be a finite number {bound}, got {number}")
    return number


@register_term
class DKD(Term):
    """min((epoch+1)/warmup, 1) · (α·TCKD + β·NCKD)·T², mean over the batch (Zhao et al. 2022).

    ``warmup`` is in epochs (0: no warm-up); ``Batch.epoch`` is 0-based and set by the engine, so
    outside kdlab's loop set it yourself or use ``warmup: 0``. The teacher's logits are detached.
    """

    kind = "dkd"

    def __init__(
        self,
        weight: float = 1.0,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup: int = 20,
        standardize: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(weight, name)
        self.alpha = _number("alpha", alpha)
        self.beta = _number("beta", beta)
        if self.alpha == 0 and self.beta == 0:
            raise ConfigError(
                "dkd: alpha and beta are both 0, so the term is always 0; give either a positive "
                "value (the paper: alpha 1, beta 8), or set the term's weight to 0"
            )
        self.temperature = _number("temperature", temperature, positive=True)
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ConfigError(
                f"dkd: warmup is a number of epochs, an integer ≥ 0 (0: none), got {quote(warmup)}"
            )
        self.warmup = warmup
        self.standardize = bool(standardize)

    def prepare(
        self, student: ModelOutput, teacher: ModelOutput | None, sample: Batch | None = None
    ) -> None:
        """Check the warm-up against the run's length, which the sample batch carries."""
        self.check_run(0, sample.epochs if sample is not None else 0)

    def check_run(self, train_size: int, epochs: int) -> None:
        """A warm-up longer than training never reaches full weight (0 epochs: unknown)."""
        if epochs > 0 and self.warmup > epochs:
            raise ConfigError(
                f"loss term {self.name!r} (dkd): warmup is {self.warmup} epochs but training runs "
                f"only {epochs}, so the loss never reaches full weight; set warmup ≤ {epochs} "
                "(e.g. a fifth of the epochs, or 0 for none)"
            )

    def warmup_factor(self, epoch: int) -> float:
        """min((epoch + 1) / warmup, 1) for a 0-based epoch; 1 without warm-up."""
        return 1.0 if self.warmup == 0 else min((epoch + 1) / self.warmup, 1.0)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> Tensor:
        v = self._teacher(teacher).logits.detach()
        value = dkd_loss(
            student.logits, v, batch.targets,
            alpha=self.alpha, beta=self.beta,
            temperature=self.temperature, standardize=self.standardize,
        )  # fmt: skip
        return self.warmup_factor(batch.epoch) * value

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, alpha={self.alpha}, beta={self.beta}, T={self.temperature}, "
            f"warmup={self.warmup}, standardize={self.standardize}"
        )
