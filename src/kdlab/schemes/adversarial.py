"""Adversarial distillation (seed 004): a discriminator D on logits, real = teacher, fake = student.

Three modes share one scheme:

- ``pretrained`` — D was trained beforehand (:func:`pretrain_discriminator`) and stays frozen;
  the student minimises its objective + β·(−H(fake, P_D)) (see ``pretrained_fool_loss``).
- ``gan`` — D and student alternate on every batch:
  L(W_D) = −γ[log σ(D(T(x))) + log(1 − σ(D(G(x))))],  L(W_G) = objective − α·log σ(D(G(x))).
- ``wgan`` — L(W_D) = −γ[D(T(x)) − D(G(x))] (+ λ·gradient penalty),  L(W_G) = objective − α·D(G(x)),
  with D kept Lipschitz by weight clipping or a gradient penalty.

The student's supervised part — the seed's β·H(y, P_S) for GAN/WGAN, α·H(y, P_S) for the pretrained
D — is the ``objective`` (e.g. ``[{type: ce, weight: ...}]``), which may add a soft-target KD term.
``adversarial_weight`` is the weight of the adversarial term (α in the seed's GAN/WGAN formulas, β
in its pretrained-D formula), ``discriminator_weight`` is γ.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn

from kdlab.data.base import ArrayDataset
from kdlab.engine import Engine
from kdlab.errors import ConfigError
from kdlab.losses.adversarial import (
    FoolForm,
    clip_weights,
    discriminator_accuracy,
    gan_discriminator_loss,
    gan_generator_loss,
    gradient_penalty,
    pretrained_fool_loss,
    wgan_critic_loss,
    wgan_generator_loss,
)
from kdlab.losses.base import LossOutput, Objective, at_least_float32
from kdlab.models.discriminator import has_batch_norm
from kdlab.schemes.base import Scheme, Update, batch_accuracy, predict_logits
from kdlab.settings import TrainSettings
from kdlab.taps import resolve_modules
from kdlab.types import Batch

Mode = Literal["pretrained", "gan", "wgan"]
MODES = ("pretrained", "gan", "wgan")


def check_weight(name: str, value: float) -> float:
    value = float(value)
    if not value >= 0 or value == float("inf"):  # also rejects NaN
        raise ConfigError(
            f"{name} must be a finite number ≥ 0, got {value}; the sign of each adversarial term "
            "is fixed by its formula, so give its size only"
        )
    return value


@contextmanager
def no_param_grads(module: nn.Module) -> Iterator[None]:
    """Let gradients flow *through* ``module`` to its input without touching its parameters."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


class AdversarialScheme(Scheme):
    """Student + discriminator on one engine; optimizers ``student`` and ``discriminator``.

    ``discriminator`` is any module called as ``D(logits, labels) -> scores [batch]`` (see
    :class:`~kdlab.models.discriminator.LogitDiscriminator`). With ``critic_batches="same"``
    (default), per batch: one student forward, ``d_steps`` discriminator updates on (teacher
    logits, detached student logits), then one student update against the *updated* D with D's
    parameters excluded from the graph. With ``"fresh"`` (the WGAN papers' loop, where every
    critic iteration draws a new minibatch): one D update per batch and one student update every
    ``d_steps``-th batch, so an epoch has 1/d_steps as many student updates. The teacher runs in
    eval mode under no_grad. In ``pretrained`` mode D is frozen (eval mode, no optimizer) and
    only the student step runs.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        discriminator: nn.Module,
        objective: Objective,
        *,
        mode: Mode = "gan",
        adversarial_weight: float = 1.0,
        discriminator_weight: float = 1.0,
        d_steps: int = 1,
        label_smoothing: float = 0.0,
        lipschitz: Literal["clip", "gp"] | None = None,
        clip_value: float = 0.01,
        gp_weight: float = 10.0,
        fool_form: FoolForm = "seed",
        critic_batches: Literal["same", "fresh"] = "same",
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if teacher is None:
            raise ConfigError("adversarial distillation needs a teacher: its logits are 'real'")
        self.adversarial_weight = check_weight("adversarial_weight", adversarial_weight)
        self.discriminator_weight = check_weight("discriminator_weight", discriminator_weight)
        self.gp_weight = check_weight("gp_weight", gp_weight)
        if int(d_steps) < 1:
            raise ConfigError(
                f"d_steps (discriminator steps per student step) must be ≥ 1, got {d_steps}"
            )
        if not 0.0 <= label_smoothing < 0.5:
            raise ConfigError(
                f"label_smoothing must be in [0, 0.5), got {label_smoothing}; it sets the real "
                "target to 1 − label_smoothing (one-sided: fake targets stay 0)"
            )
        if label_smoothing and mode == "wgan":
            raise ConfigError(
                "label_smoothing applies to gan/pretrained D losses; a WGAN critic has no labels "
                "to smooth — remove it"
            )
        if mode == "wgan":
            lipschitz = lipschitz or "clip"
        elif lipschitz is not None:
            raise ConfigError(
                f"lipschitz is a WGAN setting; mode {mode!r} does not use it — remove it or use "
                "mode: wgan"
            )
        if lipschitz not in (None, "clip", "gp"):
            raise ConfigError(f"lipschitz must be 'clip' or 'gp', got {lipschitz!r}")
        if lipschitz == "clip" and not clip_value > 0:
            raise ConfigError(f"clip_value must be > 0, got {clip_value}")
        if lipschitz == "gp" and has_batch_norm(discriminator):
            raise ConfigError(
                "a gradient penalty needs a discriminator that scores each sample on its own, but "
                "this one has BatchNorm (it mixes samples in a batch); use norm: layer or none"
            )
        if critic_batches not in ("same", "fresh"):
            raise ConfigError(f"critic_batches must be 'same' or 'fresh', got {critic_batches!r}")
        if critic_batches == "fresh" and mode == "pretrained":
            raise ConfigError(
                "critic_batches applies to gan/wgan (a pretrained D takes no steps while the "
                "student trains); remove it or change the mode"
            )
        if fool_form not in ("seed", "non_saturating"):
            raise ConfigError(f"fool_form must be 'seed' or 'non_saturating', got {fool_form!r}")
        self.student, self.teacher, self.discriminator = student, teacher, discriminator
        self.objective, self.mode = objective, mode
        self.d_steps, self.real_target = int(d_steps), 1.0 - float(label_smoothing)
        self.lipschitz, self.clip_value, self.fool_form = lipschitz, float(clip_value), fool_form
        self.critic_batches, self._batches_seen = critic_batches, 0
        resolve_modules(student, objective.student_taps, "student")  # fail before training
        resolve_modules(teacher, objective.teacher_taps, "teacher")
        teacher.requires_grad_(False)

    # -- the Scheme contract --------------------------------------------------------------------

    def trainable(self) -> dict[str, nn.Module]:
        models = {"model": self.student, "objective": self.objective}
        if self.mode != "pretrained":
            models["discriminator"] = self.discriminator
        return models

    def frozen(self) -> dict[str, nn.Module]:
        models = {"teacher": self.teacher}
        if self.mode == "pretrained":
            models["discriminator"] = self.discriminator
        return models

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        params = [*self.student.parameters(), *self.objective.parameters()]
        groups = {"student": [p for p in params if p.requires_grad]}
        if self.mode != "pretrained":
            groups["discriminator"] = list(self.discriminator.parameters())
        return groups

    def eval_model(self) -> nn.Module:
        return self.student

    def prepare(self, sample: Batch) -> None:
        """Check that D reads the teacher's logits; freeze a pretrained D; clip D's weights."""
        check_discriminator(self.discriminator, self.teacher, sample)
        if self.mode == "pretrained":  # frozen here, not at construction: it may pretrain first
            self.discriminator.requires_grad_(False)
        if self.lipschitz == "clip":
            clip_weights(self.discriminator, self.clip_value)  # the bound holds from step 0

    def train_step(self, batch: Batch, update: Update) -> dict[str, float]:
        obj, labels = self.objective, batch.targets
        fresh = self.critic_batches == "fresh"
        self._batches_seen += 1
        student_turn = not fresh or self._batches_seen % self.d_steps == 0
        with torch.no_grad():
            teacher_out = self.forward(self.teacher, batch.inputs, obj.teacher_taps, "teacher")
        with torch.set_grad_enabled(student_turn):
            student_out = self.forward(self.student, batch.inputs, obj.student_taps, "student")
        real_logits = at_least_float32(teacher_out.logits)
        metrics = {"acc": batch_accuracy(student_out.logits, labels)}
        if self.mode != "pretrained":
            # D's steps see detached student logits: the D loss cannot reach the student.
            steps = 1 if fresh else self.d_steps
            metrics.update(
                self._discriminator_steps(real_logits, student_out.logits, labels, update, steps)
            )
        if not student_turn:
            return metrics
        with no_param_grads(self.discriminator):  # the student loss cannot reach D
            fake = self.discriminator(at_least_float32(student_out.logits), labels)
        adversarial = self._student_term(fake)
        out = obj(student_out, teacher_out, batch)
        terms = {**out.terms, "adversarial": adversarial}
        update("student", LossOutput(out.total + self.adversarial_weight * adversarial, terms))
        if self.mode != "wgan":  # a critic's sign means nothing, a classifier's does
            metrics["fooled"] = float((fake.detach() > 0).float().mean())
        if self.mode == "pretrained":
            with torch.no_grad():
                metrics["d_acc"] = discriminator_accuracy(
                    self.discriminator(real_logits, labels), fake
                )
        return metrics

    # -- pieces ---------------------------------------------------------------------------------

    def _student_term(self, fake: Tensor) -> Tensor:
        if self.mode == "gan":
            return gan_generator_loss(fake)
        if self.mode == "wgan":
            return wgan_generator_loss(fake)
        return pretrained_fool_loss(fake, self.fool_form)

    def _discriminator_steps(
        self, real: Tensor, student_logits: Tensor, labels: Tensor, update: Update, steps: int
    ) -> dict[str, float]:
        fake_logits = at_least_float32(student_logits.detach())
        D, totals = self.discriminator, {"d_acc": 0.0, "wasserstein": 0.0}
        for _ in range(steps):  # the same batch; the student has not moved in between
            real_scores, fake_scores = D(real, labels), D(fake_logits, labels)
            if self.mode == "gan":
                base = gan_discriminator_loss(real_scores, fake_scores, self.real_target)
                terms = {"gan": base}
                totals["d_acc"] += discriminator_accuracy(real_scores, fake_scores)
            else:
                base = wgan_critic_loss(real_scores, fake_scores)
                terms = {"critic": base}
                totals["wasserstein"] -= float(base.detach())  # E f(real) − E f(fake)
            total = self.discriminator_weight * base
            if self.lipschitz == "gp":
                terms["gp"] = gradient_penalty(D, real, fake_logits, labels)
                total = total + self.gp_weight * terms["gp"]
            update("discriminator", LossOutput(total, terms))
            if self.lipschitz == "clip":
                clip_weights(D, self.clip_value)
        key = "d_acc" if self.mode == "gan" else "wasserstein"
        return {key: totals[key] / steps}


def check_discriminator(discriminator: nn.Module, teacher: nn.Module, sample: Batch) -> None:
    """Raise ConfigError unless D maps the teacher's logits on ``sample`` to one score each."""
    logits = predict_logits(teacher, sample.inputs)
    was_training = discriminator.training
    discriminator.eval()
    try:
        with torch.no_grad():
            scores = discriminator(logits, sample.targets)
    except (ValueError, RuntimeError) as err:
        raise ConfigError(f"the discriminator cannot read the teacher's logits: {err}") from err
    finally:
        discriminator.train(was_training)
    if not isinstance(scores, Tensor) or tuple(scores.shape) != (len(sample),):
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
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
        real_scores = self.discriminator(real, batch.targets)
        fake_scores = self.discriminator(fake, batch.targets)
        loss = gan_discriminator_loss(real_scores, fake_scores, self.real_target)
        update("discriminator", LossOutput(loss, {"gan": loss}))
        return {"d_acc": discriminator_accuracy(real_scores, fake_scores)}


@torch.no_grad()
def holdout_accuracy(
    discriminator: nn.Module, teacher: nn.Module, generator: nn.Module, data: ArrayDataset
) -> float:
    """D's accuracy on teacher (real) vs generator (fake) logits of ``data``, in eval mode."""
    real, fake = predict_logits(teacher, data.x), predict_logits(generator, data.x)
    was_training = discriminator.training
    discriminator.eval()
    try:
        return discriminator_accuracy(discriminator(real, data.y), discriminator(fake, data.y))
    finally:
        discriminator.train(was_training)


def pretrain_discriminator(
    discriminator: nn.Module,
    teacher: nn.Module,
    generator: nn.Module,
    train: ArrayDataset,
    settings: TrainSettings,
    *,
    holdout: ArrayDataset | None = None,
    real_target: float = 1.0,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Train D on the engine for ``settings.epochs``; returns its history and held-out accuracy.

    ``settings.optimizers['discriminator']`` (if given) overrides ``settings.optimizer``.
    """
    scheme = DiscriminatorPretraining(discriminator, teacher, generator, real_target)
    engine = Engine(settings, seed=seed, progress=progress, description="discriminator")
    history = engine.fit(scheme, train, None)
    summary: dict[str, Any] = {"epochs": settings.epochs, "history": history}
    if holdout is not None and len(holdout):
        summary["holdout_accuracy"] = holdout_accuracy(discriminator, teacher, generator, holdout)
    return summary


__all__ = [
    "AdversarialScheme",
    "DiscriminatorPretraining",
    "holdout_accuracy",
    "pretrain_discriminator",
]
