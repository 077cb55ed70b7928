"""The Python API: train a model or distill a teacher into a student in one call.

    teacher = kdlab.train(MLP(64, [256, 256]), data, epochs=30)
    result = kdlab.distill(teacher.model, MLP(64, [16]), data, loss=hinton_loss(4.0, 0.9))

Both go through :func:`fit_model`, which the YAML experiments use too: one scheme, one engine,
optional recording in the run store (config, per-epoch history, final metrics, artefacts).
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kdlab import checkpoint as ckpt
from kdlab.data.base import ArrayDataset, DataSplits
from kdlab.engine import Engine, EpochCallback
from kdlab.errors import ConfigError
from kdlab.losses import CrossEntropy, Objective, Term, build_objective, hinton_loss
from kdlab.metrics import classification_metrics
from kdlab.schemes import OfflineScheme, Scheme, predict_logits
from kdlab.settings import TrainSettings
from kdlab.store import RunStore

LossSpec = Sequence[Term | Mapping[str, Any]] | Objective


@dataclass
class RunResult:
    """A trained model with its test metrics and per-epoch history (and run id when stored).

    ``model`` is None only for a run read back from the store (``run_experiment(resume=True)``).
    """

    model: nn.Module | None
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    run_id: str | None = None
    role: str = "model"
    seed: int = 0


def error_text(err: BaseException) -> str:
    """The one-line form of an exception that a failed run keeps in the store."""
    return "".join(traceback.format_exception_only(err)).strip()


def check_num_classes(model: nn.Module, data: DataSplits, role: str) -> None:
    """Fail before training when a model's output does not have one logit per class."""
    sample = data.train.x[:2]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(sample)
    except Exception as err:
        raise ConfigError(
            f"the {role} cannot process inputs of shape {tuple(sample.shape[1:])} from "
            f"{data.name}: {err}"
        ) from err
    finally:
        model.train(was_training)
    logits = getattr(out, "logits", out)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (
        len(sample),
        data.num_classes,
    ):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ConfigError(
            f"the {role} outputs {shape} for a batch of {len(sample)}, but {data.name} has "
            f"{data.num_classes} classes: it must return logits of shape [batch, "
            f"{data.num_classes}] (set its num_classes to {data.num_classes})"
        )


def _objective(loss: LossSpec | None, default: list[Term]) -> Objective:
    if loss is None:
        return Objective(default)
    if isinstance(loss, Objective):
        return loss
    return build_objective(loss)


def fit_model(
    model: nn.Module,
    data: DataSplits,
    loss: LossSpec | None = None,
    settings: TrainSettings | None = None,
    *,
    teacher: nn.Module | None = None,
    train_set: ArrayDataset | None = None,
    seed: int = 0,
    store: RunStore | None = None,
    experiment: str = "adhoc",
    role: str = "model",
    name: str | None = None,
    config: Mapping[str, Any] | None = None,
    progress: bool = True,
    gamma: float = 1.0,
    ece_bins: int = 15,
    scheme: Scheme | None = None,
    callbacks: Sequence[EpochCallback] = (),
) -> RunResult:
    """Train ``model`` on ``data.train`` (or ``train_set``) with ``loss``; evaluate on test.

    With a ``teacher`` this is offline distillation and the test metrics include agreement with
    the teacher, KL(teacher‖student) and the distillation error Φ_γ. With a ``store`` the run,
    its history, metrics, checkpoint and final weights are recorded there. A prebuilt ``scheme``
    (e.g. adversarial) replaces the offline scheme; its ``eval_model()`` must be ``model``.
    ``callbacks`` run after each epoch's row (e.g. to snapshot weights at an early epoch).
    """
    settings = settings or TrainSettings()
    objective = _objective(loss, [CrossEntropy()])
    check_num_classes(model, data, role)
    if teacher is not None:
        check_num_classes(teacher, data, "teacher")
    if scheme is None:
        scheme = OfflineScheme(model, objective, teacher, cache_teacher=settings.cache_teacher)
    elif scheme.eval_model() is not model:
        raise ConfigError(
            "fit_model(model, scheme=...): model must be the scheme's eval_model(), the module "
            "that is trained, evaluated and saved"
        )
    run_id, run_dir = None, None
    epoch_callbacks: list[EpochCallback] = []  # the store's logger runs first
    if store is not None:
        run_config = {
            "settings": settings.model_dump(mode="json"),
            "loss": [repr(t) for t in objective.terms],
            **(config or {}),
        }
        run_id = store.create_run(
            experiment=experiment, name=name or role, role=role, seed=seed, config=run_config
        )
        run_dir = store.run_dir(run_id)
        epoch_callbacks.append(
            lambda row: store.log_epoch(
                run_id, int(row["epoch"]), {k: v for k, v in row.items() if k != "epoch"}
            )
        )
    engine = Engine(
        settings,
        seed=seed,
        progress=progress,
        callbacks=[*epoch_callbacks, *callbacks],
        description=name or role,
        checkpoint_path=run_dir / "checkpoint.pt" if run_dir else None,
    )
    try:
        history = engine.fit(scheme, data.train if train_set is None else train_set, data.val)
        metrics = evaluate(model, data.test, teacher, gamma=gamma, ece_bins=ece_bins)
        if store is not None and run_id is not None and run_dir is not None:
            _save_and_finish(store, run_id, model, metrics, settings.epochs, checkpoint=True)
    except BaseException as err:
        if store is not None and run_id is not None:
            store.fail_run(run_id, error_text(err))
        raise
    return RunResult(model, metrics, history, run_id, role, seed)


def _save_and_finish(
    store: RunStore,
    run_id: str,
    model: nn.Module,
    metrics: dict[str, float],
    epochs: int,
    checkpoint: bool,
) -> None:
    """Save the final weights as the run's ``model.pt`` and mark the run finished."""
    run_dir = store.run_dir(run_id)
    weights = ckpt.save_atomic(
        {
            "format": ckpt.FORMAT,
            "version": ckpt.VERSION,
            "epoch": epochs,
            "models": {"model": model.state_dict()},
        },
        run_dir / "model.pt",
    )
    artefacts = {"model": str(weights)}
    if checkpoint:
        artefacts["checkpoint"] = str(run_dir / "checkpoint.pt")
    store.finish_run(run_id, metrics, artefacts)


def record_model(
    model: nn.Module,
    data: DataSplits,
    history: Sequence[Mapping[str, float]] = (),
    *,
    teacher: nn.Module | None = None,
    seed: int = 0,
    store: RunStore | None = None,
    experiment: str = "adhoc",
    role: str = "model",
    name: str | None = None,
    config: Mapping[str, Any] | None = None,
    gamma: float = 1.0,
    ece_bins: int = 15,
    weights_file: str | None = None,
) -> RunResult:
    """Evaluate an already-trained model on test and record it as a finished run.

    For models a scheme trains jointly with others (mutual-learning peers), for snapshots
    (an early-stopped teacher) and for combinations of trained models (ensembles): ``history``
    is stored as the run's per-epoch rows, the weights as its ``model.pt`` — or, for a model
    loaded from ``weights_file``, that file is recorded as the run's model and nothing is written.
    """
    metrics = evaluate(model, data.test, teacher, gamma=gamma, ece_bins=ece_bins)
    rows = [dict(row) for row in history]
    run_id = None
    if store is not None:
        run_id = store.create_run(
            experiment=experiment,
            name=name or role,
            role=role,
            seed=seed,
            config=dict(config or {}),
        )
        try:
            for row in rows:
                store.log_epoch(
                    run_id, int(row["epoch"]), {k: v for k, v in row.items() if k != "epoch"}
                )
            if weights_file is None:
                _save_and_finish(store, run_id, model, metrics, len(rows), checkpoint=False)
            else:
                store.finish_run(run_id, metrics, {"model": weights_file})
        except BaseException as err:
            store.fail_run(run_id, error_text(err))
            raise
    return RunResult(model, metrics, rows, run_id, role, seed)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    test: ArrayDataset,
    teacher: nn.Module | None = None,
    *,
    gamma: float = 1.0,
    ece_bins: int = 15,
) -> dict[str, float]:
    """Test metrics of ``model`` (and, with a teacher, how closely it follows the teacher)."""
    logits = predict_logits(model, test.x)
    teacher_logits = predict_logits(teacher, test.x) if teacher is not None else None
    return classification_metrics(logits, test.y, teacher_logits, gamma=gamma, n_bins=ece_bins)


def train(
    model: nn.Module,
    data: DataSplits,
    *,
    loss: LossSpec | None = None,
    epochs: int | None = None,
    settings: TrainSettings | None = None,
    **kwargs: Any,
) -> RunResult:
    """Train a model on labels (cross-entropy unless ``loss`` says otherwise)."""
    settings = _with_epochs(settings, epochs)
    return fit_model(model, data, loss, settings, role=kwargs.pop("role", "model"), **kwargs)


def distill(
    teacher: nn.Module,
    student: nn.Module,
    data: DataSplits,
    *,
    loss: LossSpec | None = None,
    epochs: int | None = None,
    settings: TrainSettings | None = None,
    **kwargs: Any,
) -> RunResult:
    """Offline distillation; the default loss is Hinton's 0.1·CE + 0.9·T²·KL at T = 4."""
    settings = _with_epochs(settings, epochs)
    objective = _objective(loss, hinton_loss(temperature=4.0, beta=0.9))
    return fit_model(
        student,
        data,
        objective,
        settings,
        teacher=teacher,
        role=kwargs.pop("role", "distilled"),
        **kwargs,
    )


def _with_epochs(settings: TrainSettings | None, epochs: int | None) -> TrainSettings:
    settings = settings.model_copy(deep=True) if settings else TrainSettings()
    if epochs is not None:
        settings.epochs = epochs
    return settings
