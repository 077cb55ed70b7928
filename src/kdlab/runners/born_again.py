"""Self-distillation — born-again networks (Furlanello et al. 2018; seed 001 §4).

Generation 0 has the student's architecture and learns from labels; generation g + 1, with the
same architecture, is distilled from generation g (an offline distillation with the experiment's
loss). Every generation is kept and recorded (roles ``gen0`` … ``genK``), and so is their
ensemble (role ``ensemble``): the mean of the generations' probabilities, log-mean-exp of their
log-softmax outputs (:class:`~kdlab.models.ensemble.EnsembleTeacher`). As in Furlanello et al.'s
BANE the ensemble averages the born-again students, generations 1…K; ``ensemble_gen0: true``
adds generation 0.

YAML::

    teacher: null
    distill:
      scheme: born_again
      options: {generations: 3}      # gen1..gen3 after gen0
      loss: [{type: ce, weight: 0.1}, {type: soft_target, weight: 0.9, temperature: 4}]

Python::

    runs = born_again(lambda g: MLP(64, [16]), data, hinton_loss(4.0, 0.9), settings)

Generation 0 starts from the ``student`` baseline's initial weights, so with ``distill.train``
unset it retrains the baseline exactly (the ``gen0`` and ``student`` rows agree). Generation g ≥ 1
starts, as in the paper, from fresh weights (drawn from seed + 1000·g): the generations then differ
by more than their targets, which is what makes their ensemble worth having. ``fresh_init: false``
starts every generation from the baseline's weights instead — a paired comparison that isolates
the teacher's effect, at the price of near-identical generations. ``gen0: teacher`` uses the
experiment's trained teacher as generation 0 (born-again from another architecture).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import PositiveInt
from torch import nn

from kdlab.api import LossSpec, RunResult, fit_model, record_model
from kdlab.data.base import ArrayDataset, DataSplits
from kdlab.errors import ConfigError
from kdlab.models.ensemble import EnsembleTeacher
from kdlab.runners import DistillContext, Runner, register_runner
from kdlab.runners.common import SEED_STRIDE, build_seeded, recording_kwargs, student_spec
from kdlab.settings import Strict, TrainSettings
from kdlab.store import RunStore


class BornAgainOptions(Strict):
    """``distill.options`` of ``scheme: born_again``."""

    #: Born-again generations after generation 0.
    generations: PositiveInt = 3
    #: Generation 0: ``labels`` (the student's architecture, trained on labels) or ``teacher``.
    gen0: Literal["labels", "teacher"] = "labels"
    #: Include generation 0 in the ensemble (BANE averages generations 1…K only).
    ensemble_gen0: bool = False
    #: Generations ≥ 1 start from fresh weights (seed + 1000·g), not from the baseline's.
    fresh_init: bool = True

    @property
    def uses_teacher(self) -> bool:
        return self.gen0 == "teacher"


def born_again(
    new_student: Callable[[int], nn.Module],
    data: DataSplits,
    loss: LossSpec,
    settings: TrainSettings | None = None,
    *,
    generations: int = 3,
    gen0: nn.Module | None = None,
    ensemble_gen0: bool = False,
    train_set: ArrayDataset | None = None,
    seed: int = 0,
    store: RunStore | None = None,
    experiment: str = "adhoc",
    progress: bool = True,
    gamma: float = 1.0,
    ece_bins: int = 15,
    config: dict[str, Any] | None = None,
) -> list[RunResult]:
    """Train generation 0 on labels (unless ``gen0`` is given, already trained), then
    ``generations`` students each distilled from the previous one; return their runs and the
    run of their ensemble (when it has at least two members).

    ``new_student(g)`` returns the untrained model of generation g (the student's architecture);
    ``loss`` is the distillation loss of every generation after the first.
    """
    if generations < 1:
        raise ConfigError(f"born-again needs generations ≥ 1, got {generations}")
    shared = {"store": store, "experiment": experiment, "gamma": gamma, "ece_bins": ece_bins}
    fit = {**shared, "train_set": train_set, "seed": seed, "progress": progress}
    config = {**(config or {}), "scheme": "born_again"}
    runs: list[RunResult] = []
    if gen0 is None:
        runs.append(fit_model(
            new_student(0), data, [{"type": "ce"}], settings, role="gen0",
            name=f"born-again gen0 s{seed}", config={**config, "generation": 0}, **fit,
        ))  # fmt: skip
        models = [runs[0].model]
    else:
        models = [gen0]
    for g in range(1, generations + 1):
        run = fit_model(
            new_student(g), data, loss, settings, teacher=models[-1], role=f"gen{g}",
            name=f"born-again gen{g} s{seed}", config={**config, "generation": g}, **fit,
        )  # fmt: skip
        runs.append(run)
        models.append(run.model)
    members = models if ensemble_gen0 else models[1:]
    if len(members) >= 2:
        first = 0 if ensemble_gen0 else 1
        runs.append(record_model(
            EnsembleTeacher(members), data, seed=seed, role="ensemble",
            name=f"born-again ensemble gen{first}-{generations} s{seed}",
            config={**config, "generations": list(range(first, generations + 1))}, **shared,
        ))  # fmt: skip
    return runs


def run_born_again(ctx: DistillContext) -> list[RunResult]:
    opts = ctx.options
    assert isinstance(opts, BornAgainOptions)
    gen0 = None
    if opts.gen0 == "teacher":
        if ctx.teacher is None:
            raise ConfigError(
                "distill.options.gen0 is 'teacher', but the experiment has no teacher "
                "(teacher: null); describe the teacher or use gen0: labels"
            )
        gen0 = ctx.teacher
    spec = student_spec(ctx) if opts.fresh_init else None

    def new_student(g: int) -> nn.Module:
        if spec is None or g == 0:
            return ctx.new_student()  # the baseline's initial weights
        return build_seeded(spec, ctx.data, ctx.seed + SEED_STRIDE * g)

    return born_again(
        new_student, ctx.data, ctx.loss, ctx.train, generations=opts.generations,
        gen0=gen0, ensemble_gen0=opts.ensemble_gen0, train_set=ctx.train_set, seed=ctx.seed,
        progress=ctx.fit_kwargs.get("progress", True), config=ctx.config,
        **recording_kwargs(ctx.fit_kwargs),
    )  # fmt: skip


register_runner(Runner(
    "born_again", run_born_again, BornAgainOptions, needs_teacher=False,
    summary="each generation of the student's architecture teaches the next (born-again)",
))  # fmt: skip

__all__ = ["BornAgainOptions", "born_again"]
