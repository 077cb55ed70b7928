"""The Python API: train a model or distill a teacher into a student in one call.

    teacher = kdlab.train(MLP(64, [256, 256]), data, epochs=30)
    result = kdlab.distill(teacher.model, MLP(64, [16]), data, loss=hinton_loss(4.0, 0.9))

``data`` is a ``DataSplits`` (``kdlab.data.load_dataset``) or your own PyTorch data: a map-style
``Dataset`` of ``(x, y)`` pairs or a ``DataLoader`` over one (the training data: the test split
is carved from it), ``(train, test)`` or ``(train, val, test)`` of those, or a dict with keys
``train``, ``test`` (and ``val``) — read once into memory, see
:func:`kdlab.data.in_memory.as_splits`. To distill from a teacher trained on the same data, turn
it into ``DataSplits`` once (``as_splits(...)``) and pass those to both calls.

Both are offline runs (:mod:`kdlab.schemes.offline`) on the one engine, recorded through
:mod:`kdlab.runs`. Keyword options (``seed``, ``train_set``, ``store``, ``experiment``, ``role``,
``name``, ``config``, ``progress``, ``gamma``, ``ece_bins``, ``callbacks``) are gathered here
into the runs layer's :class:`~kdlab.runs.RunInfo` and :class:`~kdlab.runs.Recorder`; the other
schemes' Python functions (``mutual_learning``, ``born_again``, ``assistant_chain``,
``adversarial_distill``, ``fit_stages``) take those two objects directly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from torch import nn
from typing_extensions import Unpack

from kdlab.data import ArrayDataset
from kdlab.data.in_memory import DataLike, TorchData, as_array_dataset, as_splits
from kdlab.engine import EpochCallback
from kdlab.losses import CrossEntropy, Objective, hinton_loss
from kdlab.runs import Recorder, RunInfo, RunResult, evaluate
from kdlab.schemes.offline import LossSpec, as_objective, fit_offline
from kdlab.settings import TrainSettings
from kdlab.store import RunStore


class RunOptions(TypedDict, total=False):
    """Keyword options of :func:`train`, :func:`distill` and :func:`fit_model`."""

    train_set: ArrayDataset | TorchData  # train on these examples instead of data.train
    seed: int
    store: RunStore
    experiment: str
    role: str
    name: str
    config: Mapping[str, Any]
    progress: bool
    gamma: float
    ece_bins: int
    callbacks: Sequence[EpochCallback]


def _split(options: Mapping[str, Any], role: str) -> tuple[RunInfo, Recorder, dict[str, Any]]:
    unknown = set(options) - set(RunOptions.__annotations__)
    if unknown:
        raise TypeError(
            f"unexpected keyword argument(s) {', '.join(sorted(unknown))}; valid options: "
            f"{', '.join(RunOptions.__annotations__)}"
        )
    run = RunInfo(options.get("role", role), options.get("name"), options.get("seed", 0),
                  dict(options.get("config") or {}))  # fmt: skip
    recorder_keys = [f.name for f in dataclasses.fields(Recorder)]
    recorder = Recorder(**{k: options[k] for k in recorder_keys if k in options})
    return run, recorder, {k: options[k] for k in ("train_set", "callbacks") if k in options}


def fit_model(
    model: nn.Module,
    data: DataLike,
    loss: LossSpec | None = None,
    settings: TrainSettings | None = None,
    *,
    teacher: nn.Module | None = None,
    **options: Unpack[RunOptions],
) -> RunResult:
    """Train ``model`` on ``data.train`` (or ``train_set``) with ``loss``; evaluate on test.

    With a ``teacher`` this is offline distillation and the test metrics include agreement with
    the teacher, KL(teacher‖student) and the distillation error Φ_γ. With a ``store`` the run,
    its history, metrics, checkpoint and final weights are recorded there (see
    :class:`RunOptions` for every option). ``data``: see the module docstring; a Dataset is
    split with the run's ``seed`` (validation) and ``SPLIT_SEED`` (a carved test split).
    """
    run, recorder, rest = _split(options, "model")
    data = as_splits(data, seed=run.seed)
    if "train_set" in rest:
        train = as_array_dataset(rest["train_set"], data.num_classes)
        data = dataclasses.replace(data, train=train)
    objective = as_objective(loss) if loss is not None else Objective([CrossEntropy()])
    return fit_offline(model, data, objective, settings or TrainSettings(), teacher, run,
                       recorder, rest.get("callbacks", ()))  # fmt: skip


def train(
    model: nn.Module,
    data: DataLike,
    *,
    loss: LossSpec | None = None,
    epochs: int | None = None,
    settings: TrainSettings | None = None,
    **options: Unpack[RunOptions],
) -> RunResult:
    """Train a model on labels (cross-entropy unless ``loss`` says otherwise).

    ``data``: ``DataSplits``, or a ``Dataset`` / ``DataLoader`` (or a tuple / dict of them; see
    the module docstring), read into memory once.
    """
    return fit_model(model, data, loss, _with_epochs(settings, epochs), **options)


def distill(
    teacher: nn.Module,
    student: nn.Module,
    data: DataLike,
    *,
    loss: LossSpec | None = None,
    epochs: int | None = None,
    settings: TrainSettings | None = None,
    **options: Unpack[RunOptions],
) -> RunResult:
    """Offline distillation; the default loss is Hinton's 0.1·CE + 0.9·T²·KL at T = 4.

    ``data`` as for :func:`train`.
    """
    objective = as_objective(loss) if loss is not None else Objective(hinton_loss(4.0, 0.9))
    options.setdefault("role", "distilled")
    return fit_model(student, data, objective, _with_epochs(settings, epochs), teacher=teacher,
                     **options)  # fmt: skip


def _with_epochs(settings: TrainSettings | None, epochs: int | None) -> TrainSettings:
    settings = settings.model_copy(deep=True) if settings else TrainSettings()
    if epochs is not None:
        settings.epochs = epochs
    return settings


__all__ = ["RunOptions", "RunResult", "distill", "evaluate", "fit_model", "train"]
