"""Distillation into tensor-network students: a small MPS on digits learns from a teacher through
the ordinary ``kdlab.distill`` path with every kind of response loss, and the MPS examples are
valid experiments that run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import kdlab
from kdlab.api import evaluate
from kdlab.config import load_config
from kdlab.data import DataSplits
from kdlab.experiment import run_experiment
from kdlab.models import MLP, build_model
from kdlab.models.mps import MPS
from kdlab.settings import TrainSettings

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SETTINGS = TrainSettings(epochs=8, batch_size=32, optimizer={"name": "adam", "lr": 0.03}, threads=1)


@pytest.fixture(scope="module")
def teacher(digits: DataSplits) -> torch.nn.Module:
    torch.manual_seed(0)
    settings = TrainSettings(epochs=15, optimizer={"lr": 0.003}, threads=1)
    result = kdlab.train(MLP(64, [64], 10), digits, settings=settings, progress=False)
    assert result.metrics["accuracy"] > 0.9
    return result.model.eval()


LOSSES = {
    "soft_target_kl": [
        {"type": "ce", "weight": 0.1},
        {"type": "soft_target", "weight": 0.9, "temperature": 4.0},
    ],
    "soft_target_renyi": [
        {"type": "soft_target", "temperature": 2.0, "divergence": "renyi", "alpha": 0.5},
    ],
    "logit_mse": [{"type": "logit_mse"}],
}


@pytest.mark.parametrize("loss", LOSSES.values(), ids=LOSSES.keys())
def test_mps_student_learns_the_teacher(digits: DataSplits, teacher, loss) -> None:
    """Pure distillation losses (no labels in Rényi and logit_mse): agreement can only come from
    the teacher. A fresh MPS agrees with it on about a tenth of the test images."""
    torch.manual_seed(0)
    student = MPS(64, 10, bond_dim=8)
    before = evaluate(student, digits.test, teacher)["agreement"]
    result = kdlab.distill(teacher, student, digits, loss=loss, settings=SETTINGS, progress=False)
    losses = [row["loss"] for row in result.history]
    assert len(losses) == SETTINGS.epochs
    assert all(math.isfinite(v) for row in result.history for v in row.values())
    assert losses[-1] < 0.5 * losses[0]
    assert before < 0.3
    assert result.metrics["agreement"] > 0.9
    assert result.metrics["accuracy"] > 0.8
    assert all(torch.isfinite(p).all() for p in student.parameters())


def test_stacked_mps_student_learns_the_teacher(digits: DataSplits, teacher) -> None:
    torch.manual_seed(0)
    student = build_model({"type": "stacked_mps", "hidden": 16, "bond_dim": 4}, (1, 8, 8), 10)
    result = kdlab.distill(
        teacher, student, digits, loss=LOSSES["soft_target_kl"], settings=SETTINGS, progress=False
    )
    assert result.metrics["agreement"] > 0.8


@pytest.mark.parametrize("name", ["digits_mps.yaml", "fashion_mnist_mps.yaml"])
def test_mps_examples_are_valid(name: str) -> None:
    cfg = load_config(EXAMPLES / name)
    assert cfg.student.model["type"] == "mps"
    assert cfg.teacher is not None and cfg.teacher.model["type"] == "cnn"


def test_digits_mps_example_runs(tmp_path: Path) -> None:
    """The quick-path example end to end, with fewer epochs: teacher, MPS alone, MPS distilled."""
    cfg = load_config(EXAMPLES / "digits_mps.yaml")
    cfg.seeds = [0]
    cfg.teacher.train.epochs = 5
    cfg.student.train.epochs = 3
    result = run_experiment(cfg, progress=False)
    roles = [run.role for run in result.runs]
    assert roles == ["teacher", "student", "distilled"]
    for run in result.runs:
        assert run.metrics["accuracy"] > 0.5
