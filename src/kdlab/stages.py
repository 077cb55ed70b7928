"""Multi-stage training: a list of stages, each with its own loss terms, epochs and trainable parts.

FitNets (seed 004) is the motivating case — stage 1 trains the student up to its guided layer on
the hint loss, stage 2 runs KD on the whole student — but nothing here knows about hints:

    distill:
      stages:
        - name: hint
          trainable: [features.0, features.1]      # module paths of the student, or "all"
          train: {epochs: 5}                       # overrides of distill.train / student.train
          loss: [{type: hint, student: features.1, teacher: features.1}]
        - name: kd
          loss: [{type: ce, weight: 0.1}, {type: soft_target, weight: 0.9, temperature: 4}]

One student object goes through the stages in order. Each stage is one run of
:func:`kdlab.api.fit_model` — its own optimizer (over the trainable parameters and the stage's
adapters only), schedule, checkpoint, history and test metrics in the store — because a stage
*is* a training run with its own loss and settings, and a run has exactly one config and one
history. The last stage's run has role ``distilled`` (what tables compare with the student
alone); earlier ones have roles ``distilled-stage1``, …. Adapters belong to their stage's loss
terms, so the exported student (``model.pt``) never contains them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator
from torch import nn

from kdlab.api import LossSpec, RunResult, fit_model
from kdlab.data.base import DataSplits
from kdlab.errors import ConfigError
from kdlab.freeze import train_only
from kdlab.losses import Objective, build_objective, build_term
from kdlab.settings import Strict, TrainSettings


class StageConfig(Strict):
    """One entry of ``distill.stages``."""

    #: Shown in run names, e.g. "hint" or "kd".
    name: str | None = None
    loss: list[dict[str, Any]]
    #: Keys overriding the distillation's train settings for this stage (nested mappings merge).
    train: dict[str, Any] = Field(default_factory=dict)
    #: The student's module paths whose parameters train in this stage, or "all".
    trainable: str | list[str] = "all"

    @field_validator("loss")
    @classmethod
    def _terms(cls, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not specs:
            raise ValueError("a stage's loss needs at least one term, e.g. [{type: ce}]")
        for i, spec in enumerate(specs):
            try:
                build_term(spec)
            except ConfigError as err:
                raise ValueError(f"term {i}: {err}") from None
        return specs

    @field_validator("train")
    @classmethod
    def _train(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        TrainSettings.model_validate(overrides)  # unknown keys and bad values fail here already
        return overrides

    @field_validator("trainable")
    @classmethod
    def _paths(cls, paths: str | list[str]) -> str | list[str]:
        if paths == "all" or (
            isinstance(paths, list) and paths and all(isinstance(p, str) and p for p in paths)
        ):
            return paths
        raise ValueError(
            f"trainable must be 'all' or a non-empty list of module paths of the student, "
            f"e.g. [features.0, features.1]; got {paths!r}"
        )


@dataclass
class Stage:
    """One stage for :func:`fit_stages` (the Python form of :class:`StageConfig`)."""

    loss: LossSpec
    settings: TrainSettings | None = None
    trainable: Sequence[str] | str = "all"
    name: str | None = None


def merge_settings(base: TrainSettings, overrides: Mapping[str, Any]) -> TrainSettings:
    """``base`` with ``overrides`` applied; nested mappings (optimizer, schedule) merge."""

    def merge(a: dict[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(a)
        for key, value in b.items():
            out[key] = (
                merge(a[key], value)
                if isinstance(a.get(key), dict) and isinstance(value, Mapping)
                else value
            )
        return out

    try:
        return TrainSettings.model_validate(merge(base.model_dump(), overrides))
    except ValueError as err:
        raise ConfigError(f"stage train settings {dict(overrides)} do not fit: {err}") from err


def stages_from_config(configs: Sequence[StageConfig], base: TrainSettings) -> list[Stage]:
    return [Stage(c.loss, merge_settings(base, c.train), c.trainable, c.name) for c in configs]


def check_batch_sizes(objective: Objective, n_train: int, batch_size: int) -> None:
    """Fail before training when a term that compares samples would meet a too-small batch.

    Relation losses need ≥ 2 samples per batch (RKD angle ≥ 3), including the last, partial
    batch of each epoch (``n_train % batch_size`` samples).
    """
    active = [t for t in objective.terms if t.weight > 0 and getattr(t, "min_batch", 1) > 1]
    if not active:
        return
    need = max(getattr(t, "min_batch", 1) for t in active)
    names = ", ".join(repr(t.name) for t in active)
    if n_train < need or batch_size < need:
        raise ConfigError(
            f"loss terms {names} compare samples within a batch and need ≥ {need} per batch, but "
            f"batch_size is {batch_size} with {n_train} training examples; use batch_size ≥ {need}"
        )
    rest = n_train % batch_size
    if 0 < rest < need:
        fits = [
            b
            for b in range(batch_size - 1, need - 1, -1)
            if n_train % b == 0 or n_train % b >= need
        ]
        hint = f", e.g. {fits[0]}" if fits else ""
        raise ConfigError(
            f"loss terms {names} need ≥ {need} samples per batch, but with {n_train} training "
            f"examples and batch_size {batch_size} the last batch of every epoch holds {rest}; "
            f"choose a batch_size that leaves no such remainder{hint}"
        )


def fit_stages(
    student: nn.Module,
    data: DataSplits,
    stages: Sequence[Stage],
    base_settings: TrainSettings | None = None,
    *,
    name: str = "distilled",
    role: str = "distilled",
    config: Mapping[str, Any] | None = None,
    **fit_kwargs: Any,
) -> list[RunResult]:
    """Train ``student`` through ``stages`` in order; one :class:`RunResult` per stage.

    ``fit_kwargs`` go to :func:`kdlab.api.fit_model` (teacher, train_set, seed, store, …).
    A stage without settings uses ``base_settings``.
    """
    if not stages:
        raise ConfigError("fit_stages needs at least one stage")
    n = len(stages)
    train_set = fit_kwargs.get("train_set") or data.train
    runs = []
    for i, stage in enumerate(stages):
        settings = stage.settings or base_settings or TrainSettings()
        loss = stage.loss
        objective = loss if isinstance(loss, Objective) else build_objective(loss)
        check_batch_sizes(objective, len(train_set), settings.batch_size)
        label = f" ({stage.name})" if stage.name else ""
        info = {"index": i + 1, "of": n, "name": stage.name, "trainable": stage.trainable}
        run_config = {**(config or {}), **({"stage": info} if n > 1 else {})}
        with train_only(student, stage.trainable, "student"):
            run = fit_model(
                student, data, objective, settings,
                role=role if i == n - 1 else f"{role}-stage{i + 1}",
                name=f"{name} stage {i + 1}/{n}{label}" if n > 1 else name,
                config=run_config, **fit_kwargs,
            )  # fmt: skip
        runs.append(run)
    return runs


__all__ = [
    "Stage",
    "StageConfig",
    "check_batch_sizes",
    "fit_stages",
    "merge_settings",
    "stages_from_config",
]
