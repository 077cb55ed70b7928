"""Runs that learned nothing without a NaN (kdlab.health): warnings, and errors with strict."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from kdlab.config import parse_config
from kdlab.experiment import run_experiment
from kdlab.health import (
    TrainingWarning,
    UnhealthyRunError,
    check_history,
    check_teacher,
    loss_growth,
)
from kdlab.store import RunStore


def rows(*losses: float, key: str = "loss") -> list[dict[str, float]]:
    return [{"epoch": i + 1, key: v} for i, v in enumerate(losses)]


def test_loss_growth_finds_a_diverged_loss_and_only_that() -> None:
    assert loss_growth(rows(2.3, 1.1, 0.6)) is None  # a loss that falls
    assert loss_growth(rows(2.3, 40.0, 2.0)) is None  # a spike below 100×
    assert loss_growth(rows(2.3, 2.4e3, 1e9)) == ("loss", 2.3, 1e9)  # the peak counts
    assert loss_growth(rows(0.5, 60.0, key="peer2.loss")) == ("peer2.loss", 0.5, 60.0)
    assert loss_growth(rows(2.3, float("nan"), 3.0)) is None  # NaN is the engine's guard's job
    assert loss_growth([]) is None and loss_growth(rows(1.0)) is None
    assert loss_growth(rows(1.0, 500.0, key="ce")) is None  # terms are not the total loss


def test_a_diverged_run_warns_and_strict_stops() -> None:
    with pytest.warns(TrainingWarning, match=r"'teacher s0' grew from 2\.3 .* \(1000×\)"):
        check_history(rows(2.3, 2300.0), "teacher s0", strict=False)
    with pytest.raises(UnhealthyRunError, match="strict: true"):
        check_history(rows(2.3, 2300.0), "teacher s0", strict=True)


def test_a_teacher_at_chance_warns_and_strict_stops() -> None:
    labels = torch.tensor([0] * 30 + [1] * 10 + [2] * 10)  # most common class: 60 %
    always_zero = torch.zeros(50, 3)
    always_zero[:, 0] = 1.0
    with pytest.warns(TrainingWarning, match=r"60\.0% validation accuracy, chance level"):
        check_teacher(always_zero, labels, "teacher s0", strict=False)
    with pytest.raises(UnhealthyRunError, match="chance level"):
        check_teacher(always_zero, labels, "teacher s0", strict=True)
    perfect = torch.nn.functional.one_hot(labels, 3).float()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to report: no warning, no error
        check_teacher(perfect, labels, "teacher s0", strict=True)


def experiment(strict: bool) -> dict:
    tiny = {"epochs": 2, "batch_size": 64, "threads": 1}
    return {
        "name": "lr-1e8", "strict": strict, "seeds": [0],
        "data": {"source": "digits", "test_size": 200},
        "teacher": {"model": {"type": "mlp", "hidden": [64]},
                    "train": {**tiny, "epochs": 5, "optimizer": {"name": "adam", "lr": 1e8}}},
        "student": {"model": {"type": "mlp", "hidden": [8]}, "train": tiny},
    }  # fmt: skip


def test_a_teacher_at_lr_1e8_is_reported_and_strict_stops_before_any_student(
    tmp_path: Path,
) -> None:
    """Adam at lr 1e8: no NaN, a useless teacher — a warning, or with strict an error."""
    with RunStore(tmp_path / "warn") as store, pytest.warns(TrainingWarning) as caught:
        result = run_experiment(parse_config(experiment(strict=False)), store, progress=False)
    assert any("chance level" in str(w.message) or "grew from" in str(w.message) for w in caught)
    assert [r.role for r in result.runs] == ["teacher", "student", "distilled"]  # it went on
    with RunStore(tmp_path / "strict") as store:
        with pytest.raises(UnhealthyRunError, match="strict: true"):
            run_experiment(parse_config(experiment(strict=True)), store, progress=False)
        assert {r.role for r in store.list_runs()} == {"teacher"}  # no student was trained
