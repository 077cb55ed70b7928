"""Teacher-assistant chains (Mirzadeh et al. 2020): teacher → assistant(s) → student.

When the capacity gap between teacher and student is large, an intermediate-size assistant is
distilled from the teacher first and then teaches the student. Each link is an offline
distillation with the experiment's loss; every model of the chain is recorded (roles
``assistant1`` … ``assistantN`` in chain order, the student as ``distilled``), each with the
agreement / KL / Φ_γ metrics against its own teacher (the previous link).

YAML::

    distill:
      scheme: assistant
      options:
        assistants: [{type: mlp, hidden: [128]}]      # largest first
        # assistant_train: {epochs: 40}              # default: the distillation's settings
      loss: [{type: ce, weight: 0.1}, {type: soft_target, weight: 0.9, temperature: 4}]

Python::

    runs = assistant_chain(teacher, [MLP(64, [128]), student], data, hinton_loss(), settings)

Assistants start from weights drawn from their derived seeds (kdlab.seeding) and learn from the
student's training examples (``student.train_subset`` applies to the whole chain): the chain is a
way to distill, and sees the data the distillation sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import field_validator
from torch import nn

from kdlab.data import DataSplits
from kdlab.errors import ConfigError
from kdlab.models import check_model_specs
from kdlab.runs import Recorder, RunInfo, RunResult
from kdlab.schemes.base import DistillContext, checked, require_teacher
from kdlab.schemes.offline import LossSpec, fit_offline
from kdlab.schemes.registry import SchemeSpec
from kdlab.settings import Strict, TrainSettings


class AssistantOptions(Strict):
    """``distill.options`` of ``scheme: assistant``."""

    #: Model specs of the assistants, in chain order (from the teacher's side).
    assistants: list[Any]
    #: Training settings of the assistants; the distillation's settings when unset.
    assistant_train: TrainSettings | None = None

    @field_validator("assistants", mode="before")
    @classmethod
    def _specs(cls, assistants: Any) -> list[Any]:
        if not isinstance(assistants, list) or not assistants:
            raise ValueError(
                "a teacher-assistant chain needs at least one assistant model, e.g. "
                "assistants: [{type: mlp, hidden: [128]}]; for teacher → student alone use "
                "scheme: offline"
            )
        return check_model_specs(assistants, "assistants")


def _check_chain(chain: Sequence[nn.Module | None]) -> None:
    if len(chain) < 2:
        raise ConfigError(
            f"a teacher-assistant chain needs at least one assistant and the student, got "
            f"{len(chain)} model(s); for teacher → student alone use kdlab.distill"
        )
    missing = [i for i, model in enumerate(chain) if model is None]
    if missing:
        where = ", ".join("the student" if i == len(chain) - 1 else f"assistant {i + 1}"
                          for i in missing)  # fmt: skip
        raise ConfigError(
            f"the chain teacher → {len(chain) - 1} assistant(s) → student is missing {where}: "
            "every link needs a model"
        )


def assistant_chain(
    teacher: nn.Module | None,
    chain: Sequence[nn.Module | None],
    data: DataSplits,
    loss: LossSpec,
    settings: TrainSettings | None = None,
    assistant_settings: TrainSettings | None = None,
    run: RunInfo | None = None,
    recorder: Recorder | None = None,
) -> list[RunResult]:
    """Distill ``teacher`` into ``chain[0]``, that into ``chain[1]``, …; the last is the student.

    Returns one run per model of ``chain``: roles ``assistant1`` …, the student's is ``run``'s
    role when it is not the default ``model`` (else ``distilled``). ``assistant_settings`` trains
    every link but the last (default: ``settings``).
    """
    previous = require_teacher(teacher, "a teacher-assistant chain starts from a trained teacher")
    _check_chain(chain)
    settings = settings or TrainSettings()
    run = (run or RunInfo()).replace(config={"scheme": "assistant", "chain_length": len(chain)})
    student_role = "distilled" if run.role == "model" else run.role
    roles = [*(f"assistant{i}" for i in range(1, len(chain))), student_role]
    runs: list[RunResult] = []
    for i, (model, role) in enumerate(zip(chain, roles, strict=True)):
        is_student = i == len(chain) - 1
        link = run.replace(role=role, name=f"{role} s{run.seed}", config={"link": i + 1})
        link_settings = settings if is_student else (assistant_settings or settings)
        runs.append(fit_offline(model, data, loss, link_settings, previous, link, recorder))
        previous = runs[-1].model
    return runs


def _build_assistants(ctx: DistillContext) -> list[nn.Module]:
    opts = ctx.options
    assert isinstance(opts, AssistantOptions)
    assistants = []
    for position, spec in enumerate(opts.assistants, 1):
        where = f"distill.options.assistants[{position - 1}]"
        build = lambda spec=spec, p=position: ctx.build(spec, p)  # noqa: E731
        assistants.append(checked(build, ctx.data, f"assistant {position}", where))
    return assistants


def assistant_models(ctx: DistillContext) -> tuple[list[nn.Module], list[nn.Module]]:
    """Preflight: teacher → assistant 1 → … → student, each learning from the one before."""
    assistants = _build_assistants(ctx)
    teachers = [ctx.teacher] if ctx.teacher is not None else []
    return [*assistants, ctx.new_student()], [*teachers, *assistants]


def run_assistant(ctx: DistillContext) -> list[RunResult]:
    opts = ctx.options
    assert isinstance(opts, AssistantOptions)
    assistants = _build_assistants(ctx)
    return assistant_chain(
        ctx.teacher, [*assistants, ctx.new_student()], ctx.data, ctx.loss or [], ctx.train,
        opts.assistant_train, RunInfo("distilled", seed=ctx.seed, config=ctx.config), ctx.recorder,
    )  # fmt: skip


SCHEME = SchemeSpec(
    "assistant", run_assistant, AssistantOptions,
    summary="teacher → assistant(s) → student, each link an offline distillation (TAKD)",
    models=assistant_models,
)  # fmt: skip

__all__ = ["SCHEME", "AssistantOptions", "assistant_chain"]
