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

    runs = born_again(lambda g: MLP(64, [16]), data, hinton_loss(4.0, 0.9), settings,
                      BornAgainOptions(generations=3))

Generation 0 starts from the ``student`` baseline's initial weights, so with ``distill.train`` unset
it retrains the baseline exactly (the ``gen0`` and ``student`` rows agree). Generation g ≥ 1 starts,
as in the paper, from fresh weights (drawn from its derived seed, kdlab.seeding): the generations
then differ by more than their targets, which is what makes their ensemble worth having.
``fresh_init: false`` starts every generation from the baseline's weights instead — a paired
comparison that isolates the teacher's effect, at the price of near-identical generations. ``gen0:
teacher`` uses the experiment's trained teacher as generation 0 (born-again from another
architecture).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import PositiveInt
from torch import nn

from kdlab.data import DataSplits
from kdlab.models.ensemble import EnsembleTeacher
from kdlab.runs import Recorder, RunInfo, RunResult, record_model
from kdlab.schemes.base import DistillContext, require_teacher
from kdlab.schemes.offline import LossSpec, fit_offline
from kdlab.schemes.registry import SchemeSpec
from kdlab.settings import Strict, TrainSettings


class BornAgainOptions(Strict):
    """``distill.options`` of ``scheme: born_again``."""

    #: Born-again generations after generation 0.
    generations: PositiveInt = 3
    #: Generation 0: ``labels`` (the student's architecture, trained on labels) or ``teacher``.
    gen0: Literal["labels", "teacher"] = "labels"
    #: Include generation 0 in the ensemble (BANE averages generations 1…K only).
    ensemble_gen0: bool = False
    #: Generations ≥ 1 start from fresh weights (their derived seeds), not from the baseline's.
    fresh_init: bool = True

    @property
    def uses_teacher(self) -> bool:
        return self.gen0 == "teacher"


def born_again(
    new_student: Callable[[int], nn.Module],
    data: DataSplits,
    loss: LossSpec,
    settings: TrainSettings | None = None,
    options: BornAgainOptions | None = None,
    gen0: nn.Module | None = None,
    run: RunInfo | None = None,
    recorder: Recorder | None = None,
) -> list[RunResult]:
    """Train generation 0 on labels (unless ``gen0`` is given, already trained), then
    ``options.generations`` students each distilled from the previous one; return their runs and
    the run of their ensemble (when it has at least two members).

    ``new_student(g)`` returns the untrained model of generation g (the student's architecture);
    ``loss`` is the distillation loss of every generation after the first. ``run`` carries the
    seed and the config recorded with every run (roles and names are set here).
    """
    opts, settings = options or BornAgainOptions(), settings or TrainSettings()
    run = (run or RunInfo()).replace(config={"scheme": "born_again"})
    seed, k = run.seed, opts.generations
    runs: list[RunResult] = []
    models = [gen0] if gen0 is not None else []
    if gen0 is None:
        runs.append(fit_offline(
            new_student(0), data, [{"type": "ce"}], settings, None,
            run.replace(role="gen0", name=f"born-again gen0 s{seed}", config={"generation": 0}),
            recorder,
        ))  # fmt: skip
        models.append(runs[0].model)
    for g in range(1, k + 1):
        info = run.replace(role=f"gen{g}", name=f"born-again gen{g} s{seed}",
                       config={"generation": g})  # fmt: skip
        runs.append(fit_offline(new_student(g), data, loss, settings, models[-1], info, recorder))
        models.append(runs[-1].model)
    members = models if opts.ensemble_gen0 else models[1:]
    if len(members) >= 2:
        first = 0 if opts.ensemble_gen0 else 1
        info = run.replace(role="ensemble", name=f"born-again ensemble gen{first}-{k} s{seed}",
                       config={"generations": list(range(first, k + 1))})  # fmt: skip
        runs.append(record_model(EnsembleTeacher(members), data, info, recorder))
    return runs


def run_born_again(ctx: DistillContext) -> list[RunResult]:
    opts = ctx.options
    assert isinstance(opts, BornAgainOptions)
    gen0 = None
    if opts.gen0 == "teacher":
        gen0 = require_teacher(ctx.teacher, "distill.options.gen0 is 'teacher'")

    def new_student(g: int) -> nn.Module:
        if not opts.fresh_init or g == 0:
            return ctx.new_student()  # the baseline's initial weights
        return ctx.build(None, g)

    run = RunInfo(seed=ctx.seed, config=ctx.config)
    return born_again(new_student, ctx.data, ctx.loss or [], ctx.train, opts, gen0, run,
                      ctx.recorder)  # fmt: skip


def born_again_models(ctx: DistillContext) -> tuple[list[nn.Module], list[nn.Module]]:
    """Preflight: each generation (the student's model) learns from the one before, and
    generation 1 from the teacher when ``gen0: teacher``."""
    assert isinstance(ctx.options, BornAgainOptions)
    student = ctx.new_student()
    gen0 = [ctx.teacher] if ctx.options.gen0 == "teacher" and ctx.teacher is not None else []
    return [student], [student, *gen0]


SCHEME = SchemeSpec(
    "born_again", run_born_again, BornAgainOptions, needs_teacher=False, models=born_again_models,
    summary="each generation of the student's architecture teaches the next (born-again)",
)  # fmt: skip

__all__ = ["SCHEME", "BornAgainOptions", "born_again"]
