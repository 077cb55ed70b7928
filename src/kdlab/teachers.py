"""An experiment's teacher: trained or loaded, one model or an ensemble, optionally stopped early.

Roles in the run store: ``teacher`` is always the model that teaches. An ensemble's members are
recorded as ``teacher_member`` and the ensemble itself as ``teacher``. With ``use_epoch: N``
(Cho & Hariharan 2019: a teacher stopped early, less accurate but often a better teacher) the
full training run is recorded with the role suffixed ``_final`` and the snapshot after epoch N,
the model that teaches, under the plain role — with the first N epochs of history.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from kdlab import checkpoint as ckpt
from kdlab.config import TeacherConfig
from kdlab.data import DataSplits
from kdlab.errors import ConfigError
from kdlab.models import build_model
from kdlab.models.ensemble import EnsembleTeacher
from kdlab.runs import Recorder, RunInfo, RunResult, check_num_classes, record_model
from kdlab.schemes.offline import fit_offline
from kdlab.seeding import derived_seed


@dataclass
class Teacher:
    """The model that teaches one seed, and every run made on the way to it."""

    model: nn.Module
    runs: list[RunResult] = field(default_factory=list)


def build_teacher(
    t: TeacherConfig,
    data: DataSplits,
    run: RunInfo,
    recorder: Recorder,
) -> Teacher:
    """Train or load the teacher of ``run.seed``; record every model made on the way.

    ``run.config`` is recorded with every run. With ``recorder.resume``, a teacher that finished
    earlier is loaded from its run, an interrupted one continues from its checkpoint
    (:func:`kdlab.runs.fit`).
    Member m of an ensemble draws its initial weights from the seed's derived seed m (member 0
    uses the experiment seed: it is the single teacher of that seed); batches and dropout follow
    the experiment seed, so the members differ by their initialisation, as in deep ensembles.
    """
    n = t.member_count()
    models = _build_members(t, data, run.seed)
    paths = t.checkpoints or [t.checkpoint] * n
    role = "teacher" if n == 1 else "teacher_member"
    teacher = Teacher(models[0])
    for m, (model, path) in enumerate(zip(models, paths, strict=True)):
        name = f"teacher s{run.seed}" if n == 1 else f"teacher s{run.seed} member {m + 1}/{n}"
        member = run.replace(role=role, name=name, config={"member": m + 1} if n > 1 else {})
        if path is None:
            runs = _train(t, model, data, member, recorder)
        else:
            loaded = member.replace(name=f"{name} (loaded)", config={"checkpoint": path})
            runs = [record_model(model, data, loaded, recorder, weights_file=path)]
        teacher.runs += runs
        models[m] = runs[-1].model  # with use_epoch: the early snapshot
    if n == 1:
        teacher.model = models[0]
        return teacher
    teacher.model = EnsembleTeacher(models, temperature=t.ensemble_temperature)
    info = run.replace(role="teacher", name=f"teacher s{run.seed} (ensemble of {n})",
                   config={"members": n})  # fmt: skip
    teacher.runs.append(record_model(teacher.model, data, info, recorder))
    return teacher


def _build_members(t: TeacherConfig, data: DataSplits, seed: int) -> list[nn.Module]:
    """Build (and load) every member before training any: a member that does not fit the data
    or a checkpoint that does not fit its model fails in seconds, not after the others train."""
    n = t.member_count()
    specs = t.ensemble if isinstance(t.ensemble, list) else [t.model] * n
    paths = t.checkpoints or [t.checkpoint] * n
    models = []
    for m, (spec, path) in enumerate(zip(specs, paths, strict=True)):
        model = build_model(spec, data.input_shape, data.num_classes, seed=derived_seed(seed, m))
        if path is not None:
            field_name = "teacher.checkpoint" if n == 1 else f"teacher.checkpoints[{m}]"
            spec_field = (
                f"teacher.ensemble[{m}]" if isinstance(t.ensemble, list) else "teacher.model"
            )
            _load(model, path, f"{field_name} {path} does not fit {spec_field} {spec}")
        check_num_classes(model, data, "teacher" if n == 1 else f"teacher member {m + 1}")
        models.append(model)
    return models


def _train(
    t: TeacherConfig, model: nn.Module, data: DataSplits, run: RunInfo, recorder: Recorder
) -> list[RunResult]:
    """Train one teacher model; with ``use_epoch`` also record the early snapshot (last)."""
    snapshot: dict[str, Any] = {}
    callbacks = []
    if t.use_epoch is not None:

        def keep(row: dict[str, float], at: int = t.use_epoch) -> None:
            if int(row["epoch"]) == at:
                snapshot["state"] = copy.deepcopy(model.state_dict())

        callbacks.append(keep)
    full_run = run if t.use_epoch is None else run.replace(
        role=f"{run.role}_final", name=f"{run.label} (all {t.train.epochs} epochs)"
    )  # fmt: skip
    full = fit_offline(model, data, t.loss, t.train, None, full_run, recorder, callbacks)
    if t.use_epoch is None:
        return [full]
    early = copy.deepcopy(model)
    early.load_state_dict(snapshot["state"])
    early_run = record_model(
        early, data,
        run.replace(name=f"{run.label} @ epoch {t.use_epoch}", config={"use_epoch": t.use_epoch}),
        recorder, history=full.history[: t.use_epoch],
    )  # fmt: skip
    return [full, early_run]


def _load(model: nn.Module, path: str, mismatch: str) -> None:
    try:
        model.load_state_dict(ckpt.load_state_dict(path))
    except RuntimeError as err:  # missing/unexpected keys or shape mismatch
        raise ConfigError(f"{mismatch}: {err}") from err


__all__ = ["Teacher", "build_teacher"]
