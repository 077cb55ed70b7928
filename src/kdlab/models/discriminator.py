"""A discriminator on logits for adversarial distillation (seed 004).

It reads a batch of logits — the teacher's are "real", the student's "fake" — and returns one
score per sample: the pre-sigmoid logit of P(real) for GAN losses, or the critic value f(z) for
WGAN losses. A two-way softmax over [s_real, s_fake] equals sigmoid(s_real − s_fake), so a single
output loses nothing against the seed's "softmax output of the discriminator".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import Tensor, nn

from kdlab.seeding import seeded
from kdlab.settings import Strict

NORMS = ("none", "layer", "batch")
INPUTS = ("logits", "centered", "log_probs")
ACTIVATIONS = {"leaky_relu": lambda: nn.LeakyReLU(0.2), "relu": nn.ReLU, "tanh": nn.Tanh}


class LogitDiscriminator(nn.Module):
    """MLP: [Linear → norm → activation] × len(hidden) → Linear to one score per sample.

    ``conditional`` concatenates the one-hot label to the input, so D judges "is this a teacher's
    answer *for this class*" rather than "does this look like any teacher answer".
    ``norm``: ``layer`` (LayerNorm) acts per sample and is safe with a gradient penalty;
    ``batch`` (BatchNorm) mixes samples, which breaks the per-sample gradient a penalty needs,
    so the adversarial scheme rejects it with one. ``input`` picks what D sees: raw ``logits``
    (the seed), ``centered`` logits (each row minus its mean: softmax ignores that shift, so D
    cannot win on it) or ``log_probs``.
    """

    def __init__(
        self,
        num_classes: int,
        hidden: Sequence[int] = (64, 64),
        conditional: bool = False,
        norm: str = "none",
        activation: str = "leaky_relu",
        input: str = "logits",
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"discriminator norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if input not in INPUTS:
            raise ValueError(
                f"discriminator input must be one of {', '.join(INPUTS)}, got {input!r}"
            )
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"discriminator activation must be one of {', '.join(ACTIVATIONS)}, "
                f"got {activation!r}"
            )
        if num_classes < 1 or any(h < 1 for h in hidden):
            raise ValueError(
                f"layer sizes must be ≥ 1: num_classes={num_classes}, hidden={list(hidden)}"
            )
        self.num_classes, self.conditional = num_classes, bool(conditional)
        self.norm, self.input = norm, input
        layers: list[nn.Module] = []
        width = num_classes * (2 if conditional else 1)
        for size in hidden:
            layers.append(nn.Linear(width, size))
            if norm == "layer":
                layers.append(nn.LayerNorm(size))
            elif norm == "batch":
                layers.append(nn.BatchNorm1d(size))
            layers.append(ACTIVATIONS[activation]())
            width = size
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, logits: Tensor, labels: Tensor | None = None) -> Tensor:
        """Scores of shape [batch] for logits [batch, num_classes] (and labels when conditional)."""
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"the discriminator expects logits of shape [batch, {self.num_classes}], got "
                f"{tuple(logits.shape)}; build it with num_classes equal to the models' output"
            )
        x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        if self.input == "centered":
            x = x - x.mean(-1, keepdim=True)
        elif self.input == "log_probs":
            x = torch.log_softmax(x, -1)
        if self.conditional:
            if labels is None:
                raise ValueError("a conditional discriminator needs the labels of the batch")
            x = torch.cat([x, F.one_hot(labels, self.num_classes).to(x.dtype)], dim=1)
        return self.net(x).squeeze(-1)


#: Offset of D's seed from the experiment seed, so that D does not share the student's stream.
DISCRIMINATOR_SEED_OFFSET = 7_919


class DiscriminatorOptions(Strict):
    """:class:`LogitDiscriminator`'s arguments as a config section (``options.discriminator``)."""

    hidden: list[PositiveInt] = Field(default_factory=lambda: [64, 64])
    conditional: bool = False
    norm: Literal["none", "layer", "batch"] = "none"
    activation: Literal["leaky_relu", "relu", "tanh"] = "leaky_relu"
    input: Literal["logits", "centered", "log_probs"] = "logits"


def build_discriminator(
    num_classes: int, seed: int, options: DiscriminatorOptions | None = None
) -> LogitDiscriminator:
    """D with initial weights fixed by ``seed``, leaving the global random stream untouched."""
    with seeded(seed + DISCRIMINATOR_SEED_OFFSET):
        return LogitDiscriminator(num_classes, **(options or DiscriminatorOptions()).model_dump())


def has_batch_norm(module: nn.Module) -> bool:
    """True when any submodule normalises over the batch (BatchNorm of any dimension)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


__all__ = ["LogitDiscriminator", "has_batch_norm"]
