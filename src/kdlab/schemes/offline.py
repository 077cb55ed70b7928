"""Offline distillation (seed 001 §4): a frozen, pre-trained teacher teaches a student.

Without a teacher it is plain supervised training, which is how kdlab trains teachers and
students alone — one scheme, one loop, for all three.
"""

from __future__ import annotations

import torch
from torch import nn

from kdlab.errors import ConfigError
from kdlab.freeze import hold_frozen_in_eval
from kdlab.losses.base import Objective
from kdlab.losses.tapped import prepare_terms
from kdlab.schemes.base import Scheme, Update, batch_accuracy
from kdlab.schemes.cache import TeacherCache
from kdlab.taps import resolve_modules
from kdlab.types import Batch, ModelOutput


class OfflineScheme(Scheme):
    """Student trained on ``objective``; the teacher (if any) runs in eval mode under no_grad."""

    def __init__(
        self,
        student: nn.Module,
        objective: Objective,
        teacher: nn.Module | None = None,
        cache_teacher: bool = True,
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

    def trainable(self) -> dict[str, nn.Module]:
        return {"model": self.student, "objective": self.objective}

    def frozen(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher} if self.teacher is not None else {}

    def prepare(self, sample: Batch) -> None:
        # Terms with shape-dependent adapters build them now, so the optimizer includes them.
        prepare_terms(self.objective, self.student, self.teacher, sample.inputs)
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
        update("student", self.objective(student_out, teacher_out, batch))
        return {"acc": batch_accuracy(student_out.logits, batch.targets)}
