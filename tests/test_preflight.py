"""Tests of kdlab.preflight: an experiment is checked against its data in seconds, before anything
trains, and each error names the config field at fault."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from kdlab import checkpoint as ckpt
from kdlab import cli
from kdlab.config import parse_config
from kdlab.engine import Engine
from kdlab.errors import ConfigError
from kdlab.models import MLP
from kdlab.preflight import preflight

TINY = {"epochs": 1, "threads": 1}


@pytest.fixture(autouse=True)
def _no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Preflight never trains: any call of the engine fails the test."""

    def fit(*args, **kwargs):
        raise AssertionError("preflight trained a model")

    monkeypatch.setattr(Engine, "fit", fit)


def error(data: dict) -> str:
    cfg = parse_config(data)
    with pytest.raises(ConfigError) as info:
        preflight(cfg)
    return str(info.value)


def _weights(path: Path, model: torch.nn.Module) -> Path:
    ckpt.save_atomic(
        {"format": ckpt.FORMAT, "version": ckpt.VERSION, "models": {"model": model.state_dict()}},
        path,
    )
    return path


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"distill": {"scheme": "mutual", "options": {"peers": ["student", {"type": "cnn"}]}}},
        {"distill": {"scheme": "assistant", "options": {"assistants": [{"hidden": [32]}]}}},
        {"distill": {"scheme": "adversarial", "options": {"mode": "wgan"}}},
        {"distill": {"scheme": "born_again", "options": {"generations": 2}}},
        {"teacher": {"ensemble": 3, "model": {"type": "mlp", "hidden": [16]}}},
        {"student": {"model": {"type": "cnn", "channels": [4]}}},
        {"student": {"model": {"type": "mps", "bond_dim": 2}}},
        {"distill": {"stages": [
            {"loss": [{"type": "hint", "student": "features.0", "teacher": "features.1"}],
             "trainable": ["features.0"]},
            {"loss": [{"type": "ce"}, {"type": "soft_target"}]},
        ]}, "teacher": {"model": {"type": "mlp", "hidden": [32, 16]}}},
    ],
    ids=["default", "mutual", "assistant", "adversarial", "born_again", "ensemble", "cnn", "mps",
         "stages"],
)  # fmt: skip
def test_valid_configs_pass_in_seconds(data: dict) -> None:
    cfg = parse_config(data)
    state = torch.random.get_rng_state()
    start = time.perf_counter()
    preflight(cfg)
    assert time.perf_counter() - start < 30.0  # a hang guard, not a speed goal
    assert torch.equal(torch.random.get_rng_state(), state)  # the global stream is untouched


def test_bad_student_is_reported_before_the_teacher_trains(tmp_path: Path) -> None:
    message = error({"student": {"model": {"type": "mlp", "hidden": [8], "num_classes": 5}}})
    assert message.startswith("student.model: the student outputs (2, 5) for a batch of 2")
    assert "digits has 10 classes" in message
    message = error({"data": {"flatten": True}, "student": {"model": {"type": "cnn"}}})
    assert message.startswith("student.model: model 'cnn': SmallCNN needs image inputs")


def test_missing_checkpoint_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "x" / "y.pt"
    message = error({"teacher": {"checkpoint": str(missing)}})
    assert message.startswith(f"teacher.checkpoint {missing} does not exist")
    paths = [str(_weights(tmp_path / "a.pt", MLP(64, [8]))), str(missing)]
    message = error({"teacher": {"model": {"type": "mlp", "hidden": [8]}, "checkpoints": paths}})
    assert message.startswith(f"teacher.checkpoints[1] {missing} does not exist")


def test_checkpoint_that_does_not_fit_its_model(tmp_path: Path) -> None:
    path = _weights(tmp_path / "t.pt", MLP(64, [16]))
    message = error(
        {"teacher": {"model": {"type": "mlp", "hidden": [32]}, "checkpoint": str(path)}}
    )
    assert message.startswith(f"teacher.checkpoint {path} does not fit teacher.model ")
    not_weights = tmp_path / "notes.pt"
    not_weights.write_text("hello")
    assert error({"teacher": {"checkpoint": str(not_weights)}}).startswith("teacher.checkpoint: ")
    good = _weights(tmp_path / "good.pt", MLP(64, [16]))
    preflight(parse_config({"teacher": {"model": {"hidden": [16]}, "checkpoint": str(good)}}))


def test_unknown_tap_path_is_named() -> None:
    hint = {"type": "hint", "student": "features.9", "teacher": "features.0"}
    message = error({"distill": {"loss": [hint]}})
    assert message.startswith("distill.loss: the student (MLP) has no module 'features.9'")
    assert "features.0" in message  # the model's paths are listed
    hint = {"type": "hint", "student": "features.0", "teacher": "head.x"}
    assert error({"distill": {"loss": [hint]}}).startswith(
        "distill.loss: the teacher (MLP) has no module 'head.x'"
    )
    stage = {"loss": [{"type": "ce"}], "trainable": ["nope"]}
    assert error({"distill": {"stages": [stage]}}).startswith(
        "distill.stages[0].trainable: the student (MLP) has no module 'nope'"
    )


def test_scheme_models_are_built_and_named() -> None:
    peers = {"scheme": "mutual", "options": {"peers": [{"type": "mlp", "num_classes": 3}]}}
    assert error({"distill": peers}).startswith("distill.options.peers[0]: the peer2 outputs")
    chain = {"scheme": "assistant", "options": {"assistants": [{"type": "cnn"}]}}
    cfg = {"data": {"flatten": True}, "student": {"model": {"type": "mlp"}}, "distill": chain}
    assert error(cfg).startswith("distill.options.assistants[0]: model 'cnn'")


def test_teacher_loss_that_needs_a_teacher() -> None:
    message = error({"teacher": {"loss": [{"type": "soft_target"}]}})
    assert message.startswith("teacher.loss: the teacher trains on labels")


def test_batches_too_small_for_a_relation_loss() -> None:
    loss = [{"type": "rkd_angle", "student": "features.0", "teacher": "features.0"}]
    message = error({"distill": {"loss": loss}, "student": {"train": {"batch_size": 2}}})
    assert message.startswith("distill.train: loss terms 'rkd_angle' compare samples")


def test_data_sizes_that_do_not_fit() -> None:
    assert error({"data": {"test_size": 100000}}).startswith("data: test_size must be in [1, ")
    message = error({"student": {"train_subset": 100000}})
    assert message.startswith("student.train_subset is 100000, but digits has only")


def test_validate_runs_the_preflight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "err_console", Console(stderr=True, width=400))
    path = tmp_path / "c.yaml"
    path.write_text("student:\n  model: {type: mlp, num_classes: 4}\n")
    result = CliRunner().invoke(cli.app, ["validate", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.startswith("error: student.model: the student outputs (2, 4)")
