"""The experiment schema: one YAML file describes data, teacher, student, loss, training, seeds.

Validated with pydantic before anything trains. Every error names the offending field (as a
dotted path) and what would be valid there.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from kdlab.data.sources import get_source
from kdlab.errors import ConfigError
from kdlab.losses import build_term
from kdlab.models import resolve_model_class
from kdlab.runners import get_runner
from kdlab.settings import Strict, TrainSettings
from kdlab.stages import StageConfig

DATA_DERIVED = {"in_features", "in_channels", "input_shape", "num_classes"}


def check_model_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Check a model spec's type and argument names without building it (shapes come later)."""
    spec = dict(spec)
    cls = resolve_model_class(spec.get("type", "mlp"))
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = [k for k in spec if k != "type" and k not in params]
        if unknown:
            valid = [p for p in params if p != "self"]
            raise ValueError(
                f"model {spec.get('type', 'mlp')!r} has no argument "
                f"{', '.join(map(repr, unknown))}; valid arguments: {', '.join(valid)}"
            )
    return spec


def check_loss_specs(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not specs:
        raise ValueError("the loss needs at least one term, e.g. [{type: ce}]")
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise ValueError(f"term {i} must be a mapping like {{type: ce, weight: 1}}")
        try:
            build_term(spec)
        except ConfigError as err:
            raise ValueError(f"term {i}: {err}") from None
    return specs


class DataConfig(Strict):
    source: str = "digits"
    root: str | None = None
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_size: PositiveInt | None = None
    flatten: bool = False

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        return get_source(value).name  # raises with the valid names, closest first


class TeacherConfig(Strict):
    model: dict[str, Any] = Field(default_factory=lambda: {"type": "mlp"})
    #: Load these weights (kdlab checkpoint/model file or plain state_dict) instead of training.
    checkpoint: str | None = None
    train: TrainSettings = Field(default_factory=TrainSettings)
    loss: list[dict[str, Any]] = Field(default_factory=lambda: [{"type": "ce"}])
    #: A teacher made of several models, averaged in probability space (EnsembleTeacher): a
    #: number of members of ``model`` (initial weights from seed, seed + 1000, …) or one model
    #: spec per member. Each member is trained with ``train`` and ``loss``.
    ensemble: PositiveInt | list[dict[str, Any]] | None = None
    #: Load the ensemble's members from these files instead of training them (architecture:
    #: ``model``, or the ``ensemble`` spec at the same position).
    checkpoints: list[str] | None = None
    #: Temperature at which the members' distributions are averaged: with the distillation's
    #: soft-target temperature, the student sees exactly the mean of the tempered members.
    ensemble_temperature: PositiveFloat = 1.0
    #: Early-stopped teacher (Cho & Hariharan 2019): train for ``train.epochs`` but teach with
    #: the weights after this epoch.
    use_epoch: PositiveInt | None = None

    _model = field_validator("model")(classmethod(lambda cls, v: check_model_spec(v)))
    _loss = field_validator("loss")(classmethod(lambda cls, v: check_loss_specs(v)))

    @field_validator("ensemble")
    @classmethod
    def _members(cls, value: int | list[dict[str, Any]] | None) -> Any:
        if value is None:
            return None
        size = value if isinstance(value, int) else len(value)
        if size < 2:
            raise ValueError(
                f"an ensemble needs at least 2 members, got {size}; drop `ensemble` for a "
                "single teacher"
            )
        if isinstance(value, int):
            return value
        classes = {spec["num_classes"] for spec in value if "num_classes" in spec}
        if len(classes) > 1:
            raise ValueError(
                f"ensemble members predict different numbers of classes ({sorted(classes)}); "
                "members are averaged over the same classes: drop num_classes (the data sets it)"
            )
        return [check_model_spec(v) for v in value]

    @model_validator(mode="after")
    def _sources(self) -> TeacherConfig:
        paths, members = self.checkpoints, self.ensemble
        size = members if isinstance(members, int) else len(members or [])
        if paths is not None and self.checkpoint is not None:
            raise ValueError("give checkpoint (one teacher) or checkpoints (an ensemble), not both")
        if paths is not None and (len(paths) < 2 or (members is not None and size != len(paths))):
            raise ValueError(
                f"checkpoints lists {len(paths)} file(s), but an ensemble needs at least 2 "
                f"and one file per member (ensemble: {members}); make them agree"
            )
        if self.ensemble_temperature != 1.0 and members is None and paths is None:
            raise ValueError("ensemble_temperature applies to an ensemble teacher; set "
                             "ensemble (or checkpoints), or remove it")  # fmt: skip
        if self.use_epoch is not None:
            if self.checkpoint is not None or paths is not None:
                raise ValueError(
                    "use_epoch picks the weights of an epoch of a teacher trained here; a loaded "
                    "teacher has no epochs: point checkpoint at the earlier weights instead"
                )
            if self.use_epoch > self.train.epochs:
                raise ValueError(
                    f"use_epoch is {self.use_epoch} but the teacher trains for only "
                    f"{self.train.epochs} epochs (train.epochs); use an epoch ≤ {self.train.epochs}"
                )
        return self

    def member_count(self) -> int:
        """How many models make up the teacher (1 unless it is an ensemble)."""
        if isinstance(self.ensemble, int):
            return self.ensemble
        return len(self.ensemble or self.checkpoints or [None])


class StudentConfig(Strict):
    model: dict[str, Any] = Field(default_factory=lambda: {"type": "mlp", "hidden": [64]})
    train: TrainSettings = Field(default_factory=TrainSettings)
    #: Number of labelled training examples the student sees (stratified), e.g. 60; all if unset.
    train_subset: PositiveInt | None = None
    #: Also train the student on labels alone, the baseline every distillation is compared with.
    baseline: bool = True

    _model = field_validator("model")(classmethod(lambda cls, v: check_model_spec(v)))


class DistillConfig(Strict):
    #: Who learns from whom: a name in kdlab.runners.RUNNERS (``offline``, ...).
    scheme: str = "offline"
    #: Scheme-specific settings, validated by the scheme's own options model.
    options: dict[str, Any] = Field(default_factory=dict)
    #: The loss terms; null when ``stages`` is given (each stage has its own loss).
    loss: list[dict[str, Any]] | None = Field(
        default_factory=lambda: [
            {"type": "ce", "weight": 0.1},
            {"type": "soft_target", "weight": 0.9, "temperature": 4.0, "name": "kd"},
        ]
    )
    #: Training settings of the distillation run; the student's own settings when unset.
    train: TrainSettings | None = None
    #: Multi-stage training instead of ``loss`` (kdlab.stages): each stage its own loss terms,
    #: train overrides and trainable module paths, e.g. FitNets' hint stage then KD.
    stages: list[StageConfig] | None = Field(None, min_length=1)

    _loss = field_validator("loss")(
        classmethod(lambda cls, v: v if v is None else check_loss_specs(v))
    )

    @model_validator(mode="before")
    @classmethod
    def _loss_or_stages(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if data.get("stages") is not None:
            if data.get("loss") is not None:
                raise ValueError(
                    "distill.loss and distill.stages are mutually exclusive: with stages, each "
                    "stage has its own loss; move the terms into a stage (or drop stages)"
                )
            return {**data, "loss": None}
        if "loss" in data and data["loss"] is None:
            raise ValueError("distill.loss is null: give loss terms, e.g. [{type: ce}], or stages")
        return data

    @field_validator("scheme")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        get_runner(value)  # raises with the valid schemes
        return value

    @model_validator(mode="after")
    def _scheme_options(self) -> DistillConfig:
        try:
            self.parsed_options()  # validates; the dump keeps what the user wrote
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(['options', *map(str, e['loc'])])}: {_error_text(e)}"
                for e in err.errors()
            )
            raise ValueError(f"scheme {self.scheme!r}: {problems}") from None
        if self.stages is not None and self.scheme != "offline":
            raise ValueError(
                f"distill.stages is implemented by scheme 'offline' only, not {self.scheme!r}; "
                "use scheme: offline or a single distill.loss"
            )
        return self

    def parsed_options(self) -> BaseModel:
        return get_runner(self.scheme).options.model_validate(self.options)


class MetricsConfig(Strict):
    #: Temperature γ of the distillation error Φ_γ,n (seed 001 §7).
    gamma: PositiveFloat = 1.0
    ece_bins: PositiveInt = 15


class ExperimentConfig(Strict):
    name: str = "experiment"
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    data: DataConfig = Field(default_factory=DataConfig)
    #: ``null`` for schemes that need no pre-trained teacher (e.g. mutual learning).
    teacher: TeacherConfig | None = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)

    @model_validator(mode="after")
    def _teacher_if_needed(self) -> ExperimentConfig:
        if self.teacher is None and get_runner(self.distill.scheme).needs_teacher:
            raise ValueError(
                f"scheme {self.distill.scheme!r} distills a pre-trained teacher, but teacher is "
                "null; describe the teacher (model and train, or checkpoint)"
            )
        # Options can ask for the teacher too (mutual peers: [teacher], born_again gen0: teacher)
        # by a ``uses_teacher`` property: fail here, not after the baseline has trained.
        if self.teacher is None and getattr(self.distill.parsed_options(), "uses_teacher", False):
            raise ValueError(
                f"distill.options of scheme {self.distill.scheme!r} use the teacher, but teacher "
                "is null; describe the teacher, or change the options"
            )
        return self

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct, got {seeds}")
        return seeds


def _error_text(error: Any) -> str:
    if error["type"] == "missing":
        return "required key is missing"
    return str(error["msg"]).removeprefix("Value error, ")


def format_validation_error(err: ValidationError, source: str = "config") -> str:
    lines = [f"{source} is invalid:"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  - at {where}: {_error_text(e)}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "config") -> ExperimentConfig:
    """Validate a mapping (e.g. parsed YAML) into an ExperimentConfig, or raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source} must be a mapping of keys to values, got {type(data).__name__}"
        )
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    return parse_config(data, source=str(path))
