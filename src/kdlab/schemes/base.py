"""What every scheme shares: the :class:`Scheme` base class and the :class:`DistillContext` of
one seed.

A scheme owns the trainable models (and any loss modules with parameters), names its optimizers'
parameter groups, and for one batch computes losses and hands each to ``update`` — the engine's
backward/step for that optimizer. Handing losses over one at a time (rather than returning them
all) lets adversarial schemes step the discriminator before computing the student's loss against
the updated discriminator. The engine knows nothing about distillation; schemes know nothing about
epochs, checkpoints or progress bars.

A scheme's file also holds its *plan for a seed*: a function of a :class:`DistillContext` (what
the experiment prepared for one seed: data, teacher, loss, settings, options, how to build the
student) that builds the scheme's models, fits them through :mod:`kdlab.runs` and returns the runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from kdlab.config import ExperimentConfig, StageConfig
from kdlab.data import ArrayDataset, DataSplits, split_indices
from kdlab.distributed import trains
from kdlab.engine import Update
from kdlab.errors import ConfigError
from kdlab.inference import forward_with_taps, predict_logits
from kdlab.models import build_model
from kdlab.runs import Recorder, RunInfo, check_num_classes
from kdlab.seeding import derived_seed
from kdlab.settings import Strict, TrainSettings
from kdlab.types import Batch, Inputs, ModelOutput


class Scheme:
    """Base class; subclasses implement ``trainable``, ``optimizer_groups``, ``train_step`` and
    ``eval_model`` (the :class:`~kdlab.engine.Trainable` and :class:`~kdlab.runs.Fittable`
    protocols), and override the defaults below where they differ."""

    def trainable(self) -> dict[str, nn.Module]:
        """Modules whose parameters change (saved in checkpoints), by name."""
        raise NotImplementedError

    def frozen(self) -> dict[str, nn.Module]:
        """Modules that only provide targets (teachers): eval mode, no gradients."""
        return {}

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters of each optimizer, by optimizer name (the first is the main one)."""
        raise NotImplementedError

    def prepare(self, sample: Batch) -> None:
        """Called once by the engine before it builds optimizers, with a few training samples.

        Schemes whose loss terms own shape-dependent parameters (e.g. an adapter from student
        to teacher features) create them here, so the optimizers see them.
        """

    def train_step(self, batch: Batch, update: Update) -> dict[str, float]:
        """Compute losses for one batch and call ``update`` for each; return batch metrics."""
        raise NotImplementedError

    def eval_model(self) -> nn.Module:
        """The model whose accuracy is reported during training and kept as the result."""
        raise NotImplementedError

    def reference(self) -> nn.Module | None:
        """The teacher the result is compared with on test (agreement, KL, Φ_γ); None: none."""
        return None

    def recorded_loss(self) -> list[str]:
        """The main model's loss terms, as recorded with its run."""
        objective = getattr(self, "objective", None)
        return [repr(t) for t in objective.terms] if objective is not None else []

    def set_mode(self, training: bool) -> None:
        for module in self.trainable().values():
            module.train(training)
        for module in self.frozen().values():
            module.eval()  # a teacher never trains: its BatchNorm statistics must not drift

    def called_modules(self) -> list[nn.Module]:
        """The trained modules whose forward ``train_step`` calls (through :meth:`replica`).

        Under DDP each is wrapped, so its gradients are averaged over the ranks. The default is
        every trainable module; a scheme whose checkpoint holds containers (e.g. a ModuleList of
        per-pair objectives) lists the modules it calls instead.
        """
        return list(self.trainable().values())

    def replicate(self, wrap: Callable[[nn.Module], nn.Module] | None) -> None:
        """Run the forwards of :meth:`called_modules` that train through ``wrap(module)`` — the
        engine's DistributedDataParallel — or, with None, through the modules again."""
        self._replicas = {
            id(m): wrap(m) for m in self.called_modules() if wrap is not None and trains(m)
        }

    def replica(self, module: nn.Module) -> nn.Module:
        """What to call for ``module``'s forward: its DDP wrapper under DDP, else itself.

        Call a module through this whenever its parameters should learn from the step (a
        frozen use, e.g. the discriminator judging the student, calls the module itself).
        """
        return getattr(self, "_replicas", {}).get(id(module), module)

    def forward(
        self, model: nn.Module, inputs: Inputs, taps: Sequence[str] = (), role: str = "model"
    ) -> ModelOutput:
        """Run ``model`` (through its replica) and capture the outputs of the modules at
        ``taps`` (by path)."""
        return forward_with_taps(model, inputs, taps, role, self.replica(model))

    @torch.no_grad()
    def predict(self, data: ArrayDataset, batch_size: int = 1024) -> Tensor:
        """Logits of ``eval_model`` on a whole split, in eval mode."""
        return predict_logits(self.eval_model(), data, batch_size)


def require_teacher(teacher: nn.Module | None, what: str) -> nn.Module:
    """``teacher``, or a ConfigError saying ``what`` needs it and how to give one."""
    if teacher is None:
        raise ConfigError(
            f"{what}, but there is none; train or load a teacher first (in an experiment "
            "config: describe `teacher:` with a model, or a checkpoint)"
        )
    return teacher


@dataclass
class DistillContext:
    """Everything a scheme's plan needs for one seed of one experiment."""

    #: The splits; ``data.train`` holds the student's labelled examples (``train_subset``).
    data: DataSplits
    seed: int
    teacher: nn.Module | None
    #: ``distill.loss`` (None when the experiment trains in ``stages``).
    loss: list[dict[str, Any]] | None
    train: TrainSettings
    options: Strict
    new_student: Callable[[], nn.Module]  # same initial weights as the baseline student
    #: The student's model spec, for schemes that build more models of its architecture.
    student_model: dict[str, Any] = field(default_factory=dict)
    stages: list[StageConfig] | None = None
    recorder: Recorder = field(default_factory=Recorder)
    config: dict[str, Any] = field(default_factory=dict)  # recorded with each run

    @classmethod
    def for_seed(
        cls,
        cfg: ExperimentConfig,
        data: DataSplits,
        seed: int,
        teacher: nn.Module | None,
        recorder: Recorder | None = None,
        config_json: dict[str, Any] | None = None,
    ) -> DistillContext:
        """The context of ``seed`` of ``cfg``: the student's data (its labelled examples as
        ``train``), its teacher, and the experiment JSON recorded with each run."""
        student_data = dataclasses.replace(
            data, train=student_train_set(data, cfg.student.train_subset, seed)
        )

        def new_student() -> nn.Module:  # the baseline and every distilled student start alike
            return build_model(cfg.student.model, data.input_shape, data.num_classes, seed=seed)

        return cls(
            data=student_data, seed=seed, teacher=teacher, loss=cfg.distill.loss,
            train=cfg.distill.train or cfg.student.train, options=cfg.distill.parsed_options(),
            new_student=new_student, student_model=dict(cfg.student.model),
            stages=cfg.distill.stages, recorder=recorder or Recorder(),
            config={"experiment": config_json or {}, "train_examples": len(student_data.train)},
        )  # fmt: skip

    def run(self, role: str, name: str, **config: Any) -> RunInfo:
        """The RunInfo of one of this seed's runs, recording ``config`` beside the context's."""
        return RunInfo(role, name, self.seed, {**self.config, **config})

    def build(self, spec: Mapping[str, Any] | None, position: int) -> nn.Module:
        """Extra model ``position`` (≥ 1) of this seed: initial weights from its derived seed.

        ``spec`` None is the student's architecture.
        """
        if spec is None:
            if not self.student_model:
                raise ConfigError(
                    "this scheme builds extra copies of the student's architecture, but the "
                    "context carries no student model spec; list the models' specs explicitly"
                )
            spec = self.student_model
        seed = derived_seed(self.seed, position)
        return build_model(spec, self.data.input_shape, self.data.num_classes, seed=seed)


def student_train_set(data: DataSplits, subset: int | None, seed: int) -> ArrayDataset:
    """The student's labelled examples: all of ``data.train``, or a stratified subset."""
    if subset is None:
        return data.train
    if subset > len(data.train):
        raise ConfigError(
            f"student.train_subset is {subset}, but {data.name} has only {len(data.train)} "
            "training examples after the validation split"
        )
    (index,) = split_indices(data.train.y.numpy(), [subset], seed)
    return data.train.subset(index)


def checked(build: Callable[[], nn.Module], data: DataSplits, role: str, where: str) -> nn.Module:
    """``build()``, then one eval-mode forward of two training samples: errors start with
    ``where`` (the config field), including the odd exception a user's own model raises."""
    try:
        model = build()
        check_num_classes(model, data, role)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    except Exception as err:  # a model of the user's own may fail in any way
        raise ConfigError(f"{where}: cannot build the {role}: {type(err).__name__}: {err}") from err
    return model


__all__ = [
    "DistillContext",
    "Scheme",
    "Update",
    "checked",
    "require_teacher",
    "student_train_set",
]
