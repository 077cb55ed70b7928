"""Offline distillation (seed 001 §4): a frozen, pre-trained teacher teaches a student.

Without a teacher it is plain supervised training, which is how kdlab trains teachers and
students alone — one scheme, one loop, for all three.

Multi-stage training is offline distillation run several times on one student: each stage has
its own loss terms, settings and trainable parts. FitNets (seed 004) is the motivating case —
stage 1 trains the student up to its guided layer on the hint loss, stage 2 runs KD on the whole
student — but nothing here knows about hints::

    distill:
      stages:
        - name: hint
          trainable: [features.0, features.1]      # module paths of the student, or "all"
          train: {epochs: 5}                       # overrides of distill.train / student.train
          loss: [{type: hint, student: features.1, teacher: features.1}]
        - name: kd
          loss: [{type: ce, weight: 0.1}, {type: soft_target, weight: 0.9, temperature: 4}]

Each stage is one run — its own optimizer (over the trainable parameters and the stage's adapters
only), schedule, checkpoint, history and test metrics — because a stage *is* a training run with
its own loss and settings. The last stage's run has role ``distilled`` (what tables compare with
the student alone); earlier ones ``distilled-stage1``, …. Adapters belong to their stage's loss
terms, so the exported student (``model.pt``) never contains them.

``trainable: none`` freezes the whole student for a stage in which only the terms' own parts
train (e.g. factor transfer's paraphraser). A term of a later stage with the *same name and kind*
as a term of an earlier stage starts from that term's trained state (parameters and buffers,
loaded after ``prepare``, before the optimizer is built; entries the later term lacks are
skipped): a module trained in one stage carries over to the next — give a term another name to
start it afresh.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from kdlab.config import StageConfig
from kdlab.data import DataSplits
from kdlab.engine import EpochCallback
from kdlab.errors import ConfigError
from kdlab.freeze import hold_frozen_in_eval, no_param_grads, train_only
from kdlab.health import TrainingNotice
from kdlab.inference import batch_accuracy
from kdlab.losses import Objective, Term, build_objective, check_batch_sizes, prepare_terms
from kdlab.runs import Recorder, RunInfo, RunResult, fit
from kdlab.schemes.base import DistillContext, Scheme, Update
from kdlab.schemes.cache import TeacherCache
from kdlab.schemes.registry import SchemeSpec
from kdlab.settings import TrainSettings, merge_settings
from kdlab.taps import resolve_modules
from kdlab.types import Batch, ModelOutput

#: A loss as the Python API takes it: term objects or specs, or a built objective.
LossSpec = Sequence[Term | Mapping[str, Any]] | Objective
#: Trained term states by term name: (kind, state dict), carried from stage to stage.
TermStates = dict[str, tuple[str, dict[str, Tensor]]]


def as_objective(loss: LossSpec) -> Objective:
    return loss if isinstance(loss, Objective) else build_objective(loss)


class OfflineScheme(Scheme):
    """Student trained on ``objective``; the teacher (if any) runs in eval mode under no_grad."""

    def __init__(
        self,
        student: nn.Module,
        objective: Objective,
        teacher: nn.Module | None = None,
        cache_teacher: bool = True,
        carried: Mapping[str, tuple[str, Mapping[str, Tensor]]] | None = None,
    ):
        if objective.needs_teacher and teacher is None:
            names = [t.name for t in objective.terms if t.needs_teacher]
            raise ConfigError(
                f"loss terms {names} need a teacher, but none was given; pass a teacher or "
                "use only label terms such as 'ce'"
            )
        self.student = student
        self.objective = objective
        self.teacher = teacher
        resolve_modules(student, objective.student_taps, "student")  # fail before training
        if teacher is not None:
            resolve_modules(teacher, objective.teacher_taps, "teacher")
            teacher.requires_grad_(False)
        # Feature terms need the teacher's tapped activations, which are not cached.
        use_cache = cache_teacher and teacher is not None and not objective.teacher_taps
        self.teacher_cache = TeacherCache(teacher) if use_cache else None
        self.carried = carried or {}

    def trainable(self) -> dict[str, nn.Module]:
        return {"model": self.student, "objective": self.objective}

    def frozen(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher} if self.teacher is not None else {}

    def reference(self) -> nn.Module | None:
        return self.teacher

    def prepare(self, sample: Batch) -> None:
        # Terms with shape-dependent adapters build them now, so the optimizer includes them.
        prepare_terms(self.objective, self.student, self.teacher, sample)
        load_term_states(self.objective, self.carried)
        if self.teacher_cache is not None:  # a new fit may bring other training data
            self.teacher_cache.clear()

    def set_mode(self, training: bool) -> None:
        super().set_mode(training)
        if training:  # parts of the student frozen by requires_grad (e.g. a stage) stay fixed
            hold_frozen_in_eval(self.student)

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        params = [*self.student.parameters(), *self.objective.parameters()]
        return {"student": [p for p in params if p.requires_grad]}

    def eval_model(self) -> nn.Module:
        return self.student

    def train_step(self, batch: Batch, update: Update) -> dict[str, float]:
        teacher_out = None
        obj = self.objective
        if self.teacher is not None and obj.needs_teacher:
            if self.teacher_cache is not None:
                teacher_out = ModelOutput(self.teacher_cache(batch))
            else:
                with torch.no_grad():
                    teacher_out = self.forward(
                        self.teacher, batch.inputs, obj.teacher_taps, "teacher"
                    )
        student_out = self.forward(self.student, batch.inputs, obj.student_taps, "student")
        update("student", self.replica(obj)(student_out, teacher_out, batch))
        return {"acc": batch_accuracy(student_out.logits, batch.targets)}


def fit_offline(
    model: nn.Module,
    data: DataSplits,
    loss: LossSpec,
    settings: TrainSettings,
    teacher: nn.Module | None = None,
    run: RunInfo | None = None,
    recorder: Recorder | None = None,
    callbacks: Sequence[EpochCallback] = (),
) -> RunResult:
    """Train ``model`` on ``loss`` (distilling ``teacher``, if given) and record the run."""
    scheme = offline_scheme(model, data, as_objective(loss), settings, teacher)
    return fit(scheme, data, settings, run or RunInfo(), recorder, callbacks)


def offline_scheme(
    model: nn.Module,
    data: DataSplits,
    objective: Objective,
    settings: TrainSettings,
    teacher: nn.Module | None = None,
    carried: Mapping[str, tuple[str, Mapping[str, Tensor]]] | None = None,
) -> OfflineScheme:
    cache = settings.cache_teacher
    if cache and teacher is not None and data.train.augment is not None:
        warnings.warn(TrainingNotice(CACHE_OFF), stacklevel=3)
        cache = False
    return OfflineScheme(model, objective, teacher, cache, carried)


def term_states(objective: Objective) -> TermStates:
    """Each term's trained state (copies), by name, for the terms that have any."""
    return {
        term.name: (term.kind, {k: v.detach().clone() for k, v in term.state_dict().items()})
        for term in objective.terms
        if term.state_dict()
    }


def load_term_states(
    objective: Objective, states: Mapping[str, tuple[str, Mapping[str, Tensor]]]
) -> None:
    """Start each term from the state of an earlier term of the same name and kind (the entries
    both have; the rest of the term keeps its fresh initialisation)."""
    for term in objective.terms:
        kind, state = states.get(term.name, ("", {}))
        if kind != term.kind:
            continue
        own = term.state_dict()
        shared = {k: v for k, v in state.items() if k in own}
        for key, value in shared.items():
            if value.shape != own[key].shape:
                raise ConfigError(
                    f"loss term {term.name!r} ({term.kind}) starts from the trained term of the "
                    f"same name in an earlier stage, but its {key} has shape "
                    f"{tuple(own[key].shape)} there {tuple(value.shape)}; give one of them "
                    "another name (name: ...) to train it afresh"
                )
        if shared:
            term.load_state_dict(shared, strict=False)


CACHE_OFF = (
    "the teacher-logit cache is off: data.augment changes the inputs at every epoch, so the "
    "teacher runs on each augmented batch"
)


@dataclass
class Stage:
    """One stage for :func:`fit_stages` (the Python form of :class:`~kdlab.config.StageConfig`)."""

    loss: LossSpec
    settings: TrainSettings | None = None
    #: The student's module paths that train, "all", or "none" (only the terms' own parts).
    trainable: Sequence[str] | str = "all"
    name: str | None = None


def stages_from_config(configs: Sequence[StageConfig], base: TrainSettings) -> list[Stage]:
    return [Stage(c.loss, merge_settings(base, c.train), c.trainable, c.name) for c in configs]


def fit_stages(
    student: nn.Module,
    data: DataSplits,
    stages: Sequence[Stage],
    teacher: nn.Module | None = None,
    run: RunInfo | None = None,
    recorder: Recorder | None = None,
) -> list[RunResult]:
    """Train ``student`` through ``stages`` in order; one :class:`RunResult` per stage.

    ``run`` names the last stage's run (default role ``distilled``); earlier stages get the
    role suffixed ``-stage<i>``. A stage without settings trains with default settings. Terms
    carry their trained state to later terms of the same name and kind (module docstring).
    """
    if not stages:
        raise ConfigError("fit_stages needs at least one stage")
    run = run or RunInfo("distilled")
    n, runs = len(stages), []
    carried: TermStates = {}
    for i, stage in enumerate(stages):
        settings = stage.settings or TrainSettings()
        objective = as_objective(stage.loss)
        check_batch_sizes(objective, len(data.train), settings.batch_size)
        label = f" ({stage.name})" if stage.name else ""
        info = {"index": i + 1, "of": n, "name": stage.name, "trainable": stage.trainable}
        stage_run = run if n == 1 else run.replace(
            role=run.role if i == n - 1 else f"{run.role}-stage{i + 1}",
            name=f"{run.label} stage {i + 1}/{n}{label}", config={"stage": info},
        )  # fmt: skip
        scheme = offline_scheme(student, data, objective, settings, teacher, carried)
        with stage_trainable(student, stage.trainable):
            runs.append(fit(scheme, data, settings, stage_run, recorder))
        carried.update(term_states(objective))
    return runs


@contextmanager
def stage_trainable(student: nn.Module, trainable: Sequence[str] | str) -> Iterator[None]:
    """Freeze the student outside ``trainable`` (paths, "all", or "none": freeze all of it)."""
    if trainable == "none":
        with no_param_grads(student):
            yield
        return
    with train_only(student, trainable, "student"):
        yield


def run_offline(ctx: DistillContext) -> list[RunResult]:
    """One run with ``distill.loss``, or one run per entry of ``distill.stages``."""
    if ctx.stages:
        stages = stages_from_config(ctx.stages, ctx.train)
    else:
        stages = [Stage(ctx.loss or [], ctx.train)]
    run = ctx.run("distilled", f"distilled s{ctx.seed}")
    return fit_stages(ctx.new_student(), ctx.data, stages, ctx.teacher, run, ctx.recorder)


SCHEME = SchemeSpec("offline", run_offline, summary="frozen teacher → student (Hinton et al.)")

__all__ = [
    "SCHEME",
    "LossSpec",
    "OfflineScheme",
    "Stage",
    "as_objective",
    "fit_offline",
    "fit_stages",
    "load_term_states",
    "offline_scheme",
    "run_offline",
    "stage_trainable",
    "stages_from_config",
    "term_states",
]
