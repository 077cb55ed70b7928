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

import torch
from torch import nn

from kdlab import checkpoint as ckpt
from kdlab import distributed
from kdlab.config import ExperimentConfig
from kdlab.data import DataSplits, load_dataset, with_augmentation
from kdlab.devices import check_precision, module_device, resolve_device
from kdlab.errors import ConfigError, KdlabError, quote, shorten
from kdlab.freeze import train_only
from kdlab.inference import eval_forward, to_device
from kdlab.losses import Objective, build_objective, check_batch_sizes
from kdlab.losses.feature import prepare_terms
from kdlab.models import build_model
from kdlab.models.ensemble import EnsembleTeacher
from kdlab.runs import check_num_classes
from kdlab.schemes.base import DistillContext
from kdlab.schemes.offline import load_term_states, term_states
from kdlab.schemes.registry import get_scheme
from kdlab.seeding import derived_seed
from kdlab.settings import TrainSettings, merge_settings
from kdlab.taps import resolve_modules
from kdlab.types import Batch


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
    steps: list[Step] = []
    for i, stage in enumerate(cfg.distill.stages or []):
        where = f"distill.stages[{i}]"
        steps.append((f"{where}.loss", _objective(stage.loss, f"{where}.loss"),
                      merge_settings(base, stage.train), stage.trainable))  # fmt: skip
        if stage.trainable not in ("all", "none"):
            try:
                with train_only(student, stage.trainable, "student"):
                    pass
            except ConfigError as err:
                raise ConfigError(f"{where}.trainable: {err}") from None
    if cfg.distill.loss is not None:
        steps.append(("distill.loss", _objective(cfg.distill.loss, "distill.loss"), base, "all"))
    offline = cfg.distill.scheme == "offline"
    for where, objective, settings, _ in steps:  # batch sizes are the stage's or distill.train's
        _taps(objective, where, learners, teachers)
        batches = "distill.train" if where == "distill.loss" else where.removesuffix(".loss")
        _batches(objective, batches, n_train, settings)
    check_stage_plan(steps, offline)
    if offline:  # other schemes build their losses per model pair; their taps are checked above
        forward_check(steps, data, student, teacher, n_train)


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


#: One loss in training order: where it is in the config, the loss, its training settings and
#: the student modules it trains ("all", "none" or module paths).
Step = tuple[str, Objective, TrainSettings, Sequence[str] | str]


def check_stage_plan(steps: Sequence[Step], offline: bool) -> None:
    """Over the losses in training order: each trains something, the last trains the student,
    and FT's transfer follows a paraphrase stage of the same term name (its trained state)."""
    paraphrased: set[str] = set()
    for where, objective, *_ in steps:
        active = [t for t in objective.terms if t.weight > 0]
        if not active:
            raise ConfigError(
                f"{where}: every loss term has weight 0, so nothing trains; give a term a weight "
                "> 0"
            )
        for term in (t for t in active if t.kind == "ft"):
            if getattr(term, "phase", "") == "paraphrase":
                paraphrased.add(term.name)
            elif term.name not in paraphrased:
                fix = (
                    f"put a stage with {{type: ft, phase: paraphrase, teacher: ..., name: "
                    f"{term.name}}} (trainable: none) before it"
                    if offline
                    else "factor transfer trains in stages: use scheme: offline with distill.stages"
                )
                raise ConfigError(
                    f"{where}: loss {term.name!r} (ft, phase transfer) reads a paraphraser that no "
                    f"earlier stage trains; {fix}"
                )
    where, last, *_ = steps[-1] if steps else ("", None)
    if last is not None and all(getattr(t, "phase", "") == "paraphrase"
                                for t in last.terms if t.weight > 0):  # fmt: skip
        raise ConfigError(
            f"{where}: the last loss trains only FT's paraphraser, so the student never learns; "
            "add a stage after it with the transfer term (the same name, phase: transfer)"
        )


def forward_check(
    steps: Sequence[Step],
    data: DataSplits,
    student: nn.Module,
    teacher: nn.Module | None,
    n_train: int,
) -> None:
    """One forward of each loss on a few training examples, the terms' trained state carried
    from stage to stage as the run carries it: what only shapes reveal (a vector tapped where a
    map is needed, an adapter that cannot map, ReviewKD's level order, KD-SVD's k past the
    channels) and a stage whose loss cannot reach the modules it trains fail here, not after the
    teacher has trained. The models' weights, BatchNorm statistics and the global random
    streams are left as they were."""
    device = module_device(student)
    if teacher is not None and module_device(teacher) != device:
        return  # a given teacher on another device: the run's first batch checks the shapes
    rows = min(len(data.train), 8)
    inputs = to_device(data.train.inputs(slice(rows)), device)
    states: dict = {}
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for where, objective, settings, trainable in steps:
            sample = Batch(inputs, data.train.y[:rows].to(device), torch.arange(rows),
                           epochs=settings.epochs, train_size=n_train)  # fmt: skip
            try:
                prepare_terms(objective, student, teacher, sample)
                load_term_states(objective, states)
                _dry_step(objective, student, teacher, sample, trainable)
                _normalised_batches(objective, n_train, settings.batch_size)
            except ConfigError as err:
                raise ConfigError(f"{where}: {err}") from None
            states = {**states, **term_states(objective)}


def _dry_step(
    objective: Objective,
    student: nn.Module,
    teacher: nn.Module | None,
    sample: Batch,
    trainable: Sequence[str] | str,
) -> None:
    """The loss on ``sample``; for a stage that trains listed modules, that its gradient
    reaches at least one of them (a hint read upstream of them would train nothing)."""
    objective.train()
    t_out = (eval_forward(teacher, sample.inputs, objective.teacher_taps, "teacher")
             if teacher is not None and objective.needs_teacher else None)  # fmt: skip
    if isinstance(trainable, str):  # "all" (the loss reaches the logits) or "none"
        s_out = eval_forward(student, sample.inputs, objective.student_taps, "student")
        objective(s_out, t_out, sample)
        return
    with torch.enable_grad(), train_only(student, trainable, "student"):
        s_out = eval_forward(student, sample.inputs, objective.student_taps, "student")
        total = objective(s_out, t_out, sample).total
        params = [p for p in student.parameters() if p.requires_grad]
        try:
            grads = torch.autograd.grad(total, params, allow_unused=True)
        except RuntimeError:  # the loss does not depend on anything that trains
            grads = (None,)
    if all(g is None for g in grads):
        raise ConfigError(
            f"no gradient of this loss reaches the modules the stage trains "
            f"({', '.join(trainable)}): its terms read only what comes before them (or the "
            "teacher); train the modules the loss reads, or tap a module inside them"
        )


def _normalised_batches(objective: Objective, n_train: int, batch_size: int) -> None:
    """BatchNorm over vectors (an adapter's ``adapter_bn``, the ``regressor`` on vectors) needs
    ≥ 2 samples in every training batch, the last one of an epoch included."""

    def normalises(term: nn.Module) -> bool:
        return any(isinstance(m, nn.BatchNorm1d) for m in term.modules())

    names = [repr(t.name) for t in objective.terms if t.weight > 0 and normalises(t)]
    rest = n_train % batch_size
    if names and (batch_size < 2 or n_train < 2 or rest == 1):
        last = f"the last batch of every epoch holds {rest}" if rest == 1 else "a batch holds 1"
        raise ConfigError(
            f"loss {', '.join(names)} normalises vectors with BatchNorm (adapter: regressor or "
            f"adapter_bn: true), which needs ≥ 2 samples per batch, but with {n_train} training "
            f"examples and batch_size {batch_size} {last}; change batch_size, or use "
            "adapter: linear without adapter_bn"
        )


__all__ = ["build_checked", "check_stage_plan", "forward_check", "load_weights", "preflight"]
