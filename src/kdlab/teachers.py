"""An experiment's teacher: trained or loaded, one model or an ensemble, optionally stopped early.

Roles in the run store: ``teacher`` is always the model that teaches. An ensemble's members are
recorded as ``teacher_member`` and the ensemble itself as ``teacher``. With ``use_epoch: N``
(Cho & Hariharan 2019: a teacher stopped early, less accurate but often a better teacher) the
full training run is recorded with the role suffixed ``_final`` and the snapshot after epoch N,
the model that teaches, under the plain role — with the first N epochs of history.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from kdlab import checkpoint as ckpt
from kdlab.api import RunResult, check_num_classes, fit_model, record_model
from kdlab.config import ExperimentConfig, TeacherConfig
from kdlab.data import DataSplits
from kdlab.errors import ConfigError
from kdlab.models import build_model
from kdlab.models.ensemble import EnsembleTeacher
from kdlab.store import RunRecord

#: Ensemble member m of experiment seed s draws its initial weights from s + 1000·m; batches and
#: dropout follow the experiment seed, so the members differ by their initialisation (as in
#: deep ensembles) and every run stays recorded under the experiment's seed.
MEMBER_SEED_STRIDE = 1000


def member_seed(seed: int, member: int) -> int:
    """Member 0 uses the experiment seed: it is the single teacher of that seed."""
    return seed + MEMBER_SEED_STRIDE * member


def build_teacher(
    cfg: ExperimentConfig,
    data: DataSplits,
    seed: int,
    config_json: dict[str, Any],
    common: dict[str, Any],
    record: Callable[[RunResult], None],
    finished: Callable[[str, str], RunRecord | None] | None = None,
) -> nn.Module:
    """Train or load ``cfg.teacher`` for ``seed``; record every model made on the way.

    ``finished(role, name)`` (when resuming) returns a finished run of this seed and config; a
    teacher it returns is loaded from that run's weights instead of being trained again.
    """
    t = cfg.teacher
    assert t is not None
    n = t.member_count()
    specs = t.ensemble if isinstance(t.ensemble, list) else [t.model] * n
    paths = t.checkpoints or [t.checkpoint] * n
    role = "teacher" if n == 1 else "teacher_member"
    # Build (and load) every member before training any: a member that does not fit the data
    # or a checkpoint that does not fit its model fails in seconds, not after the others train.
    models = []
    for m, (spec, path) in enumerate(zip(specs, paths, strict=True)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(member_seed(seed, m))
            model = build_model(spec, data.input_shape, data.num_classes)
        if path is not None:
            field = "teacher.checkpoint" if n == 1 else f"teacher.checkpoints[{m}]"
            spec_field = (
                f"teacher.ensemble[{m}]" if isinstance(t.ensemble, list) else "teacher.model"
            )
            _load(model, path, f"{field} {path} does not fit {spec_field} {spec}")
        check_num_classes(model, data, role if n == 1 else f"teacher member {m + 1}")
        models.append(model)
    recording = {k: v for k, v in common.items() if k != "progress"}
    for m, (model, path) in enumerate(zip(models, paths, strict=True)):
        name = f"teacher s{seed}" if n == 1 else f"teacher s{seed} member {m + 1}/{n}"
        run_config = {"experiment": config_json, **({"member": m + 1} if n > 1 else {})}
        done = finished(role, name) if finished and path is None and not t.use_epoch else None
        if done is not None:
            _load(model, done.artefacts["model"], f"stored teacher run {done.id} does not fit")
            runs = [RunResult(model, done.metrics, [], done.id, role, seed)]
        elif path is None:
            runs = _train(t, model, data, seed, role, name, run_config, common)
        else:
            runs = [record_model(
                model, data, seed=seed, role=role, name=f"{name} (loaded)",
                config={**run_config, "checkpoint": path}, weights_file=path, **recording,
            )]  # fmt: skip
        for run in runs:
            record(run)
        models[m] = runs[-1].model  # with use_epoch: the early snapshot
    if n == 1:
        return models[0]
    ensemble = EnsembleTeacher(models, temperature=t.ensemble_temperature)
    run = record_model(
        ensemble, data, seed=seed, role="teacher", name=f"teacher s{seed} (ensemble of {n})",
        config={"experiment": config_json, "members": n}, **recording,
    )  # fmt: skip
    record(run)
    return ensemble


def _train(
    t: TeacherConfig,
    model: nn.Module,
    data: DataSplits,
    seed: int,
    role: str,
    name: str,
    run_config: dict[str, Any],
    common: dict[str, Any],
) -> list[RunResult]:
    """Train one teacher model; with ``use_epoch`` also record the early snapshot (last)."""
    snapshot: dict[str, Any] = {}
    callbacks = []
    if t.use_epoch is not None:

        def keep(row: dict[str, float], at: int = t.use_epoch) -> None:
            if int(row["epoch"]) == at:
                snapshot["state"] = copy.deepcopy(model.state_dict())

        callbacks.append(keep)
    full = fit_model(
        model, data, t.loss, t.train, seed=seed,
        role=f"{role}_final" if t.use_epoch else role,
        name=f"{name} (all {t.train.epochs} epochs)" if t.use_epoch else name,
        config=run_config, callbacks=callbacks, **common,
    )  # fmt: skip
    if t.use_epoch is None:
        return [full]
    early = copy.deepcopy(model)
    early.load_state_dict(snapshot["state"])
    recording = {k: v for k, v in common.items() if k != "progress"}
    early_run = record_model(
        early, data, full.history[: t.use_epoch], seed=seed, role=role,
        name=f"{name} @ epoch {t.use_epoch}",
        config={**run_config, "use_epoch": t.use_epoch}, **recording,
    )  # fmt: skip
    return [full, early_run]


def _load(model: nn.Module, path: str, mismatch: str) -> None:
    try:
        model.load_state_dict(ckpt.load_state_dict(path))
    except RuntimeError as err:  # missing/unexpected keys or shape mismatch
        raise ConfigError(f"{mismatch}: {err}") from err


__all__ = ["MEMBER_SEED_STRIDE", "build_teacher", "member_seed"]
