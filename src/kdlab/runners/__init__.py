"""How an experiment's distillation step runs, per scheme.

``kdlab run`` trains (or loads) the teacher and the student-alone baseline itself; then it hands a
:class:`DistillContext` to the runner named by ``distill.scheme``. A runner builds its models,
picks a :class:`~kdlab.schemes.Scheme`, trains with :func:`kdlab.api.fit_model` (one engine for
all) and returns the runs it made. ``distill.options`` is validated by the runner's own options
model, so each scheme documents and checks its settings in one place.
"""

from __future__ import annotations

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
        raise ValueError(f"unknown scheme {name!r}; valid schemes: {', '.join(RUNNERS)}")
    return RUNNERS[name]


from kdlab.runners import offline as _offline  # noqa: E402,F401  (registers the built-ins)

__all__ = ["RUNNERS", "DistillContext", "NoOptions", "Runner", "get_runner", "register_runner"]
