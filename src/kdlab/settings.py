"""Training settings shared by the engine (Python API) and experiment configs (YAML).

Pydantic models with ``extra="forbid"``: an unknown key is an error that names it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from kdlab.devices import DEVICE_PATTERN
from kdlab.errors import ConfigError, did_you_mean, quote, shorten

#: Longest single problem an error message reports, and most problems it lists.
_PROBLEM_LIMIT = 1000
_MAX_PROBLEMS = 20


class Strict(BaseModel):
    """Base of every settings/config model: unknown keys are errors that list the valid ones."""

    # NaN and ±inf are never a sensible setting (a learning rate of inf trains to NaN).
    # Dumps keep inf/nan inside free-form values (a loss term's alpha=inf) as JSON's Infinity,
    # not null, so a recorded config reads back as it was given.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, allow_inf_nan=False, ser_json_inf_nan="constants"
    )

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            valid = list(cls.model_fields)
            for key in data:
                if key not in cls.model_fields:
                    raise ValueError(
                        f"unknown key {quote(key)}{did_you_mean(key, valid)}; "
                        f"valid keys: {', '.join(valid)}"
                    )
        return data


class OptimizerSettings(Strict):
    """``sgd`` (with momentum/nesterov), ``adam`` or ``adamw``."""

    name: Literal["sgd", "adam", "adamw"] = "adam"
    lr: PositiveFloat = 1e-3
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)


class ScheduleSettings(Strict):
    """Learning-rate schedule, stepped once per epoch, after an optional linear warm-up.

    ``step_size`` and ``milestones`` count epochs from the end of the warm-up.
    """

    name: Literal["constant", "cosine", "step", "multistep"] = "constant"
    step_size: PositiveInt = 30
    milestones: list[PositiveInt] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0, le=1)
    warmup_epochs: int = Field(0, ge=0)
    min_lr: float = Field(0.0, ge=0)


class TrainSettings(Strict):
    """How one model (or one scheme's models) is trained."""

    epochs: PositiveInt = 20
    batch_size: PositiveInt = 64
    optimizer: OptimizerSettings = Field(default_factory=OptimizerSettings)
    #: Per-optimizer overrides by optimizer name (e.g. a discriminator's own learning rate).
    optimizers: dict[str, OptimizerSettings] = Field(default_factory=dict)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    clip_grad_norm: PositiveFloat | None = None
    deterministic: bool = False
    eval_every: PositiveInt = 1
    #: Write the resumable checkpoint after every ``checkpoint_every``-th epoch, but no sooner than
    #: ``checkpoint_seconds`` after the previous one (tiny models run epochs in milliseconds);
    #: the last epoch is always saved.
    checkpoint_every: PositiveInt = 1
    checkpoint_seconds: float = Field(30.0, ge=0)
    #: Intra-op CPU threads while training (None: torch's default). Small models often run
    #: fastest on one thread, and a busy machine makes many threads slower still.
    threads: PositiveInt | None = None
    #: Keep the weights of the epoch with the best validation accuracy instead of the last.
    keep_best: bool = False
    #: Reuse a frozen teacher's logits per training example after their first computation
    #: (kdlab.schemes.cache): exact here, where inputs are not augmented, and much faster.
    cache_teacher: bool = True
    #: Where to train: auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps.
    device: str = "auto"
    #: fp32, or mixed precision: bf16 (CUDA and CPU) or fp16 (CUDA, with a gradient scaler).
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    #: Models and batches in channels-last memory format (faster convolutions on recent GPUs).
    channels_last: bool = False
    #: ``torch.compile`` every model of the run (nn.Module.compile) before training.
    compile: bool = False
    #: Check losses for NaN/inf every this many steps (kdlab.guard). Unset: every step on a CPU
    #: (free there), every 25 on a GPU, where each check waits for the device.
    finite_check_every: PositiveInt | None = None
    #: Under DDP (torchrun): let DistributedDataParallel look for parameters that a step leaves
    #: without gradient (a model with unused branches); slower, so off unless a model needs it.
    find_unused_parameters: bool = False

    @field_validator("device")
    @classmethod
    def _device_name(cls, name: str) -> str:
        if not DEVICE_PATTERN.match(name):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {quote(name)}")
        return name

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainSettings:
        if self.schedule.warmup_epochs >= self.epochs and self.schedule.warmup_epochs > 0:
            raise ValueError(
                f"schedule.warmup_epochs ({self.schedule.warmup_epochs}) must be smaller than "
                f"epochs ({self.epochs})"
            )
        return self


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
    except ValidationError as err:
        raise ConfigError(
            f"stage train settings {quote(dict(overrides))} do not fit: {validation_problems(err)}"
        ) from None


def phase_settings(settings: TrainSettings, epochs: int, keep: str) -> TrainSettings:
    """Settings for a short preliminary phase: constant lr, only the ``keep`` override."""
    return settings.model_copy(update={
        "epochs": epochs, "schedule": ScheduleSettings(), "keep_best": False,
        "optimizers": {k: v for k, v in settings.optimizers.items() if k == keep},
    })  # fmt: skip


def error_text(error: Mapping[str, Any]) -> str:
    """One pydantic error as a sentence, without pydantic's "Value error, " prefix (and cut to
    a readable length: a message may quote what the config holds)."""
    if error["type"] == "missing":
        return "required key is missing"
    if error["type"] == "finite_number":
        return "must be a finite number, not NaN or infinity"
    return shorten(str(error["msg"]).removeprefix("Value error, "), _PROBLEM_LIMIT)


def _where(loc: Sequence[Any]) -> str:
    return shorten(".".join(str(p) for p in loc), _PROBLEM_LIMIT // 4)


def _problems(err: ValidationError) -> tuple[list[Any], str]:
    """The first problems of ``err`` and, when there are more, a note saying how many."""
    errors = err.errors(include_url=False, include_input=False)
    rest = len(errors) - _MAX_PROBLEMS
    return errors[:_MAX_PROBLEMS], f"… and {rest} more problem(s)" if rest > 0 else ""


def validation_problems(err: ValidationError, prefix: Sequence[str] = ()) -> str:
    """Every problem of ``err`` on one line: ``where: what; where: what``."""
    errors, more = _problems(err)
    parts = [f"{_where([*prefix, *e['loc']]) or 'options'}: {error_text(e)}" for e in errors]
    return "; ".join([*parts, *([more] if more else [])])


def format_validation_error(err: ValidationError, source: str = "config") -> str:
    """Every problem of ``err`` on its own line, each with its dotted path in ``source``."""
    errors, more = _problems(err)
    lines = [f"{source} is invalid:"]
    lines += [f"  - at {_where(e['loc']) or '(top level)'}: {error_text(e)}" for e in errors]
    return "\n".join([*lines, *([f"  {more}"] if more else [])])


def parse_options(model: type[BaseModel], value: Any, what: str) -> Any:
    """``value`` (a mapping, or already a ``model``) validated as ``model``, or a ConfigError
    that starts with ``what`` (e.g. "adversarial options are invalid")."""
    if isinstance(value, model):
        return value
    try:
        return model.model_validate(dict(value or {}))
    except ValidationError as err:
        raise ConfigError(f"{what}: {validation_problems(err)}") from None
