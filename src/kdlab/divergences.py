"""Divergences between categorical distributions given as log-probabilities.

Every function takes ``log_p`` and ``log_q`` of the same shape ``[..., N]`` (log-softmax outputs,
``-inf`` allowed for masked classes) and returns the per-sample divergence ``D(p‖q)`` of shape
``[...]``, summed over the class dimension. Batch reduction (mean over samples, "batchmean") is the
loss terms' job. Everything stays in log space: no probability is formed where it could underflow,
so logits that differ by 1e4 still give finite, correct values and gradients.

Conventions (van Erven & Harremoës 2014): 0·log(0/x) = 0 and x·log(x/0) = +inf for x > 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

Divergence = Callable[[Tensor, Tensor], Tensor]

# Below this distance to α = 1 the closed form logsumexp(...)/(α−1) loses precision (it divides
# a small number by a small number), so we use the cumulant expansion of D_α in t = α−1 with
# r = log(p/q) under p: D_α = κ1 + t·κ2/2 + t²·κ3/6 + O(t³), κ1 = KL, κ2 = Var_p[r].
# (Inputs are computed in float64, so one threshold serves every dtype.)
_KL_BRANCH = {torch.float64: 1e-4}


def at_least_float32(x: Tensor) -> Tensor:
    """Half-precision logits are upcast for losses (they underflow at high T); float64 stays."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check(log_p: Tensor, log_q: Tensor) -> None:
    if log_p.shape != log_q.shape:
        raise ValueError(
            f"log_p and log_q must have the same shape [..., classes], got {tuple(log_p.shape)} "
            f"and {tuple(log_q.shape)}"
        )
    if log_p.dim() == 0:
        raise ValueError("expected log-probabilities of shape [..., classes], got a scalar")


def _support(log_p: Tensor) -> tuple[Tensor, Tensor]:
    """Mask of classes with p > 0, and p itself (exactly 0 off the support)."""
    mask = log_p > -math.inf
    return mask, log_p.exp()


def _masked(x: Tensor, mask: Tensor) -> Tensor:
    # Replacing masked entries *before* arithmetic keeps -inf out of every backward pass
    # (the torch.where-NaN-gradient pitfall).
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def kl_divergence(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p‖q) = Σ_i p_i (log p_i − log q_i), per sample.

    (Seed 000 writes KL as Σ Q·log(Q)/log(P); the ratio belongs inside one logarithm, as here.)
    """
    _check(log_p, log_q)
    mask, p = _support(log_p)
    log_ratio = _masked(log_p, mask) - _masked(log_q, mask)
    # q_i = 0 where p_i > 0 makes the divergence +inf, as it should be.
    log_ratio = torch.where(mask & (log_q == -math.inf), math.inf, log_ratio)
    return _masked(p * log_ratio, mask).sum(-1)


def reverse_kl_divergence(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(q‖p): the mode-seeking direction."""
    return kl_divergence(log_q, log_p)


def cross_entropy(log_p: Tensor, log_q: Tensor) -> Tensor:
    """H(p, q) = −Σ_i p_i log q_i = H(p) + KL(p‖q), per sample (seed 004's H(P_T^τ, P_S^τ))."""
    _check(log_p, log_q)
    mask, p = _support(log_p)
    neg = torch.where(mask & (log_q == -math.inf), math.inf, -_masked(log_q, mask))
    return _masked(p * neg, mask).sum(-1)


def js_divergence(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Jensen–Shannon divergence ½KL(p‖m) + ½KL(q‖m), m = (p+q)/2, in nats (bounded by log 2)."""
    _check(log_p, log_q)
    either = (log_p > -math.inf) | (log_q > -math.inf)
    # logaddexp(-inf, -inf) has a NaN backward: only combine classes where m > 0.
    log_m = torch.logaddexp(_masked(log_p, either), _masked(log_q, either))
    log_m = torch.where(either, log_m - math.log(2.0), -math.inf)
    return 0.5 * (kl_divergence(log_p, log_m) + kl_divergence(log_q, log_m))


def renyi_divergence(log_p: Tensor, log_q: Tensor, alpha: float) -> Tensor:
    """Rényi divergence of order α, D_α(p‖q) = 1/(α−1)·log Σ_i p_i^α q_i^(1−α), per sample.

    Computed as logsumexp_i(α·log p_i + (1−α)·log q_i)/(α−1) over the support of p. Extended
    orders (seed 003, eqs. 1.21–1.33): α = 0 gives −log Σ_i q_i·1{p_i>0}; α = 1 gives KL(p‖q);
    α = inf gives max_i log(p_i/q_i). Near α = 1 the cumulant expansion
    KL + (α−1)/2·Var_p[log p/q] + (α−1)²/6·κ3 replaces the closed form, which would divide
    two tiny numbers.
    (Seed 003 writes the α = 1 limit as "α → 0" in eqs. 1.28–1.29; the limit is α → 1.)
    """
    _check(log_p, log_q)
    alpha = float(alpha)
    if math.isnan(alpha) or alpha < 0:
        raise ValueError(f"Rényi order alpha must be a number ≥ 0 (inf allowed), got {alpha}")
    if alpha == 1.0:
        return kl_divergence(log_p, log_q)
    dtype = log_p.dtype
    # Near α = 1 any rounding of the log-sum-exp is divided by α−1, including the few-ulp
    # normalisation error of float32 log-softmax outputs. So: float64, renormalised. The
    # [batch, classes] tensor is small next to any model, and for normalised inputs the
    # renormalisation changes neither the value nor the gradient.
    log_p = log_p.double()
    log_q = log_q.double()
    log_p = log_p - torch.logsumexp(log_p, -1, keepdim=True)
    log_q = log_q - torch.logsumexp(log_q, -1, keepdim=True)
    return _renyi(log_p, log_q, alpha).to(dtype)


def _renyi(log_p: Tensor, log_q: Tensor, alpha: float) -> Tensor:
    mask, p = _support(log_p)
    lp, lq = _masked(log_p, mask), _masked(log_q, mask)
    q_zero = mask & (log_q == -math.inf)  # p > 0 = q: divergence +inf for α ≥ 1
    if alpha == 0.0:
        return -torch.logsumexp(torch.where(mask, lq, -math.inf), dim=-1)
    if math.isinf(alpha):
        ratio = torch.where(q_zero, math.inf, lp - lq)
        return torch.where(mask, ratio, -math.inf).amax(-1)
    exponent = alpha * lp + (1.0 - alpha) * _masked(lq, ~q_zero)
    # For α > 1 a class with p > 0 = q contributes +inf; for α < 1 it contributes 0 (-inf here).
    exponent = torch.where(q_zero, math.inf if alpha > 1.0 else -math.inf, exponent)
    exponent = torch.where(mask, exponent, -math.inf)
    if abs(alpha - 1.0) >= _KL_BRANCH[torch.float64]:
        return torch.logsumexp(exponent, dim=-1) / (alpha - 1.0)
    # Cumulant expansion, on inputs with the q = 0 classes neutralised (they are handled below).
    log_ratio = lp - _masked(lq, ~q_zero)
    kl = _masked(p * log_ratio, mask).sum(-1)
    centred = log_ratio - kl.unsqueeze(-1)
    k2 = _masked(p * centred**2, mask).sum(-1)
    k3 = _masked(p * centred**3, mask).sum(-1)
    t = alpha - 1.0
    value = kl + t / 2.0 * k2 + t * t / 6.0 * k3
    has_zero = q_zero.any(-1)
    if alpha >= 1.0:
        return torch.where(has_zero, math.inf, value)
    # α < 1 with some q = 0 < p: the divergence is finite and not near KL; use the closed form.
    closed = torch.logsumexp(torch.where(has_zero.unsqueeze(-1), exponent, 0.0), dim=-1) / t
    return torch.where(has_zero, closed, value)


def log_mean_exp(log_probs: Tensor, dim: int = 0) -> Tensor:
    """log of the mean of exp(log_probs) along ``dim``: averages distributions in log space."""
    return torch.logsumexp(log_probs, dim=dim) - math.log(log_probs.shape[dim])


DIVERGENCES: dict[str, Divergence] = {
    "kl": kl_divergence,
    "reverse_kl": reverse_kl_divergence,
    "js": js_divergence,
    "cross_entropy": cross_entropy,
}


def get_divergence(name: str, alpha: float | None = None) -> Divergence:
    """A divergence by name: ``kl``, ``reverse_kl``, ``js``, ``cross_entropy`` or ``renyi``."""
    if name == "renyi":
        if alpha is None:
            raise ValueError("the 'renyi' divergence needs an order: pass alpha (e.g. alpha=0.5)")
        order = float(alpha)
        renyi_divergence(torch.zeros(1, 1), torch.zeros(1, 1), order)  # validates alpha now

        def renyi(log_p: Tensor, log_q: Tensor) -> Tensor:
            return renyi_divergence(log_p, log_q, order)

        return renyi
    if name not in DIVERGENCES:
        valid = ", ".join([*DIVERGENCES, "renyi"])
        raise ValueError(f"unknown divergence {name!r}; valid divergences: {valid}")
    if alpha is not None:
        raise ValueError(f"alpha is only used by the 'renyi' divergence, not by {name!r}")
    return DIVERGENCES[name]
