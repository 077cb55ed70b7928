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

Assistants start from weights drawn from seed + 1000·position and learn from the student's
training examples (``student.train_subset`` applies to the whole chain): the chain is a way to
distill, and sees the data the distillation sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import field_validator
from torch import nn

from kdlab.api import LossSpec, RunResult, fit_model
from kdlab.data.base import ArrayDataset, DataSplits
from kdlab.errors import ConfigError
from kdlab.runners import DistillContext, Runner, register_runner
from kdlab.runners.common import SEED_STRIDE, build_seeded, check_specs
from kdlab.settings import Strict, TrainSettings
from kdlab.store import RunStore


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
        return check_specs(assistants, "assistants")


def assistant_chain(
    teacher: nn.Module | None,
    chain: Sequence[nn.Module | None],
    data: DataSplits,
    loss: LossSpec,
    settings: TrainSettings | None = None,
    *,
    assistant_settings: TrainSettings | None = None,
    train_set: ArrayDataset | None = None,
    seed: int = 0,
    roles: Sequence[str] | None = None,
    store: RunStore | None = None,
    experiment: str = "adhoc",
    progress: bool = True,
    gamma: float = 1.0,
    ece_bins: int = 15,
    config: dict[str, Any] | None = None,
) -> list[RunResult]:
    """Distill ``teacher`` into ``chain[0]``, that into ``chain[1]``, …; the last is the student.

    Returns one run per model of ``chain``. ``assistant_settings`` trains every link but the
    last (default: ``settings``).
    """
    if teacher is None:
        raise ConfigError("a teacher-assistant chain starts from a trained teacher, got None")
    chain = list(chain)
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
    roles = list(roles) if roles is not None else [
        *(f"assistant{i}" for i in range(1, len(chain))), "distilled"
    ]  # fmt: skip
    config = {**(config or {}), "scheme": "assistant", "chain_length": len(chain)}
    runs: list[RunResult] = []
    previous = teacher
    for i, (model, role) in enumerate(zip(chain, roles, strict=True)):
        is_student = i == len(chain) - 1
        run = fit_model(
            model, data, loss, settings if is_student else (assistant_settings or settings),
            teacher=previous, train_set=train_set, seed=seed, role=role, name=f"{role} s{seed}",
            config={**config, "link": i + 1}, store=store, experiment=experiment,
            progress=progress, gamma=gamma, ece_bins=ece_bins,
        )  # fmt: skip
        runs.append(run)
        previous = run.model
    return runs


def run_assistant(ctx: DistillContext) -> list[RunResult]:
    opts = ctx.options
    assert isinstance(opts, AssistantOptions)
    if ctx.teacher is None:
        raise ConfigError("scheme 'assistant' distills a pre-trained teacher, but there is none")
    assistants = [
        build_seeded(spec, ctx.data, ctx.seed + SEED_STRIDE * position)
        for position, spec in enumerate(opts.assistants, start=1)
    ]
    return assistant_chain(
        ctx.teacher, [*assistants, ctx.new_student()], ctx.data, ctx.loss, ctx.train,
        assistant_settings=opts.assistant_train, train_set=ctx.train_set, seed=ctx.seed,
        config=ctx.config, **ctx.fit_kwargs,
    )  # fmt: skip


register_runner(Runner(
    "assistant", run_assistant, AssistantOptions,
    summary="teacher → assistant(s) → student, each link an offline distillation (TAKD)",
))  # fmt: skip

__all__ = ["AssistantOptions", "assistant_chain"]
