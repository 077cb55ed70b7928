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

YAML::

    distill:
      scheme: adversarial
      options: {mode: wgan, adversarial_weight: 0.5, lipschitz: gp,
                discriminator: {hidden: [64, 64], norm: layer}}
      loss: [{type: ce, weight: 1.0}]          # the student's supervised part (+ soft_target)
      train: {optimizers: {discriminator: {name: adam, lr: 1.0e-4, betas: [0.5, 0.9]}}}

Python: ``adversarial_distill(teacher, student, data, {"mode": "gan"}, settings=settings)``.

In ``pretrained`` mode the run first trains D against a fake generator (the student's initial
weights, trained on labels for ``early_epochs`` with ``fake_student: early``;
:mod:`kdlab.schemes.discriminator`), then the student with D frozen: one run, whose config holds
the pretraining summary. Every rule between the options lives in :class:`AdversarialOptions`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator
from torch import Tensor, nn

from kdlab.data import DataSplits
from kdlab.divergences import at_least_float32
from kdlab.engine import Engine, EpochCallback
from kdlab.errors import ConfigError
from kdlab.freeze import no_param_grads
from kdlab.inference import batch_accuracy
from kdlab.losses import CrossEntropy, LossOutput, Objective
from kdlab.losses.adversarial import (
    clip_weights,
    discriminator_accuracy,
    gan_discriminator_loss,
    gan_generator_loss,
    gradient_penalty,
    pretrained_fool_loss,
    wgan_critic_loss,
    wgan_generator_loss,
)
from kdlab.models.discriminator import (
    DiscriminatorOptions,
    build_discriminator,
    has_batch_norm,
)
from kdlab.runs import Recorder, RunInfo, RunResult, fit
from kdlab.schemes.base import DistillContext, Scheme, Update, require_teacher
from kdlab.schemes.discriminator import (
    DiscriminatorPretraining,
    check_discriminator,
    discriminator_models,
    pretrain_discriminator,
)
from kdlab.schemes.offline import LossSpec, OfflineScheme, as_objective
from kdlab.schemes.registry import SchemeSpec
from kdlab.settings import Strict, TrainSettings, parse_options, phase_settings
from kdlab.taps import resolve_modules
from kdlab.types import Batch

WGAN_ONLY = ("lipschitz", "clip_value", "gp_weight")
ALTERNATING_ONLY = ("d_steps", "critic_batches")  # D takes no steps while a pretrained D is used
PRETRAINED_ONLY = ("fake_student", "early_epochs", "pretrain_epochs", "fool_form")


class AdversarialOptions(Strict):
    """``distill.options`` of ``scheme: adversarial``."""

    mode: Literal["pretrained", "gan", "wgan"] = "gan"
    #: α of the seed's GAN/WGAN student loss, β of its pretrained-D student loss.
    adversarial_weight: float = 1.0
    #: γ of the seed's D losses.
    discriminator_weight: float = 1.0
    discriminator: DiscriminatorOptions = Field(default_factory=DiscriminatorOptions)
    #: Discriminator updates per student update.
    d_steps: PositiveInt = 1
    #: ``same``: the d_steps D updates reuse the student's batch (a student update per batch);
    #: ``fresh``: one D update per batch, the student's every d_steps-th batch (WGAN's loop).
    critic_batches: Literal["same", "fresh"] = "same"
    #: One-sided: real target 1 − label_smoothing, fake target 0 (gan / pretrained).
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    #: WGAN only: ``clip`` (weights in [−clip_value, clip_value]) or ``gp`` (penalty gp_weight).
    lipschitz: Literal["clip", "gp"] | None = None
    clip_value: PositiveFloat = 0.01
    gp_weight: float = 10.0
    #: Pretrained only: the fake generator D learns against, its epochs on labels, D's epochs.
    fake_student: Literal["init", "early"] = "early"
    early_epochs: PositiveInt = 1
    pretrain_epochs: PositiveInt = 10
    #: Pretrained only: ``seed`` = −H(fake, P_D) literally; ``non_saturating`` = H(real, P_D).
    fool_form: Literal["seed", "non_saturating"] = "seed"

    @field_validator("adversarial_weight", "discriminator_weight", "gp_weight")
    @classmethod
    def _size(cls, value: float, info: Any) -> float:
        if not value >= 0 or value == float("inf"):  # also rejects NaN
            raise ValueError(
                f"{info.field_name} must be a finite number ≥ 0, got {value}; the sign of each "
                "adversarial term is fixed by its formula, so give its size only"
            )
        return value

    @property
    def lipschitz_method(self) -> Literal["clip", "gp"] | None:
        """How a WGAN critic is kept Lipschitz (weight clipping unless ``gp``); None for gan."""
        return (self.lipschitz or "clip") if self.mode == "wgan" else None

    @model_validator(mode="after")
    def _consistent(self) -> AdversarialOptions:
        given = self.model_fields_set
        checks = ((WGAN_ONLY, ("wgan",)), (PRETRAINED_ONLY, ("pretrained",)),
                  (ALTERNATING_ONLY, ("gan", "wgan")))  # fmt: skip
        for keys, modes in checks:
            stray = [k for k in keys if k in given]
            if stray and self.mode not in modes:
                wanted = " or ".join(modes)
                raise ValueError(
                    f"{', '.join(stray)} only apply to mode: {wanted}, but mode is {self.mode!r}; "
                    "remove them or change the mode"
                )
        if "label_smoothing" in given and self.mode == "wgan":
            raise ValueError(
                "label_smoothing does not apply to mode: wgan (a critic has no labels to smooth); "
                "remove it"
            )
        if self.lipschitz == "gp" and self.discriminator.norm == "batch":
            raise ValueError(
                "lipschitz: gp needs a discriminator that scores each sample on its own, but "
                "discriminator.norm is 'batch' (BatchNorm mixes the samples of a batch); use "
                "norm: layer or none"
            )
        if self.lipschitz == "gp" and "clip_value" in given:
            raise ValueError("clip_value applies to lipschitz: clip, not gp; remove it")
        if self.mode == "wgan" and self.lipschitz != "gp" and "gp_weight" in given:
            raise ValueError("gp_weight applies to lipschitz: gp; set lipschitz: gp or remove it")
        if self.fake_student == "init" and "early_epochs" in given:
            raise ValueError("early_epochs applies to fake_student: early; remove it")
        return self


class AdversarialScheme(Scheme):
    """Student + discriminator on one engine; optimizers ``student`` and ``discriminator``.

    ``discriminator`` is any module called as ``D(logits, labels) -> scores [batch]``. With
    ``critic_batches: same``, per batch: ``d_steps`` D updates on (teacher logits, detached
    student logits), then one student update against the *updated* D, D's parameters out of the
    graph. With ``fresh`` (WGAN's loop): one D update per batch, a student update every
    ``d_steps``-th batch. In ``pretrained`` mode D is frozen and only the student step runs.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        discriminator: nn.Module,
        objective: Objective,
        options: AdversarialOptions | Mapping[str, Any] | None = None,
    ) -> None:
        opts = parse_options(AdversarialOptions, options, "adversarial options are invalid")
        teacher = require_teacher(teacher, "adversarial distillation reads the teacher's logits "
                                  "as 'real'")  # fmt: skip
        if opts.lipschitz_method == "gp" and has_batch_norm(discriminator):
            raise ConfigError(
                "a gradient penalty needs a discriminator that scores each sample on its own, but "
                "this one has BatchNorm (it mixes samples in a batch); use norm: layer or none"
            )
        self.student, self.teacher, self.discriminator = student, teacher, discriminator
        self.objective, self.options, self.mode = objective, opts, opts.mode
        self.real_target = 1.0 - opts.label_smoothing
        self.lipschitz, self._batches_seen = opts.lipschitz_method, 0
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

    def reference(self) -> nn.Module | None:
        return self.teacher

    def prepare(self, sample: Batch) -> None:
        """Check that D reads the teacher's logits; freeze a pretrained D; clip D's weights."""
        check_discriminator(self.discriminator, self.teacher, sample)
        if self.mode == "pretrained":  # frozen here, not at construction: it may pretrain first
            self.discriminator.requires_grad_(False)
        if self.lipschitz == "clip":
            clip_weights(self.discriminator, self.options.clip_value)  # the bound holds from step 0

    def train_step(self, batch: Batch, update: Update) -> dict[str, float]:
        obj, labels = self.objective, batch.targets
        fresh = self.options.critic_batches == "fresh"
        self._batches_seen += 1
        student_turn = not fresh or self._batches_seen % self.options.d_steps == 0
        with torch.no_grad():
            teacher_out = self.forward(self.teacher, batch.inputs, obj.teacher_taps, "teacher")
        with torch.set_grad_enabled(student_turn):
            student_out = self.forward(self.student, batch.inputs, obj.student_taps, "student")
        real_logits = at_least_float32(teacher_out.logits)
        metrics: dict[str, float] = {"acc": batch_accuracy(student_out.logits, labels)}
        if self.mode != "pretrained":
            # D's steps see detached student logits: the D loss cannot reach the student.
            steps = 1 if fresh else self.options.d_steps
            metrics.update(
                self._discriminator_steps(real_logits, student_out.logits, labels, update, steps)
            )
        if not student_turn:
            return metrics
        with no_param_grads(self.discriminator):  # the student loss cannot reach D
            fake = self.discriminator(at_least_float32(student_out.logits), labels)
        adversarial = self._student_term(fake)
        out = self.replica(obj)(student_out, teacher_out, batch)
        terms = {**out.terms, "adversarial": adversarial}
        weight = self.options.adversarial_weight
        update("student", LossOutput(out.total + weight * adversarial, terms))
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
        return pretrained_fool_loss(fake, self.options.fool_form)

    def _discriminator_steps(
        self, real: Tensor, student_logits: Tensor, labels: Tensor, update: Update, steps: int
    ) -> dict[str, float]:
        fake_logits = at_least_float32(student_logits.detach())
        D, totals = self.replica(self.discriminator), {"d_acc": 0.0, "wasserstein": 0.0}
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
            total = self.options.discriminator_weight * base
            if self.lipschitz == "gp":
                terms["gp"] = gradient_penalty(D, real, fake_logits, labels)
                total = total + self.options.gp_weight * terms["gp"]
            update("discriminator", LossOutput(total, terms))
            if self.lipschitz == "clip":
                clip_weights(self.discriminator, self.options.clip_value)
        key = "d_acc" if self.mode == "gan" else "wasserstein"
        return {key: totals[key] / steps}


def pretraining_phase(
    scheme: AdversarialScheme, data: DataSplits, settings: TrainSettings, seed: int, progress: bool
) -> dict[str, Any]:
    """Seed 004's first stage, before the student trains: returns a summary for the run record.

    The fake generator is a copy of the untrained student (``fake_student: init``), trained
    on labels for ``early_epochs`` (``early``); D then learns teacher vs generator logits.
    """
    opts = scheme.options
    generator = copy.deepcopy(scheme.student)  # the student's initial weights, before training
    if opts.fake_student == "early":
        Engine(
            phase_settings(settings, opts.early_epochs, "student"),
            seed=seed, progress=progress, description="early student",
        ).fit(OfflineScheme(generator, Objective([CrossEntropy()])), data.train, None)  # fmt: skip
    pretraining = DiscriminatorPretraining(
        scheme.discriminator, scheme.teacher, generator, scheme.real_target
    )
    summary = pretrain_discriminator(
        pretraining, data.train, phase_settings(settings, opts.pretrain_epochs, "discriminator"),
        data.val, seed, progress,
    )  # fmt: skip
    history = summary.pop("history")
    summary["final_train_d_acc"] = history[-1]["d_acc"]
    return summary


def fit_adversarial(
    scheme: AdversarialScheme,
    data: DataSplits,
    settings: TrainSettings,
    run: RunInfo,
    recorder: Recorder | None = None,
    callbacks: Sequence[EpochCallback] = (),
) -> RunResult:
    """Fit a built scheme (in ``pretrained`` mode: D's pretraining first) and record the run."""
    recorder = recorder or Recorder()
    opts = scheme.options
    record: dict[str, Any] = {"options": opts.model_dump(mode="json")}
    run = run.replace(config={"adversarial": record})  # the summary below lands in it too
    if opts.mode == "pretrained":
        try:
            record["pretraining"] = pretraining_phase(
                scheme, data, settings, run.seed, recorder.progress
            )
        except Exception as err:  # the run failed before the student's training started
            recorder.stop(recorder.start(run, run.config), err, "discriminator pretraining "
                          "failed: ")  # fmt: skip
            raise
        # D stays frozen from here: the student's run has no discriminator optimizer.
        settings = settings.model_copy(update={"optimizers": {
            k: v for k, v in settings.optimizers.items() if k != "discriminator"
        }})  # fmt: skip
    return fit(scheme, data, settings, run, recorder, callbacks)


def adversarial_distill(
    teacher: nn.Module,
    student: nn.Module,
    data: DataSplits,
    options: AdversarialOptions | Mapping[str, Any] | None = None,
    loss: LossSpec | None = None,
    settings: TrainSettings | None = None,
    run: RunInfo | None = None,
    recorder: Recorder | None = None,
) -> RunResult:
    """Distill ``teacher`` into ``student`` adversarially; returns the student's run.

    ``loss`` is the student's non-adversarial part (default: cross-entropy with weight 1). D is
    built from ``options.discriminator`` with ``run.seed``; for a discriminator of your own,
    build :class:`AdversarialScheme` and call :func:`fit_adversarial`.
    """
    opts = parse_options(AdversarialOptions, options, "adversarial options are invalid")
    run = run or RunInfo("distilled")
    if run.name is None:
        run = run.replace(name=f"{opts.mode} s{run.seed}")
    discriminator = build_discriminator(data.num_classes, run.seed, opts.discriminator)
    objective = as_objective(loss if loss is not None else [CrossEntropy()])
    # The scheme first: it checks everything before any pretraining starts.
    scheme = AdversarialScheme(student, teacher, discriminator, objective, opts)
    return fit_adversarial(scheme, data, settings or TrainSettings(), run, recorder)


def run_adversarial(ctx: DistillContext) -> list[RunResult]:
    assert isinstance(ctx.options, AdversarialOptions)
    run = ctx.run("distilled", f"{ctx.options.mode} s{ctx.seed}")
    return [adversarial_distill(ctx.teacher, ctx.new_student(), ctx.data, ctx.options,
                                ctx.loss, ctx.train, run, ctx.recorder)]  # fmt: skip


SCHEME = SchemeSpec(
    "adversarial", run_adversarial, AdversarialOptions, models=discriminator_models,
    summary="student vs a logit discriminator: pretrained D, GAN or WGAN (seed 004)",
)  # fmt: skip

__all__ = [
    "SCHEME",
    "AdversarialOptions",
    "AdversarialScheme",
    "DiscriminatorOptions",
    "adversarial_distill",
    "fit_adversarial",
]
