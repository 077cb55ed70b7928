"""Adversarial distillation losses on discriminator scores (seed 004).

Each function takes D's per-sample scores s = D(logits) — the pre-sigmoid logit of P(real) for
GAN losses, the critic value f for WGAN losses — and returns a batch mean. Real = teacher logits
T(x), fake = student (generator) logits G(x). The weights of the seed's formulas (γ for D, α/β
for the student) are applied by the scheme, so these stay pure and reusable.

Log-sigmoids are written with softplus, which never forms σ(s) and so never takes log(0):
log σ(s) = −softplus(−s) and log(1 − σ(s)) = −softplus(s).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Critic = nn.Module  # called as critic(logits, labels) -> scores [batch]


def gan_discriminator_loss(real: Tensor, fake: Tensor, real_target: float = 1.0) -> Tensor:
    """−[log σ(D(T(x))) + log(1 − σ(D(G(x))))], each averaged over the batch.

    ``real_target`` < 1 is one-sided label smoothing (Salimans et al. 2016): the real term
    becomes the cross-entropy against target t, −[t·log σ(r) + (1−t)·log(1−σ(r))]; fake targets
    stay 0, so D is not taught to reward the student for fakes. t = 1 is the seed's formula.
    """
    real_term = real_target * F.softplus(-real)
    if real_target != 1.0:
        real_term = real_term + (1.0 - real_target) * F.softplus(real)
    return real_term.mean() + F.softplus(fake).mean()


def gan_generator_loss(fake: Tensor) -> Tensor:
    """−log σ(D(G(x))), batch mean: the student's adversarial term of seed 004's GAN KD."""
    return F.softplus(-fake).mean()


def wgan_critic_loss(real: Tensor, fake: Tensor) -> Tensor:
    """−[f(T(x)) − f(G(x))], batch means. Its negative estimates the Wasserstein-1 distance."""
    return fake.mean() - real.mean()


def wgan_generator_loss(fake: Tensor) -> Tensor:
    """−f(G(x)), batch mean: the student's adversarial term of seed 004's WGAN KD."""
    return -fake.mean()


FoolForm = Literal["seed", "non_saturating"]
LOG_EPS = math.log(1e-7)  # floor of log P_D(fake) in the seed form (see pretrained_fool_loss)


def pretrained_fool_loss(fake: Tensor, form: FoolForm = "seed") -> Tensor:
    """The student's adversarial term against a frozen, pretrained D, batch mean.

    Seed 004: L(W_S) = α·H(y, P_S) − β·H(network_true, P_D), where P_D is D's output on the
    *student's* logits and network_true says which network made them — "during training, the logit
    always comes from S", so network_true = fake. With P_D(fake | z) = 1 − σ(s):

        ``seed``:            −H(fake, P_D) = log max(1 − σ(s), ε) = max(−softplus(s), log ε)

    Minimising it maximises D's cross-entropy on the truth, i.e. makes D call student logits real.
    It is the saturating minimax form: its gradient −σ(s)·∇s vanishes while D confidently says
    fake (σ(s) ≈ 0). Unclipped it is unbounded below, and against a *frozen* piecewise-linear D
    the student can push s → ∞ (measured on digits: the term reached −6,000 and accuracy fell to
    chance). Hence P_D(fake) is clipped at ε = 1e-7 as cross-entropy implementations that take
    probabilities do (Keras' ``binary_crossentropy``): each sample stops being pushed once D is
    fooled with odds 10⁷:1. The alternative aims at the label "teacher":

        ``non_saturating``:  H(real, P_D) = −log σ(s) = softplus(−s)

    which pushes hardest where D is surest and stops at zero once D is fooled (the form the seed
    itself uses for GAN KD).
    """
    if form == "seed":
        return (-F.softplus(fake)).clamp(min=LOG_EPS).mean()
    if form == "non_saturating":
        return F.softplus(-fake).mean()
    raise ValueError(f"form must be 'seed' or 'non_saturating', got {form!r}")


def gradient_penalty(
    critic: Critic,
    real: Tensor,
    fake: Tensor,
    labels: Tensor | None = None,
    eps: Tensor | None = None,
) -> Tensor:
    """WGAN-GP (Gulrajani et al. 2017): mean over x̂ of (‖∇_x̂ f(x̂)‖₂ − 1)².

    x̂ = ε·real + (1 − ε)·fake with ε ~ U[0, 1] per sample (pass ``eps`` [batch] to fix it).
    The graph is kept (create_graph) so the penalty trains the critic. Summing the scores before
    differentiating yields each sample's own gradient only if the critic treats samples
    independently — hence no BatchNorm in a penalised critic. Labels are not interpolated: teacher
    and student answer the same input.
    """
    real, fake = real.detach(), fake.detach()
    if eps is None:
        eps = torch.rand(real.shape[0], device=real.device, dtype=real.dtype)
    eps = eps.reshape(-1, *([1] * (real.dim() - 1)))
    mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
    with torch.enable_grad():
        scores = critic(mixed, labels)
        (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    # sqrt(Σ g² + tiny): the norm's gradient is undefined at g = 0, this keeps it finite.
    norm = (grad.flatten(1).pow(2).sum(1) + 1e-12).sqrt()
    return (norm - 1).pow(2).mean()


@torch.no_grad()
def clip_weights(module: nn.Module, bound: float) -> None:
    """WGAN (Arjovsky et al. 2017) Lipschitz constraint: clamp every parameter to [−c, c]."""
    for p in module.parameters():
        p.clamp_(-bound, bound)


def discriminator_accuracy(real: Tensor, fake: Tensor) -> float:
    """Fraction of samples D classifies right (score > 0 means "teacher"), real and fake alike."""
    correct = (real.detach() > 0).sum() + (fake.detach() <= 0).sum()
    return float(correct) / (real.numel() + fake.numel())


__all__ = [
    "clip_weights",
    "discriminator_accuracy",
    "gan_discriminator_loss",
    "gan_generator_loss",
    "gradient_penalty",
    "pretrained_fool_loss",
    "wgan_critic_loss",
    "wgan_generator_loss",
]
