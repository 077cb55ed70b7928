"""Preflight: check an experiment against its data before anything trains.

The schema (:mod:`kdlab.config`) checks what a config says; some mistakes only show with the
data: a model that cannot read the inputs or predicts the wrong number of classes, a weights
file that is missing or does not fit its model, a loss term tapping a module the model does not
have, a batch too small for a relation loss. :func:`preflight` finds them in seconds — it loads
the data of the first seed (as the experiment will), builds every model of the experiment (the
teacher or each ensemble member, the student, the scheme's peers, assistants or discriminator)
with the seeds the experiment uses, passes two training samples through each in eval mode, loads
the weights files the config names and builds every loss with its taps — so that a bad student
spec is reported before the teacher has trained, not after. ``kdlab validate`` runs it, and so
does :func:`kdlab.experiment.run_experiment` before its first seed. It leaves the global random
streams untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from kdlab import checkpoint as ckpt
from kdlab import distributed
from kdlab.config import ExperimentConfig
from kdlab.data import DataSplits, load_dataset, with_augmentation
from kdlab.devices import check_precision, resolve_device
from kdlab.errors import ConfigError, KdlabError, quote, shorten
from kdlab.freeze import train_only
from kdlab.losses import Objective, build_objective, check_batch_sizes
from kdlab.models import build_model
from kdlab.models.ensemble import EnsembleTeacher
from kdlab.runs import check_num_classes
from kdlab.schemes.base import DistillContext
from kdlab.schemes.registry import get_scheme
from kdlab.seeding import derived_seed
from kdlab.settings import TrainSettings, merge_settings
from kdlab.taps import resolve_modules


def preflight(cfg: ExperimentConfig, teacher: nn.Module | None = None) -> None:
    """Raise a ConfigError (or DataError) naming the field at fault, or return: ``cfg`` fits its
    data. ``teacher`` replaces the config's teacher, as ``run_experiment(teachers=...)`` does.
    """
    _check_devices(cfg)
    seed = cfg.seeds[0]
    data = load_data(cfg, seed)
    if teacher is not None:
        check_num_classes(teacher, data, "teacher")
    elif cfg.teacher is not None:
        teacher = _teacher(cfg, data, seed)
    student = build_checked(cfg.student.model, data, seed, "student", "student.model")
    subset = cfg.student.train_subset
    if subset is not None and subset > len(data.train):
        raise ConfigError(
            f"student.train_subset is {subset}, but {data.name} has only {len(data.train)} "
            "training examples after the validation split"
        )
    _check_losses(cfg, data, student, teacher)


def training_sections(cfg: ExperimentConfig) -> list[tuple[str, TrainSettings]]:
    """Every training section of ``cfg`` with its config path (stages merged over their base)."""
    sections = [("student.train", cfg.student.train)]
    if cfg.teacher is not None:
        sections.append(("teacher.train", cfg.teacher.train))
    if cfg.distill.train is not None:
        sections.append(("distill.train", cfg.distill.train))
    base = cfg.distill.train or cfg.student.train
    for i, stage in enumerate(cfg.distill.stages or []):
        sections.append((f"distill.stages.{i}.train", merge_settings(base, stage.train)))
    return sections


def _check_devices(cfg: ExperimentConfig) -> None:
    """Every training section's device exists here and can run its precision; under DDP its
    global batch splits over the ranks."""
    here = distributed.world()
    for where, settings in training_sections(cfg):
        try:
            check_precision(resolve_device(settings.device), settings.precision)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        distributed.check_batch_size(settings.batch_size, here, f"{where}.batch_size")


def load_data(cfg: ExperimentConfig, seed: int) -> DataSplits:
    """The splits of ``seed`` as the experiment trains on them (augmentation attached)."""
    d = cfg.data
    try:
        splits = load_dataset(
            d.spec(), root=d.root, seed=seed, val_fraction=d.val_fraction,
            test_size=d.test_size, flatten=d.flatten,
        )  # fmt: skip
        return with_augmentation(splits, d.augment)
    except KdlabError:
        raise
    except ValueError as err:  # a size that does not fit the data, e.g. test_size
        raise ConfigError(f"data: {err}") from None


def build_checked(
    spec: Mapping[str, Any], data: DataSplits, seed: int, role: str, where: str, check: bool = True
) -> nn.Module:
    """Build ``spec`` for ``data`` with ``seed``; with ``check``, one eval-mode forward pass of two
    training samples must give one logit per class. Errors start with ``where`` (the field)."""
    try:
        model = build_model(spec, data.input_shape, data.num_classes, seed=seed)
        if check:
            check_num_classes(model, data, role)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    except Exception as err:  # a model of the user's own may fail in any way
        raise ConfigError(
            f"{where}: cannot build the {role} {quote(spec)}: {type(err).__name__}: "
            f"{shorten(str(err), 300)}"
        ) from err
    return model


def _teacher(cfg: ExperimentConfig, data: DataSplits, seed: int) -> nn.Module:
    """The teacher as the experiment builds it (weights loaded, when files are given)."""
    t = cfg.teacher
    assert t is not None
    n = t.member_count()
    specs = t.ensemble if isinstance(t.ensemble, list) else [t.model] * n
    paths = t.checkpoints or [t.checkpoint] * n
    models = []
    for m, (spec, path) in enumerate(zip(specs, paths, strict=True)):
        where = f"teacher.ensemble[{m}]" if isinstance(t.ensemble, list) else "teacher.model"
        role = "teacher" if n == 1 else f"teacher member {m + 1}"
        model = build_checked(spec, data, derived_seed(seed, m), role, where, check=False)
        if path is not None:
            field = "teacher.checkpoint" if n == 1 else f"teacher.checkpoints[{m}]"
            load_weights(model, path, field, f"{where} {quote(spec, 200)}")
        try:
            check_num_classes(model, data, role)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        models.append(model)
    if n == 1:
        return models[0]
    return EnsembleTeacher(models, temperature=t.ensemble_temperature)


def load_weights(model: nn.Module, path: str, field: str, fits: str) -> None:
    """Load the weights file ``path`` (named by config field ``field``) into ``model``."""
    try:
        found = Path(path).is_file()
    except (OSError, ValueError):  # e.g. a name too long, or holding a NUL character
        found = False
    if not found:
        raise ConfigError(
            f"{field} {shorten(path, 200)} does not exist; give the path of a weights file "
            "(a kdlab checkpoint or model file, or a saved state_dict)"
        )
    try:
        state = ckpt.load_state_dict(path)
    except KdlabError as err:  # unreadable, or not weights at all
        raise ConfigError(f"{field}: {err}") from err
    except Exception as err:
        raise ConfigError(
            f"{field}: cannot read weights file {path}: {type(err).__name__}: "
            f"{shorten(str(err), 300)}"
        ) from err
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError, AttributeError) as err:
        raise ConfigError(f"{field} {path} does not fit {fits}: {err}") from err


def _scheme_models(
    cfg: ExperimentConfig, data: DataSplits, student: nn.Module, teacher: nn.Module | None
) -> tuple[list[nn.Module], list[nn.Module]]:
    """(the models the distillation's loss reads as students, those it reads as teachers),
    built and checked by the scheme itself (``SchemeSpec.models``), as its run builds them."""
    spec = get_scheme(cfg.distill.scheme)
    if spec.models is not None:
        return spec.models(DistillContext.for_seed(cfg, data, cfg.seeds[0], teacher))
    return [student], [teacher] if teacher is not None else []


def _check_losses(
    cfg: ExperimentConfig,
    data: DataSplits,
    student: nn.Module,
    teacher: nn.Module | None,
) -> None:
    """Build every loss of the experiment; check its taps on the models it reads, and that each
    batch is big enough for the terms that compare samples."""
    t = cfg.teacher
    if t is not None and t.checkpoint is None and t.checkpoints is None and teacher is not None:
        objective = _objective(t.loss, "teacher.loss")
        if objective.needs_teacher:
            raise ConfigError(
                "teacher.loss: the teacher trains on labels, so its loss cannot read a teacher; "
                "use terms such as [{type: ce}]"
            )
        members = list(teacher.members) if isinstance(teacher, EnsembleTeacher) else [teacher]
        _taps(objective, "teacher.loss", members, [])
        _batches(objective, "teacher.loss", len(data.train), t.train)
    base = cfg.distill.train or cfg.student.train
    n_train = cfg.student.train_subset or len(data.train)
    learners, teachers = _scheme_models(cfg, data, student, teacher)
    for i, stage in enumerate(cfg.distill.stages or []):
        where = f"distill.stages[{i}]"
        objective = _objective(stage.loss, f"{where}.loss")
        _taps(objective, f"{where}.loss", learners, teachers)
        _batches(objective, where, n_train, merge_settings(base, stage.train))
        if stage.trainable not in ("all", "none"):
            try:
                with train_only(student, stage.trainable, "student"):
                    pass
            except ConfigError as err:
                raise ConfigError(f"{where}.trainable: {err}") from None
    if cfg.distill.loss is not None:
        objective = _objective(cfg.distill.loss, "distill.loss")
        _taps(objective, "distill.loss", learners, teachers)
        _batches(objective, "distill.train", n_train, base)


def _objective(specs: Sequence[Mapping[str, Any]], where: str) -> Objective:
    try:
        return build_objective(specs)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def _taps(
    objective: Objective, where: str, learners: Sequence[nn.Module], teachers: Sequence[nn.Module]
) -> None:
    """Every module path the active terms read must exist on the models they read it from."""
    try:
        for model in learners:
            resolve_modules(model, objective.student_taps, "student")
        if objective.needs_teacher:
            for model in teachers:
                resolve_modules(model, objective.teacher_taps, "teacher")
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def _batches(objective: Objective, where: str, n_train: int, train: TrainSettings) -> None:
    """Batches the terms can use, and a run long enough for their schedules (warm-ups)."""
    try:
        check_batch_sizes(objective, n_train, train.batch_size)
        for term in objective.terms:  # terms that need a long enough run or split say so
            if term.weight > 0:
                term.check_run(n_train, train.epochs)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


__all__ = ["build_checked", "load_weights", "preflight"]
