"""Seed 004's first stage as a scheme of its own: a discriminator D learns to tell the teacher's
logits (real) from a fixed generator's (fake), before the student trains against it.

Used by the adversarial scheme's ``pretrained`` mode (:mod:`kdlab.schemes.adversarial`); usable
alone through :func:`pretrain_discriminator`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdlab.data import ArrayDataset
from kdlab.devices import module_device
from kdlab.divergences import at_least_float32
from kdlab.engine import Engine
from kdlab.errors import ConfigError
from kdlab.inference import predict_logits
from kdlab.losses.adversarial import discriminator_accuracy, gan_discriminator_loss
from kdlab.models.discriminator import build_discriminator
from kdlab.schemes.base import DistillContext, Scheme, Update
from kdlab.settings import TrainSettings
from kdlab.types import Batch, LossOutput


def check_discriminator(discriminator: nn.Module, teacher: nn.Module, sample: Batch) -> None:
    """Raise ConfigError unless D maps the teacher's logits on ``sample`` to one score each."""
    device = module_device(discriminator)
    logits = predict_logits(teacher, sample.inputs).to(device)
    was_training = discriminator.training
    discriminator.eval()
    try:
        with torch.no_grad():
            scores = discriminator(logits, sample.targets.to(device))
    except (ValueError, RuntimeError) as err:
        raise ConfigError(f"the discriminator cannot read the teacher's logits: {err}") from err
    finally:
        discriminator.train(was_training)
    if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (len(sample),):
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ConfigError(
            f"the discriminator must return one score per sample, shape ({len(sample)},), "
            f"got {shape}"
        )


class DiscriminatorPretraining(Scheme):
    """Seed 004's first stage: train D to tell teacher logits (real) from a fixed generator's.

    The generator is a fixed student (its initial weights, or a briefly trained "early" student)
    in eval mode, so D learns against one fixed distribution of fakes. The D loss is the GAN one,
    with optional one-sided label smoothing. Optimizer name: ``discriminator``.
    """

    def __init__(
        self,
        discriminator: nn.Module,
        teacher: nn.Module,
        generator: nn.Module,
        real_target: float = 1.0,
    ) -> None:
        self.discriminator, self.teacher, self.generator = discriminator, teacher, generator
        self.real_target = real_target
        teacher.requires_grad_(False)
        generator.requires_grad_(False)

    def trainable(self) -> dict[str, nn.Module]:
        return {"discriminator": self.discriminator}

    def frozen(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher, "generator": self.generator}

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"discriminator": list(self.discriminator.parameters())}

    def eval_model(self) -> nn.Module:
        return self.discriminator  # not a classifier: fit this scheme with val=None

    def prepare(self, sample: Batch) -> None:
        check_discriminator(self.discriminator, self.teacher, sample)

    def train_step(self, batch: Batch, update: Update) -> dict[str, float]:
        with torch.no_grad():
            real = at_least_float32(self.forward(self.teacher, batch.inputs).logits)
            fake = at_least_float32(self.forward(self.generator, batch.inputs).logits)
        discriminator = self.replica(self.discriminator)  # learns: through DDP, where it runs
        real_scores = discriminator(real, batch.targets)
        fake_scores = discriminator(fake, batch.targets)
        loss = gan_discriminator_loss(real_scores, fake_scores, self.real_target)
        update("discriminator", LossOutput(loss, {"gan": loss}))
        return {"d_acc": discriminator_accuracy(real_scores, fake_scores)}


@torch.no_grad()
def holdout_accuracy(
    discriminator: nn.Module, teacher: nn.Module, generator: nn.Module, data: ArrayDataset
) -> float:
    """D's accuracy on teacher (real) vs generator (fake) logits of ``data``, in eval mode."""
    device = module_device(discriminator)
    real, fake = (predict_logits(m, data).to(device) for m in (teacher, generator))
    labels = data.y.to(device)
    was_training = discriminator.training
    discriminator.eval()
    try:
        return discriminator_accuracy(discriminator(real, labels), discriminator(fake, labels))
    finally:
        discriminator.train(was_training)


def pretrain_discriminator(
    scheme: DiscriminatorPretraining,
    train: ArrayDataset,
    settings: TrainSettings,
    holdout: ArrayDataset | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Train D on the engine for ``settings.epochs``; returns its history and held-out accuracy.

    ``settings.optimizers['discriminator']`` (if given) overrides ``settings.optimizer``.
    """
    engine = Engine(settings, seed=seed, progress=progress, description="discriminator")
    history = engine.fit(scheme, train, None)
    summary: dict[str, Any] = {"epochs": settings.epochs, "history": history}
    if holdout is not None and len(holdout):
        summary["holdout_accuracy"] = holdout_accuracy(
            scheme.discriminator, scheme.teacher, scheme.generator, holdout
        )
    return summary


def discriminator_models(ctx: DistillContext) -> tuple[list[nn.Module], list[nn.Module]]:
    """The adversarial scheme's preflight: the discriminator built from its options
    (``ctx.options.discriminator``) must score the teacher's logits."""
    student, data = ctx.new_student(), ctx.data
    try:
        d = build_discriminator(data.num_classes, ctx.seed, ctx.options.discriminator)
        check_discriminator(
            d, ctx.teacher or student, Batch(data.train.inputs(slice(2)), data.train.y[:2])
        )
    except (ConfigError, ValueError) as err:
        raise ConfigError(f"distill.options.discriminator: {err}") from None
    return [student], [ctx.teacher] if ctx.teacher is not None else []


__all__ = [
    "DiscriminatorPretraining",
    "check_discriminator",
    "discriminator_models",
    "holdout_accuracy",
    "pretrain_discriminator",
]
