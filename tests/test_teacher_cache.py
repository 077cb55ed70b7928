"""The teacher-logit cache: exact reuse, only first visits reach the teacher."""

from __future__ import annotations

import torch
from torch import nn

from kdlab.api import fit_model
from kdlab.losses import Objective, hinton_loss
from kdlab.models import MLP
from kdlab.schemes.cache import TeacherCache
from kdlab.schemes.offline import OfflineScheme
from kdlab.settings import TrainSettings
from kdlab.types import Batch


class CountingTeacher(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(5, 3)
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += len(x)
        return self.net(x)


def test_cache_returns_teacher_logits_and_computes_each_example_once():
    torch.manual_seed(0)
    teacher = CountingTeacher().eval()
    x = torch.randn(20, 5)
    cache = TeacherCache(teacher)
    for epoch in range(3):
        order = torch.randperm(20, generator=torch.Generator().manual_seed(epoch))
        for part in order.split(6):
            got = cache(Batch(x[part], torch.zeros(len(part), dtype=torch.long), part))
            torch.testing.assert_close(got, teacher.net(x[part]).detach())
    assert teacher.seen == 20  # each example reached the teacher exactly once


def test_cache_grows_for_larger_indices_and_clear_forgets():
    teacher = CountingTeacher().eval()
    x = torch.randn(10, 5)
    cache = TeacherCache(teacher)
    cache(Batch(x[:4], torch.zeros(4, dtype=torch.long), torch.arange(4)))
    got = cache(Batch(x[2:10], torch.zeros(8, dtype=torch.long), torch.arange(2, 10)))
    torch.testing.assert_close(got, teacher.net(x[2:10]).detach())
    assert teacher.seen == 10
    cache.clear()
    cache(Batch(x[:4], torch.zeros(4, dtype=torch.long), torch.arange(4)))
    assert teacher.seen == 14


def test_distillation_with_and_without_cache_trains_the_same_student(digits):
    torch.manual_seed(0)
    teacher = MLP(64, [32], 10).eval()
    results = []
    for cache in (True, False):
        torch.manual_seed(1)
        student = MLP(64, [16], 10)
        settings = TrainSettings(epochs=3, threads=1, cache_teacher=cache)
        fit_model(
            student,
            digits,
            Objective(hinton_loss(4.0, 0.9)),
            settings,
            teacher=teacher,
            progress=False,
        )
        results.append(torch.cat([p.detach().flatten() for p in student.parameters()]))
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_no_cache_when_the_loss_reads_teacher_features():
    objective = Objective(hinton_loss(4.0, 0.9))
    objective.terms[1].teacher_taps = ("features.0",)
    scheme = OfflineScheme(MLP(64, [16], 10), objective, MLP(64, [32], 10))
    assert scheme.teacher_cache is None
