"""Adversarial distillation runs (seed 004): pretrained D, GAN KD, WGAN KD.

YAML::

    distill:
      scheme: adversarial
      options: {mode: wgan, adversarial_weight: 0.5, lipschitz: gp,
                discriminator: {hidden: [64, 64], norm: layer}}
      loss: [{type: ce, weight: 1.0}]          # the student's supervised part (+ soft_target)
      train:
        optimizers: {discriminator: {name: adam, lr: 1.0e-4, betas: [0.5, 0.9]}}

Python::

    run = adversarial_distill(teacher, student, data, {"mode": "gan"}, settings=settings)

In ``pretrained`` mode the run first builds the fake generator (the student's initial weights,
trained on labels for ``early_epochs`` when ``fake_student: early``), then trains D against it for
``pretrain_epochs``, then trains the student with D frozen — all on the same engine, recorded as
one run whose config holds the pretraining summary (D's held-out accuracy).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from pydantic import Field, PositiveFloat, PositiveInt, ValidationError, model_validator
from torch import nn

from kdlab.api import RunResult, error_text, fit_model
from kdlab.data.base import ArrayDataset, DataSplits
from kdlab.engine import Engine
from kdlab.errors import ConfigError
from kdlab.losses import CrossEntropy, Objective, Term, build_objective
from kdlab.models.discriminator import LogitDiscriminator
from kdlab.runners import DistillContext, Runner, register_runner
from kdlab.schemes import OfflineScheme
from kdlab.schemes.adversarial import AdversarialScheme, pretrain_discriminator
from kdlab.settings import ScheduleSettings, Strict, TrainSettings

WGAN_ONLY = ("lipschitz", "clip_value", "gp_weight")
ALTERNATING_ONLY = ("d_steps", "critic_batches")  # D takes no steps while a pretrained D is used
PRETRAINED_ONLY = ("fake_student", "early_epochs", "pretrain_epochs", "fool_form")


class DiscriminatorOptions(Strict):
    """The logit discriminator (kdlab.models.discriminator.LogitDiscriminator)."""

    hidden: list[PositiveInt] = Field(default_factory=lambda: [64, 64])
    conditional: bool = False
    norm: Literal["none", "layer", "batch"] = "none"
    activation: Literal["leaky_relu", "relu", "tanh"] = "leaky_relu"
    input: Literal["logits", "centered", "log_probs"] = "logits"


class AdversarialOptions(Strict):
    """``distill.options`` of ``scheme: adversarial``."""

    mode: Literal["pretrained", "gan", "wgan"] = "gan"
    #: α of the seed's GAN/WGAN student loss, β of its pretrained-D student loss.
    adversarial_weight: float = Field(1.0, ge=0)
    #: γ of the seed's D losses.
    discriminator_weight: float = Field(1.0, ge=0)
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
    gp_weight: float = Field(10.0, ge=0)
    #: Pretrained only: the fake generator D learns against, its epochs on labels, D's epochs.
    fake_student: Literal["init", "early"] = "early"
    early_epochs: PositiveInt = 1
    pretrain_epochs: PositiveInt = 10
    #: Pretrained only: ``seed`` = −H(fake, P_D) literally; ``non_saturating`` = H(real, P_D).
    fool_form: Literal["seed", "non_saturating"] = "seed"

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


def parse_options(options: AdversarialOptions | Mapping[str, Any] | None) -> AdversarialOptions:
    if isinstance(options, AdversarialOptions):
        return options
    try:
        return AdversarialOptions.model_validate(dict(options or {}))
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg'].removeprefix('Value error, ')}"
            for e in err.errors()
        )
        raise ConfigError(f"adversarial options are invalid: {problems}") from None


def build_discriminator(opts: DiscriminatorOptions, num_classes: int, seed: int) -> nn.Module:
    """D with initial weights fixed by ``seed``, leaving the global random stream untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 7_919)  # offset: not the student's initial stream
        return LogitDiscriminator(num_classes, **opts.model_dump())


def phase_settings(settings: TrainSettings, epochs: int, keep: str) -> TrainSettings:
    """Settings for a short preliminary phase: constant lr, only the ``keep`` override."""
    return settings.model_copy(update={
        "epochs": epochs, "schedule": ScheduleSettings(), "keep_best": False,
        "optimizers": {k: v for k, v in settings.optimizers.items() if k == keep},
    })  # fmt: skip


def pretraining_phase(
    opts: AdversarialOptions,
    teacher: nn.Module,
    student: nn.Module,
    discriminator: nn.Module,
    data: DataSplits,
    settings: TrainSettings,
    seed: int,
    *,
    train: ArrayDataset,
    progress: bool,
) -> dict[str, Any]:
    """Seed 004's first stage, before the student trains: returns a summary for the run record.

    The fake generator is a copy of the untrained ``student`` (``fake_student: init``), trained
    on labels for ``early_epochs`` (``early``); D then learns teacher vs generator logits.
    """
    generator = copy.deepcopy(student)  # the student's initial weights, before any training
    if opts.fake_student == "early":
        Engine(
            phase_settings(settings, opts.early_epochs, "student"),
            seed=seed, progress=progress, description="early student",
        ).fit(OfflineScheme(generator, Objective([CrossEntropy()])), train, None)  # fmt: skip
    summary = pretrain_discriminator(
        discriminator, teacher, generator, train,
        phase_settings(settings, opts.pretrain_epochs, "discriminator"),
        holdout=data.val, real_target=1.0 - opts.label_smoothing, seed=seed, progress=progress,
    )  # fmt: skip
    history = summary.pop("history")
    summary["final_train_d_acc"] = history[-1]["d_acc"]
    return summary


def record_failed_run(
    err: Exception, seed: int, config: dict[str, Any], fit_kwargs: Mapping[str, Any]
) -> None:
    """Mark the student's run failed in the store when D's pretraining stops it early."""
    store = fit_kwargs.get("store")
    if store is None:
        return
    run_id = store.create_run(
        experiment=fit_kwargs.get("experiment", "adhoc"), name=fit_kwargs["name"],
        role=fit_kwargs["role"], seed=seed, config=config,
    )  # fmt: skip
    store.fail_run(run_id, f"discriminator pretraining failed: {error_text(err)}")


def adversarial_distill(
    teacher: nn.Module,
    student: nn.Module,
    data: DataSplits,
    options: AdversarialOptions | Mapping[str, Any] | None = None,
    *,
    loss: Sequence[Term | Mapping[str, Any]] | Objective | None = None,
    settings: TrainSettings | None = None,
    discriminator: nn.Module | None = None,
    seed: int = 0,
    config: Mapping[str, Any] | None = None,
    **fit_kwargs: Any,
) -> RunResult:
    """Distill ``teacher`` into ``student`` adversarially; returns the student's run.

    ``loss`` is the student's non-adversarial part (default: cross-entropy with weight 1).
    ``discriminator`` replaces the one built from ``options.discriminator``. Other keyword
    arguments (train_set, store, experiment, role, name, progress, …) go to ``fit_model``.
    """
    opts = parse_options(options)
    settings = settings or TrainSettings()
    if loss is None:
        objective = Objective([CrossEntropy()])
    else:
        objective = loss if isinstance(loss, Objective) else build_objective(loss)
    if discriminator is None:
        discriminator = build_discriminator(opts.discriminator, data.num_classes, seed)
    # The scheme first: it validates everything before any pretraining starts.
    scheme = AdversarialScheme(
        student, teacher, discriminator, objective, mode=opts.mode,
        adversarial_weight=opts.adversarial_weight,
        discriminator_weight=opts.discriminator_weight, d_steps=opts.d_steps,
        label_smoothing=opts.label_smoothing, lipschitz=opts.lipschitz,
        clip_value=opts.clip_value, gp_weight=opts.gp_weight, fool_form=opts.fool_form,
        critic_batches=opts.critic_batches,
    )  # fmt: skip
    record: dict[str, Any] = {"options": opts.model_dump(mode="json")}
    student_settings = settings
    fit_kwargs.setdefault("role", "distilled")
    fit_kwargs.setdefault("name", f"{opts.mode} s{seed}")
    if opts.mode == "pretrained":
        train = fit_kwargs.get("train_set")
        try:
            record["pretraining"] = pretraining_phase(
                opts, teacher, student, discriminator, data, settings, seed,
                train=data.train if train is None else train,
                progress=fit_kwargs.get("progress", True),
            )  # fmt: skip
        except Exception as err:  # the run failed before the student's training started
            record_failed_run(err, seed, {**(config or {}), "adversarial": record}, fit_kwargs)
            raise
        # D stays frozen from here: the student's run has no discriminator optimizer.
        student_settings = settings.model_copy(update={"optimizers": {
            k: v for k, v in settings.optimizers.items() if k != "discriminator"
        }})  # fmt: skip
    return fit_model(
        student, data, objective, student_settings, teacher=teacher, seed=seed, scheme=scheme,
        config={**(config or {}), "adversarial": record}, **fit_kwargs,
    )  # fmt: skip


def run_adversarial(ctx: DistillContext) -> list[RunResult]:
    assert isinstance(ctx.options, AdversarialOptions)
    if ctx.teacher is None:
        raise ConfigError("scheme 'adversarial' needs a teacher: its logits are the real samples")
    run = adversarial_distill(
        ctx.teacher, ctx.new_student(), ctx.data, ctx.options, loss=ctx.loss,
        settings=ctx.train, seed=ctx.seed, train_set=ctx.train_set, config=ctx.config,
        **ctx.fit_kwargs,
    )  # fmt: skip
    return [run]


register_runner(Runner(
    "adversarial", run_adversarial, AdversarialOptions,
    summary="student vs a logit discriminator: pretrained D, GAN or WGAN (seed 004)",
))  # fmt: skip

__all__ = ["AdversarialOptions", "DiscriminatorOptions", "adversarial_distill"]
