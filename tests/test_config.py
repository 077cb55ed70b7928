"""Tests of experiment configs (kdlab.config): every bad input gives a ConfigError that names the
problem, where it is, and what would be valid; class-count mismatches fail before any training."""

from __future__ import annotations

import re
import sys
import textwrap
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pytest
import torch
import yaml

from kdlab import checkpoint as ckpt
from kdlab.config import ExperimentConfig, load_config, parse_config
from kdlab.errors import ConfigError
from kdlab.experiment import run_experiment
from kdlab.models import MLP
from kdlab.runs import check_num_classes
from kdlab.store import RunStore


@dataclass(frozen=True)
class Listed:
    """``prefix`` followed by a comma-separated list that includes ``names`` (registries grow)."""

    prefix: str
    names: tuple[str, ...]

    def found_in(self, message: str) -> bool:
        if self.prefix not in message:
            return False
        after = re.split(r"[;\n]", message.split(self.prefix, 1)[1])[0]
        return set(self.names) <= {n.strip() for n in after.split(",")}


def config_error(data) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return str(info.value)


@pytest.mark.parametrize(
    "data,fragments",
    [
        pytest.param(
            {"seed": [0]},
            [
                "at (top level)",
                "unknown key 'seed'",
                "did you mean 'seeds'?",
                Listed(
                    "valid keys: ",
                    ("name", "seeds", "data", "teacher", "student", "distill", "metrics"),
                ),
            ],
            id="top-level-key",
        ),
        pytest.param(
            {"teacher": {"train": {"epoch": 3}}},
            [
                "at teacher.train:",
                "unknown key 'epoch'",
                "did you mean 'epochs'?",
                Listed("valid keys: ", ("epochs", "batch_size", "optimizer", "schedule")),
            ],
            id="nested-key",
        ),
        pytest.param(
            {"student": {"train": {"optimizer": {"momentun": 0.5}}}},
            [
                "at student.train.optimizer:",
                "unknown key 'momentun'",
                "did you mean 'momentum'?",
                Listed(
                    "valid keys: ", ("name", "lr", "weight_decay", "momentum", "nesterov", "betas")
                ),
            ],
            id="deeply-nested-key",
        ),
        pytest.param(
            {"distill": {"loss": [{"type": "ce"}, {"type": "soft_targt"}]}},
            [
                "at distill.loss:",
                "term 1",
                "unknown loss 'soft_targt'",
                "did you mean 'soft_target'",
                Listed("valid losses: ", ("ce", "logit_mse", "soft_ce", "soft_target")),
            ],
            id="loss-type",
        ),
        pytest.param(
            {"distill": {"loss": [{"type": "soft_target", "temp": 3}]}},
            [
                "at distill.loss:",
                "term 0",
                "loss 'soft_target' has no parameter 'temp'",
                Listed(
                    "valid parameters: ",
                    ("weight", "temperature", "divergence", "alpha", "direction"),
                ),
            ],
            id="loss-parameter",
        ),
        pytest.param(
            {"teacher": {"loss": [{"type": "ce", "weight": -0.5}]}},
            ["at teacher.loss:", "weight must be a finite number ≥ 0", "got -0.5"],
            id="negative-weight",
        ),
        pytest.param(
            {"distill": {"loss": [{"type": "soft_target", "temperature": 0}]}},
            ["at distill.loss:", "temperature must be a finite number > 0", "got 0.0"],
            id="zero-temperature",
        ),
        pytest.param(
            {"distill": {"loss": [{"type": "soft_ce", "temperature": -2}]}},
            ["at distill.loss:", "temperature must be a finite number > 0", "got -2.0"],
            id="negative-temperature",
        ),
        pytest.param(
            {"distill": {"loss": []}},
            ["at distill.loss:", "at least one term"],
            id="empty-loss",
        ),
        pytest.param(
            {"teacher": {"model": {"type": "mpl"}}},
            [
                "at teacher.model:",
                "unknown model type 'mpl'",
                "mlp",
                Listed("valid types: ", ("mlp", "cnn")),
                "package.module:ClassName",
            ],
            id="model-type",
        ),
        pytest.param(
            {"student": {"model": {"type": "mlp", "hiden": [16]}}},
            [
                "at student.model:",
                "model 'mlp' has no argument 'hiden'",
                Listed("valid arguments: ", ("in_features", "hidden", "num_classes", "dropout")),
            ],
            id="model-argument",
        ),
        pytest.param(
            {"student": {"model": {"type": "no_such_module_kdlab:Net"}}},
            ["at student.model:", "cannot import model 'no_such_module_kdlab:Net'"],
            id="model-import-path",
        ),
        pytest.param(
            {"data": {"source": "digitz"}},
            [
                "at data.source:",
                "unknown dataset 'digitz'",
                Listed("valid names (closest first): ", ("digits",)),
                "mnist",
                "cifar10",
            ],
            id="data-source",
        ),
        pytest.param(
            {"distill": {"scheme": "onlin"}},
            ["at distill", "unknown scheme 'onlin'", Listed("valid schemes: ", ("offline",))],
            id="scheme",
        ),
        pytest.param(
            {"teacher": None},
            ["scheme 'offline' distills a pre-trained teacher, but teacher is null"],
            id="null-teacher",
        ),
        pytest.param(
            {"seeds": [0, 1, 0]},
            ["at seeds:", "seeds must be distinct", "[0, 1, 0]"],
            id="duplicate-seeds",
        ),
        pytest.param(
            {"teacher": {"train": {"optimizer": {"name": "sgdd"}}}},
            ["at teacher.train.optimizer.name:", "'sgd', 'adam' or 'adamw'"],
            id="optimizer-name",
        ),
        pytest.param(
            {"student": {"train": {"epochs": 0}}},
            ["at student.train.epochs:", "greater than 0"],
            id="zero-epochs",
        ),
    ],
)
def test_bad_config_names_problem_and_valid_options(data: dict, fragments: list[str]) -> None:
    message = config_error(data)
    assert message.startswith("config is invalid:")
    for fragment in fragments:
        if isinstance(fragment, Listed):
            assert fragment.found_in(message), f"{fragment} not in:\n{message}"
        else:
            assert fragment in message, f"{fragment!r} not in:\n{message}"
    assert "Traceback" not in message and "pydantic" not in message.lower()


def test_every_error_is_reported_with_its_own_path() -> None:
    message = config_error({"seeds": [1, 1], "data": {"source": "nope"}, "metrics": {"gamma": 0}})
    for where in ("at seeds:", "at data.source:", "at metrics.gamma:"):
        assert where in message, message
    assert message.count("\n  - at ") == 3


@pytest.mark.parametrize("data,kind", [([1, 2], "list"), (None, "NoneType"), ("x", "str")])
def test_config_must_be_a_mapping(data, kind: str) -> None:
    assert config_error(data) == f"config must be a mapping of keys to values, got {kind}"


def test_load_config_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"config file .*nope\.yaml does not exist"):
        load_config(missing)

    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: x\nseeds: [0, 1\nteacher: {\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml is not valid YAML") as info:
        load_config(bad_yaml)
    assert "line" in str(info.value)  # points at where the YAML breaks

    listing = tmp_path / "list.yaml"
    listing.write_text("- seeds: [0]\n")
    with pytest.raises(ConfigError, match=r"list\.yaml must be a mapping .* got list"):
        load_config(listing)

    typo = tmp_path / "typo.yaml"
    typo.write_text("seed: [0]\n")
    with pytest.raises(ConfigError) as info:
        load_config(typo)
    assert str(info.value).startswith(f"{typo} is invalid:")  # names the file
    assert "did you mean 'seeds'?" in str(info.value)


def test_valid_config_round_trips(tmp_path: Path) -> None:
    text = resources.files("kdlab").joinpath("configs/quickstart.yaml").read_text()
    cfg = parse_config(yaml.safe_load(text))
    assert cfg.teacher.model == {"type": "mlp", "hidden": [256, 256], "dropout": 0.2}
    assert cfg.distill.loss[1]["name"] == "kd"
    assert parse_config(cfg.model_dump()) == cfg
    # via JSON-mode dump and a YAML file, as a stored config would be re-run
    path = tmp_path / "again.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert load_config(path) == cfg
    assert parse_config({}) == ExperimentConfig()  # every key has a default


# -- class counts ----------------------------------------------------------------------------------


def _tiny_train() -> dict:
    return {"epochs": 1, "threads": 1}


def test_check_num_classes_names_both_counts(digits) -> None:
    with pytest.raises(ConfigError) as info:
        check_num_classes(MLP(64, [8], num_classes=5), digits, "teacher")
    msg = str(info.value)
    assert "the teacher outputs (2, 5)" in msg and "digits has 10 classes" in msg
    assert "num_classes to 10" in msg
    check_num_classes(MLP(64, [8], num_classes=10), digits, "teacher")  # no error


def _five_class_teacher(path: Path) -> Path:
    torch.manual_seed(0)
    teacher = MLP(64, [16], num_classes=5)
    ckpt.save_atomic(
        {"format": ckpt.FORMAT, "version": ckpt.VERSION, "models": {"model": teacher.state_dict()}},
        path,
    )
    return path


def test_teacher_checkpoint_with_five_classes_fails_before_training(tmp_path: Path) -> None:
    weights = _five_class_teacher(tmp_path / "teacher5.pt")
    cfg = parse_config(
        {
            "teacher": {
                "model": {"type": "mlp", "hidden": [16], "num_classes": 5},
                "checkpoint": str(weights),
            },
            "student": {"model": {"type": "mlp", "hidden": [8]}, "train": _tiny_train()},
        }
    )
    with RunStore(tmp_path / "store") as store:
        with pytest.raises(ConfigError) as info:
            run_experiment(cfg, store, progress=False)
        assert store.list_runs() == []  # nothing was trained or recorded
    msg = str(info.value)
    assert "teacher outputs (2, 5)" in msg and "digits has 10 classes" in msg


def test_teacher_checkpoint_not_fitting_the_model_spec(tmp_path: Path) -> None:
    weights = _five_class_teacher(tmp_path / "teacher5.pt")
    cfg = parse_config(
        {
            "teacher": {"model": {"type": "mlp", "hidden": [16]}, "checkpoint": str(weights)},
            "student": {"model": {"type": "mlp", "hidden": [8]}, "train": _tiny_train()},
        }
    )
    with RunStore(tmp_path / "store") as store:
        with pytest.raises(ConfigError) as info:
            run_experiment(cfg, store, progress=False)
        assert store.list_runs() == []
    msg = str(info.value)
    assert f"teacher.checkpoint {weights} does not fit teacher.model" in msg
    assert "[5, 16]" in msg and "[10, 16]" in msg  # the checkpoint's and the model's head


@pytest.fixture
def custom_models(tmp_path: Path, monkeypatch) -> str:
    """A module of user models importable as '<name>:Class'; returns the module name."""
    name = f"user_models_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            class ThreeWay(nn.Module):  # ignores num_classes: always 3 logits
                def __init__(self, in_features: int, width: int = 8):
                    super().__init__()
                    self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, width),
                                             nn.ReLU(), nn.Linear(width, 3))

                def forward(self, x):
                    return self.net(x)

            class Fixed100(nn.Module):  # expects 100 input features
                def __init__(self, num_classes: int):
                    super().__init__()
                    self.lin = nn.Linear(100, num_classes)

                def forward(self, x):
                    return self.lin(x.flatten(1))

            class Good(nn.Module):
                def __init__(self, in_features: int, num_classes: int):
                    super().__init__()
                    self.lin = nn.Linear(in_features, num_classes)

                def forward(self, x):
                    return self.lin(x.flatten(1))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_custom_teacher_with_wrong_class_count(tmp_path: Path, custom_models: str) -> None:
    cfg = parse_config(
        {
            "teacher": {
                "model": {"type": f"{custom_models}:ThreeWay", "width": 4},
                "train": _tiny_train(),
            },
            "student": {"model": {"type": "mlp", "hidden": [8]}, "train": _tiny_train()},
        }
    )
    with RunStore(tmp_path / "store") as store:
        with pytest.raises(ConfigError) as info:
            run_experiment(cfg, store, progress=False)
        assert store.list_runs() == []
    msg = str(info.value)
    assert "the teacher outputs (2, 3)" in msg and "digits has 10 classes" in msg


def test_custom_student_with_wrong_class_count(tmp_path: Path, custom_models: str, digits) -> None:
    cfg = parse_config(
        {
            "student": {"model": {"type": f"{custom_models}:ThreeWay"}, "train": _tiny_train()},
        }
    )
    teacher = MLP(64, [8], num_classes=10)  # a given teacher: no teacher training
    with RunStore(tmp_path / "store") as store:
        with pytest.raises(ConfigError, match=r"the student outputs \(2, 3\).*10 classes"):
            run_experiment(cfg, store, progress=False, teachers={0: teacher})
        assert store.list_runs() == []


def test_custom_model_arguments_and_input_shape(tmp_path: Path, custom_models: str, digits) -> None:
    message = config_error({"student": {"model": {"type": f"{custom_models}:Good", "width": 3}}})
    assert "has no argument 'width'; valid arguments: in_features, num_classes" in message

    cfg = parse_config(
        {"student": {"model": {"type": f"{custom_models}:Fixed100"}, "train": _tiny_train()}}
    )
    with pytest.raises(ConfigError, match=r"student cannot process inputs of shape \(1, 8, 8\)"):
        run_experiment(cfg, None, progress=False, teachers={0: MLP(64, [8])})

    # and a custom model that fits trains fine through the same path
    cfg = parse_config(
        {
            "student": {
                "model": {"type": f"{custom_models}:Good"},
                "train": _tiny_train(),
                "baseline": False,
            },
            "distill": {"train": _tiny_train()},
        }
    )
    result = run_experiment(cfg, None, progress=False, teachers={0: MLP(64, [8])})
    (run,) = result.runs
    assert run.role == "distilled" and type(run.model).__name__ == "Good"
    assert 0.0 <= run.metrics["accuracy"] <= 1.0 and "agreement" in run.metrics
