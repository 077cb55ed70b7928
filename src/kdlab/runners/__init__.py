"""How an experiment's distillation step runs, per scheme.

``kdlab run`` trains (or loads) the teacher and the student-alone baseline itself; then it hands a
:class:`DistillContext` to the runner named by ``distill.scheme``. A runner builds its models,
picks a :class:`~kdlab.schemes.Scheme`, trains with :func:`kdlab.api.fit_model` (one engine for
all) and returns the runs it made. ``distill.options`` is validated by the runner's own options
model, so each scheme documents and checks its settings in one place.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from torch import nn

from kdlab.api import RunResult
from kdlab.data.base import ArrayDataset, DataSplits
from kdlab.settings import Strict, TrainSettings


class NoOptions(Strict):
    """This scheme takes no options."""


@dataclass
class DistillContext:
    """Everything a runner needs for one seed of one experiment."""

    data: DataSplits
    seed: int
    teacher: nn.Module | None
    train_set: ArrayDataset  # the student's labelled examples
    loss: list[dict[str, Any]]
    train: TrainSettings
    options: BaseModel
    new_student: Callable[[], nn.Module]  # same initial weights as the baseline student
    #: The student's model spec, for schemes that build more models of its architecture.
    student_model: dict[str, Any] = field(default_factory=dict)
    #: ``distill.stages`` (kdlab.stages.StageConfig list) when the experiment trains in stages.
    stages: list[Any] | None = None
    #: store, experiment, progress, gamma, ece_bins — pass on to fit_model as **fit_kwargs.
    fit_kwargs: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # recorded with each run


@dataclass(frozen=True)
class Runner:
    name: str
    run: Callable[[DistillContext], list[RunResult]]
    options: type[Strict] = NoOptions
    needs_teacher: bool = True
    summary: str = ""


RUNNERS: dict[str, Runner] = {}


def register_runner(runner: Runner) -> Runner:
    RUNNERS[runner.name] = runner
    return runner


def get_runner(name: str) -> Runner:
    if name not in RUNNERS:
        close = difflib.get_close_matches(name, RUNNERS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown scheme {name!r}{hint}; valid schemes: {', '.join(RUNNERS)}")
    return RUNNERS[name]


# Registration order is the order error messages list the schemes in: offline first.
# isort: off
from kdlab.runners import offline as _offline  # noqa: E402,F401  (registers the built-ins)
from kdlab.runners import adversarial as _adversarial  # noqa: E402,F401
from kdlab.runners import assistant as _assistant  # noqa: E402,F401
from kdlab.runners import born_again as _born_again  # noqa: E402,F401
from kdlab.runners import mutual as _mutual  # noqa: E402,F401
# isort: on

__all__ = ["RUNNERS", "DistillContext", "NoOptions", "Runner", "get_runner", "register_runner"]
