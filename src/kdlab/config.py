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

    _model = field_validator("model")(classmethod(lambda cls, v: check_model_spec(v)))
    _loss = field_validator("loss")(classmethod(lambda cls, v: check_loss_specs(v)))


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
    loss: list[dict[str, Any]] = Field(
        default_factory=lambda: [
            {"type": "ce", "weight": 0.1},
            {"type": "soft_target", "weight": 0.9, "temperature": 4.0, "name": "kd"},
        ]
    )
    #: Training settings of the distillation run; the student's own settings when unset.
    train: TrainSettings | None = None

    _loss = field_validator("loss")(classmethod(lambda cls, v: check_loss_specs(v)))

    @model_validator(mode="after")
    def _scheme_options(self) -> DistillConfig:
        self.parsed_options()  # validates; the dump keeps what the user wrote
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
        return self

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct, got {seeds}")
        return seeds


def format_validation_error(err: ValidationError, source: str = "config") -> str:
    lines = [f"{source} is invalid:"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"  - at {where}: {msg}")
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
