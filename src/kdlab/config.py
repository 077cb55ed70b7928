"""The experiment schema: one YAML file describes data, teacher, student, loss, training, seeds.

Validated with pydantic before anything trains. Every error names the offending field (as a
dotted path) and what would be valid there.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    Field,
    PositiveFloat,
    PositiveInt,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from kdlab.data import SourceSpec, get_source
from kdlab.data.augment import parse_augment
from kdlab.data.load import check_spec
from kdlab.errors import ConfigError, quote
from kdlab.losses import check_loss_specs
from kdlab.models import check_model_spec
from kdlab.schemes.registry import get_scheme
from kdlab.settings import Strict, TrainSettings, format_validation_error, validation_problems
from kdlab.yamlfile import parse_yaml, read_text

#: Longest experiment name (it names runs in the store); NumPy's splits take seeds < 2**32.
MAX_NAME, MAX_SEED = 200, 2**32 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class StageConfig(Strict):
    """One entry of ``distill.stages`` (multi-stage training, :mod:`kdlab.schemes.offline`)."""

    #: Shown in run names, e.g. "hint" or "kd".
    name: str | None = None
    loss: list[dict[str, Any]]
    #: Keys overriding the distillation's train settings for this stage (nested mappings merge).
    train: dict[str, Any] = Field(default_factory=dict)
    #: The student's module paths whose parameters train in this stage, or "all".
    trainable: str | list[str] = "all"

    _loss = field_validator("loss")(
        classmethod(lambda cls, v: check_loss_specs(v, "a stage's loss"))
    )

    @field_validator("train")
    @classmethod
    def _train(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        TrainSettings.model_validate(overrides)  # unknown keys and bad values fail here already
        return overrides

    @field_validator("trainable")
    @classmethod
    def _paths(cls, paths: str | list[str]) -> str | list[str]:
        if paths in ("all", "none") or (
            isinstance(paths, list) and paths and all(isinstance(p, str) and p for p in paths)
        ):
            return paths
        raise ValueError(
            f"trainable must be 'all' or a non-empty list of module paths of the student, "
            f"e.g. [features.0, features.1], or 'none' (only the loss terms' own parts train, "
            f"e.g. factor transfer's paraphraser); got {quote(paths)}"
        )


class DataConfig(Strict):
    #: A dataset name (``kdlab datasets``), ``folder`` (root/train/<class>/ and root/test/<class>/
    #: image folders), ``npz`` (an .npz file of x_train, y_train, x_test, y_test) or an import
    #: path ``package.module:function`` returning those arrays (kdlab.data.function).
    source: str = "digits"
    root: str | None = None
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_size: PositiveInt | None = None
    flatten: bool = False
    #: Batched augmentation of the training batches, and normalisation of every split, in order
    #: (kdlab.data.augment): e.g. [{random_crop: {padding: 4}}, hflip, {normalize: {...}}].
    augment: list[str | dict[str, Any]] | None = None
    #: ``folder`` only: resize every image to [height, width] (Pillow bilinear); needed when the
    #: images differ in size.
    resize: tuple[PositiveInt, PositiveInt] | None = None
    #: ``package.module:function`` only: the function's keyword arguments.
    args: dict[str, Any] | None = None
    #: Stream the splits from disk (true) or keep them in memory (false); unset: stream
    #: memory-mapped arrays (``source: npy``) larger than ``memory_budget_gb`` (kdlab.data.stream).
    stream: bool | None = None
    memory_budget_gb: PositiveFloat = 4.0

    @field_validator("augment")
    @classmethod
    def _known_ops(cls, value: list[Any] | None) -> list[Any] | None:
        parse_augment(value)  # unknown ops and arguments fail here, with the valid ones
        return value

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        # Raises with the valid names, closest first; an import path is imported here.
        return get_source(value).name

    @model_validator(mode="after")
    def _options_fit_source(self) -> DataConfig:
        check_spec(get_source(self.source), self.spec())
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Left out while unset: configs written before these keys existed keep their dump, so
        # their fingerprint (kdlab run --resume) and the runs already stored still match.
        data = handler(self)
        for key, default in DATA_DEFAULTS.items():
            if data.get(key) == default:
                data.pop(key, None)
        return data

    def spec(self) -> SourceSpec:
        """The source with its options, as ``load_dataset`` takes it."""
        resize = None if self.resize is None else (self.resize[0], self.resize[1])
        return SourceSpec(self.source, resize=resize, args=dict(self.args or {}),
                          stream=self.stream, memory_budget_gb=self.memory_budget_gb)  # fmt: skip


#: Keys of ``data`` left out of a config's dump at these values (they came after configs that
#: are already stored: their fingerprints must not change).
DATA_DEFAULTS = {"resize": None, "args": None, "augment": None, "stream": None,
                 "memory_budget_gb": 4.0}  # fmt: skip


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
        if not 2 <= size <= 1000:
            raise ValueError(
                f"an ensemble needs {'at least 2' if size < 2 else 'at most 1000'} members, got "
                f"{size}; a single teacher needs no `ensemble`"
            )
        if isinstance(value, int):
            return value
        given = [spec["num_classes"] for spec in value if "num_classes" in spec]
        classes = [n for i, n in enumerate(given) if n not in given[:i]]  # hashable or not
        if len(classes) > 1:
            with contextlib.suppress(TypeError):  # numbers sort; other values stay in order
                classes.sort()
            raise ValueError(
                f"ensemble members predict different numbers of classes ({quote(classes)}); "
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
    #: Who learns from whom: a scheme name (kdlab.schemes.registry: ``offline``, ...).
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
    #: Multi-stage training instead of ``loss`` (kdlab.schemes.offline): each stage its own loss
    #: terms, train overrides and trainable module paths, e.g. FitNets' hint stage then KD.
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
        get_scheme(value)  # raises with the valid schemes
        return value

    @model_validator(mode="after")
    def _scheme_options(self) -> DistillConfig:
        try:
            self.parsed_options()  # validates; the dump keeps what the user wrote
        except ValidationError as err:
            problems = validation_problems(err, prefix=["options"])
            raise ValueError(f"scheme {self.scheme!r}: {problems}") from None
        if self.stages is not None and self.scheme != "offline":
            raise ValueError(
                f"distill.stages is implemented by scheme 'offline' only, not {self.scheme!r}; "
                "use scheme: offline or a single distill.loss"
            )
        return self

    def parsed_options(self) -> BaseModel:
        return get_scheme(self.scheme).options.model_validate(self.options)


class MetricsConfig(Strict):
    #: Temperature γ of the distillation error Φ_γ,n (seed 001 §7).
    gamma: PositiveFloat = 1.0
    ece_bins: PositiveInt = 15


class ExperimentConfig(Strict):
    name: str = "experiment"
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1)
    data: DataConfig = Field(default_factory=DataConfig)
    #: ``null`` for schemes that need no pre-trained teacher (e.g. mutual learning).
    teacher: TeacherConfig | None = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    #: Stop, instead of warning, when a teacher is at chance level or a loss diverged.
    strict: bool = False

    @model_validator(mode="after")
    def _no_cache_with_augmentation(self) -> ExperimentConfig:
        augment, _ = parse_augment(self.data.augment)
        sections = {
            "teacher.train": self.teacher.train if self.teacher else None,
            "student.train": self.student.train,
            "distill.train": self.distill.train,
        }
        for where, train in sections.items():
            explicit = train is not None and "cache_teacher" in train.model_fields_set
            if augment is not None and explicit and train.cache_teacher:
                raise ValueError(
                    f"{where}.cache_teacher is true, but data.augment changes the inputs at "
                    "every epoch, so cached teacher logits would be wrong; remove cache_teacher "
                    "(kdlab turns the cache off with augmentation)"
                )
        return self

    @model_validator(mode="after")
    def _teacher_if_needed(self) -> ExperimentConfig:
        # Options can ask for the teacher too (mutual peers: [teacher], born_again gen0: teacher)
        # by a ``uses_teacher`` property: fail here, not after the baseline has trained.
        scheme = self.distill.scheme
        if self.teacher is None and get_scheme(scheme).needs_teacher:
            raise ValueError(
                f"scheme {scheme!r} distills a pre-trained teacher, but teacher is null; "
                "describe the teacher (model and train, or checkpoint)"
            )
        if self.teacher is None and getattr(self.distill.parsed_options(), "uses_teacher", False):
            raise ValueError(
                f"distill.options of scheme {scheme!r} use the teacher, but teacher is null; "
                "describe the teacher, or change the options"
            )
        return self

    @field_validator("name")
    @classmethod
    def _short_name(cls, name: str) -> str:
        if name.strip() and len(name) <= MAX_NAME:
            return name
        raise ValueError(
            f"name must be 1 to {MAX_NAME} characters (it names the runs in the store), got "
            f"{quote(name)}; use a short name like digits-kd"
        )

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct, got {quote(seeds)}")
        return seeds


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
    return parse_config(parse_yaml(read_text(Path(path)), str(path)), source=str(path))
