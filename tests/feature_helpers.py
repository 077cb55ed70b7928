"""Shared helpers of the feature- and relation-loss tests (imported by those test modules)."""

from __future__ import annotations

import torch

from kdlab.data.base import ArrayDataset, DataSplits
from kdlab.models import SmallCNN
from kdlab.types import Batch, ModelOutput


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def outputs(s: torch.Tensor, t: torch.Tensor, sp: str = "s", tp: str = "t"):
    """(student output, teacher output, batch) with features ``s`` at ``sp`` and ``t`` at ``tp``."""
    b = s.shape[0]
    return (
        ModelOutput(torch.zeros(b, 3, dtype=s.dtype), {sp: s}),
        ModelOutput(torch.zeros(b, 3, dtype=t.dtype), {tp: t}),
        Batch(torch.zeros(b, 1), torch.zeros(b, dtype=torch.long)),
    )


def value(term, s: torch.Tensor, t: torch.Tensor) -> float:
    """The term's value on features (s, t) in float64, after building its adapter."""
    so, to, batch = outputs(s, t)
    term.prepare(so, to)
    term.double()
    return float(term(so, to, batch).detach())


def assert_grad_only_to_student(term, s: torch.Tensor, t: torch.Tensor) -> None:
    s = s.clone().requires_grad_(True)
    t = t.clone().requires_grad_(True)  # a teacher feature that *could* take a gradient
    so, to, batch = outputs(s, t)
    term.prepare(so, to)
    term.double()
    term(so, to, batch).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0
    for p in term.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


def toy_cnn_pair(n: int = 32) -> tuple[DataSplits, torch.nn.Module, torch.nn.Module]:
    """Random 8×8 images in 3 classes, a 6-channel CNN teacher and a 3-channel CNN student."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)
    data = DataSplits("toy", *(ArrayDataset(x, y),) * 3, 3)
    torch.manual_seed(0)
    teacher = SmallCNN(1, 3, channels=(6,), hidden=8, input_shape=(1, 8, 8)).eval()
    student = SmallCNN(1, 3, channels=(3,), hidden=8, input_shape=(1, 8, 8))
    return data, teacher, student
