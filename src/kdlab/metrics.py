"""Evaluation metrics for classifiers and for how well a student follows its teacher.

All metrics are computed in float64 from logits. ``distillation_error`` is Φ_γ,n of seed 001 §7.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdlab.divergences import kl_divergence


def _f64(x: Tensor) -> Tensor:
    return x.detach().to(torch.float64)


def accuracy(logits: Tensor, targets: Tensor) -> float:
    """Top-1 accuracy in [0, 1]."""
    return (logits.argmax(-1) == targets).double().mean().item()


def agreement(student_logits: Tensor, teacher_logits: Tensor) -> float:
    """Fraction of samples on which student and teacher predict the same top-1 class."""
    return (student_logits.argmax(-1) == teacher_logits.argmax(-1)).double().mean().item()


def nll(logits: Tensor, targets: Tensor) -> float:
    """Mean negative log-likelihood of the true labels (nats)."""
    log_probs = torch.log_softmax(_f64(logits), -1)
    return -log_probs.gather(-1, targets.view(-1, 1)).mean().item()


def kl_to_teacher(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0
) -> float:
    """Mean over samples of KL(softmax(v/T) ‖ softmax(z/T)), in nats."""
    log_p = torch.log_softmax(_f64(teacher_logits) / temperature, -1)
    log_q = torch.log_softmax(_f64(student_logits) / temperature, -1)
    return kl_divergence(log_p, log_q).mean().item()


def _bin_sums(logits: Tensor, targets: Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per confidence bin: sample count, summed confidence, number correct (float64)."""
    probs = torch.softmax(_f64(logits), -1)
    confidence, predicted = probs.max(-1)
    correct = (predicted == targets).double()
    # Bin b holds confidences in (b/n, (b+1)/n]; ceil(c·n) − 1 maps c = 1.0 into the last bin.
    bins = (torch.ceil(confidence * n_bins).long() - 1).clamp(0, n_bins - 1)
    counts = torch.bincount(bins, minlength=n_bins).double()
    conf_sum = torch.bincount(bins, weights=confidence, minlength=n_bins)
    acc_sum = torch.bincount(bins, weights=correct, minlength=n_bins)
    return counts, conf_sum, acc_sum


def expected_calibration_error(logits: Tensor, targets: Tensor, n_bins: int = 15) -> float:
    """ECE with ``n_bins`` equal-width confidence bins on (0, 1]: Σ_b |B_b|/n · |acc_b − conf_b|."""
    counts, conf_sum, acc_sum = _bin_sums(logits, targets, n_bins)
    return ((acc_sum - conf_sum).abs().sum() / counts.sum()).item() if counts.sum() > 0 else 0.0


def reliability_bins(logits: Tensor, targets: Tensor, n_bins: int = 15) -> dict[str, list[float]]:
    """What a reliability diagram plots, in the ECE's bins: per bin the sample ``count``, the mean
    ``confidence`` and the ``accuracy`` (both 0 for an empty bin). Counts, not fractions, so the
    bins of several runs pool exactly (kdlab report pools a group's seeds)."""
    counts, conf_sum, acc_sum = _bin_sums(logits, targets, n_bins)
    safe = counts.clamp(min=1)
    return {"count": counts.tolist(), "confidence": (conf_sum / safe).tolist(),
            "accuracy": (acc_sum / safe).tolist()}  # fmt: skip


def distillation_error(
    teacher_logits: Tensor, student_logits: Tensor, targets: Tensor, gamma: float = 1.0
) -> float:
    """Φ_γ,n(f, g) = (1/n) Σ_i |φ_γ(f(x_i), y_i) − φ_γ(g(x_i), y_i)| (seed 001 §7).

    φ_γ(f(x), y) is the softmax at temperature γ of f's logits, taken at the true label y.
    """
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    idx = targets.view(-1, 1)
    phi_f = torch.softmax(_f64(teacher_logits) / gamma, -1).gather(-1, idx)
    phi_g = torch.softmax(_f64(student_logits) / gamma, -1).gather(-1, idx)
    return (phi_f - phi_g).abs().mean().item()


def classification_metrics(
    logits: Tensor,
    targets: Tensor,
    teacher_logits: Tensor | None = None,
    *,
    gamma: float = 1.0,
    n_bins: int = 15,
) -> dict[str, float]:
    """Accuracy, NLL and ECE; with ``teacher_logits`` also agreement, KL to teacher and Φ_γ."""
    out = {
        "accuracy": accuracy(logits, targets),
        "nll": nll(logits, targets),
        "ece": expected_calibration_error(logits, targets, n_bins),
    }
    if teacher_logits is not None:
        out["agreement"] = agreement(logits, teacher_logits)
        out["kl_to_teacher"] = kl_to_teacher(logits, teacher_logits)
        out["distill_error"] = distillation_error(teacher_logits, logits, targets, gamma)
    return out
