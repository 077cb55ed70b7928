"""Bad inputs of every kind get one clear error that names the problem (and the file, where there
is one) — never a traceback, never a hang. Through the CLI: one ``error:`` line on stderr and
exit status 2."""

from __future__ import annotations

import pickle
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from kdlab import cli, terminal
from kdlab.config import load_config, parse_config
from kdlab.data import load_dataset
from kdlab.data import source as data_source
from kdlab.data.cifar import read_batch
from kdlab.data.idx import read_idx
from kdlab.data.notmnist import load_notmnist_dir
from kdlab.errors import ConfigError, DataError, quote, shorten
from kdlab.losses import build_term
from kdlab.models import MLP, SmallCNN, build_model

runner = CliRunner()
# Pathological inputs (10 MB names, alias bombs) must be answered at once; these bounds are hang
# guards far above normal times (well under a second) so that a loaded machine does not fail them.
HANG_GUARD_S = 10.0


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (cli, terminal):
        monkeypatch.setattr(module, "console", Console(width=400))
        monkeypatch.setattr(module, "err_console", Console(stderr=True, width=400))


@pytest.fixture(autouse=True)
def _isolated_locations(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    monkeypatch.delenv("KDLAB_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    monkeypatch.setattr(data_source, "SYSTEM_DIRS", {})


def validate(path: Path) -> tuple[int, str, float]:
    """``kdlab validate path``: (exit code, stderr, seconds)."""
    start = time.perf_counter()
    result = runner.invoke(cli.app, ["validate", str(path)])
    seconds = time.perf_counter() - start
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stderr, seconds


def config_error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return str(info.value)


# -- 1. former tracebacks --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind,shown", [({"x": 1}, "{'x': 1} (dict)"), ([1, "a"], "[1, 'a'] (list)"), (7, "7 (int)")]
)
def test_model_type_that_is_not_a_name(tmp_path: Path, kind, shown: str) -> None:
    message = config_error({"student": {"model": {"type": kind}}})
    assert "at student.model: a model's type must be a name, got " + shown in message
    assert "valid types: mlp, cnn" in message and "package.module:ClassName" in message
    path = tmp_path / "bad.yaml"
    path.write_text(f"student:\n  model: {{type: {kind!r}}}\n".replace("'", ""))
    code, err, _ = validate(path)
    assert code == 2 and err.startswith("error: ") and "a model's type must be a name" in err


def test_loss_type_that_is_not_a_name(tmp_path: Path) -> None:
    message = config_error({"distill": {"loss": [{"type": {"x": 1}}]}})
    assert "at distill.loss: term 0: unknown loss {'x': 1}; valid losses: " in message
    assert "soft_target" in message
    with pytest.raises(ConfigError, match=r"a loss term needs a type, e\.g\. \{type: ce\}"):
        build_term({"weight": 1})
    path = tmp_path / "bad.yaml"
    path.write_text("distill:\n  loss: [{type: {x: 1}}]\n")
    code, err, _ = validate(path)
    assert code == 2 and "unknown loss {'x': 1}" in err


def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


@pytest.mark.parametrize(
    "batch,problem",
    [
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": "ab"}, "b'labels' must be an array"),
        ({b"data": ["a", "b"], b"labels": [0, 1]}, "b'data' must be an array of pixel values"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": ["cat", "dog"]}, "class numbers"),
        ({b"data": np.full((2, 3072), 300), b"labels": [0, 1]}, "pixel values 0..255"),
        ({b"data": [[1, 2], [3]], b"labels": [0, 1]}, "b'data' must be an array"),
    ],
)
def test_cifar_batch_of_the_wrong_types_names_the_file(tmp_path: Path, batch, problem) -> None:
    path = tmp_path / "data_batch_1"
    _pickle(path, batch)
    with pytest.raises(DataError) as info:
        read_batch(path, b"labels")
    assert str(info.value).startswith(f"{path}: ") and problem in str(info.value)


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` × ``height`` pixels (no image data follows)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
    chunk += struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 0) + b"IEND" + b"\xaeB`\x82"


def _notmnist(folder: Path) -> Path:
    for letter in "ABCDEFGHIJ":
        (folder / letter).mkdir(parents=True)
        Image.fromarray(np.full((28, 28), 9, np.uint8)).save(folder / letter / "ok.png")
    bomb = folder / "A" / "bomb.png"
    bomb.write_bytes(_png_header(20000, 20000))
    return bomb


@pytest.mark.parametrize("side", [20000, 9000])  # a Pillow bomb error, and a mere warning
def test_notmnist_image_claiming_a_huge_size_is_skipped(tmp_path: Path, side: int) -> None:
    bomb = _notmnist(tmp_path)
    bomb.write_bytes(_png_header(side, side))
    with pytest.warns(UserWarning, match=rf"skipped 1 unreadable image\(s\): {bomb}"):
        x, y = load_notmnist_dir(tmp_path)
    assert x.shape == (10, 1, 28, 28) and sorted(y.tolist()) == list(range(10))
    with pytest.raises(DataError) as info:
        load_notmnist_dir(tmp_path, strict=True)
    assert str(info.value).startswith(f"{bomb}: unreadable image")


# -- 2. former hangs -------------------------------------------------------------------------------


def test_quote_and_shorten_cut_long_values() -> None:
    assert quote("abc") == "'abc'" and quote([1, 2]) == "[1, 2]"
    long = quote("x" * 10_000_000)
    assert long.endswith("… (10000000 characters)") and len(long) < 120
    bomb: list = ["lol"]
    for _ in range(9):
        bomb = [bomb] * 9  # 9**9 leaves, shared: quoting must not walk them all
    start = time.perf_counter()
    assert len(quote(bomb)) <= 81 and time.perf_counter() - start < 5.0
    assert shorten("y" * 100, 10) == "yyyyyyyyyy… (100 characters)"


def test_ten_megabyte_name_answers_at_once(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("name: " + "x" * 10_000_000 + "\n")
    code, err, seconds = validate(path)
    assert code == 2 and seconds < HANG_GUARD_S
    assert f"config file {path} is 9.5 MiB, over the 2 MiB a config may have" in err
    # below the file limit, the name's own limit answers, quoting only the start of the name
    path.write_text("name: " + "x" * 1_000_000 + "\n")
    code, err, seconds = validate(path)
    assert code == 2 and seconds < HANG_GUARD_S and len(err) < 500
    assert "at name: name must be 1 to 200 characters" in err
    assert "… (1000000 characters); use a short name like digits-kd" in err
    message = config_error({"name": "n" * 10_000_000})
    assert "(10000000 characters)" in message and len(message) < 400


def test_yaml_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * 9) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join([*lines, "name: *a8"]) + "\n")
    assert path.stat().st_size < 600
    code, err, seconds = validate(path)
    assert code == 2 and seconds < HANG_GUARD_S
    assert f"{path} is refused: its YAML expands to over 20000 values" in err
    assert "alias" in err


@pytest.mark.parametrize(
    "text,problem",
    [
        ("a: &a [*a]\n", "holds a recursive alias"),
        ("name: " + "[" * 500 + "]" * 500 + "\n", "over 20000 values or 64 levels"),
        ("seeds: [" + ", ".join(map(str, range(30_000))) + "]\n", "over 20000 values"),
    ],
    ids=["recursive", "deep", "many"],
)
def test_other_oversized_yaml_is_refused(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=f"is refused: its YAML .*{problem}"):
        load_config(path)
    assert time.perf_counter() - start < 10.0


def test_markup_in_a_value_is_printed_as_text(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: '[/x] [bold]'\nseeds: [0, 0]\n")
    code, err, _ = validate(path)
    assert code == 2 and "seeds must be distinct" in err


def test_many_problems_are_listed_up_to_a_limit() -> None:
    message = config_error({"seeds": ["x"] * 500})
    assert message.count("\n  - at seeds.") == 20 and "… and 480 more problem(s)" in message


# -- 3. accepted too late --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argument,problem",
    [
        ({"hidden": {}}, "hidden must be a list of layer sizes (positive integers) like [64, 32]"),
        ({"hidden": ""}, "hidden must be a list of layer sizes"),
        ({"hidden": None}, "hidden must be a list of layer sizes"),
        ({"hidden": 16}, "hidden must be a list of layer sizes"),
        ({"hidden": [float("inf")]}, "hidden must hold positive integers like [64, 32]"),
        ({"hidden": [-float("inf")]}, "but it holds -inf"),
        ({"hidden": [16, 0]}, "but it holds 0"),
        ({"hidden": [True]}, "but it holds True"),
        ({"dropout": {"x": 1}}, "dropout must be a number in [0, 1), e.g. 0.2, got {'x': 1}"),
        ({"dropout": 1.0}, "dropout must be a number in [0, 1)"),
        ({"activation": ["relu"]}, "activation must be one of relu, gelu, tanh, silu"),
        ({"hidden": [10**5, 10**5]}, "parameters, over the 268,435,456 (1 GiB of weights)"),
    ],
)
def test_mlp_arguments_fail_validation(tmp_path: Path, argument: dict, problem: str) -> None:
    message = config_error({"student": {"model": {"type": "mlp", **argument}}})
    assert "at student.model: model 'mlp': " in message and problem in message, message
    with pytest.raises(ConfigError, match=r"must|parameters"):
        build_model({"type": "mlp", **argument}, (1, 8, 8), 10)


def test_empty_hidden_list_is_a_linear_model() -> None:
    model = MLP(64, [], num_classes=10)
    assert len(model.features) == 0 and model.head.in_features == 64


@pytest.mark.parametrize(
    "argument,problem",
    [
        ({"channels": []}, "channels must list at least one convolution width"),
        ({"channels": "32"}, "channels must be a list of layer sizes"),
        ({"hidden": [128]}, "hidden must be a positive integer, got [128]"),
        ({"dropout": -0.1}, "dropout must be a number in [0, 1)"),
    ],
)
def test_cnn_arguments_fail_validation(argument: dict, problem: str) -> None:
    message = config_error({"student": {"model": {"type": "cnn", **argument}}})
    assert "at student.model: model 'cnn': " in message and problem in message, message


def test_cnn_on_flattened_data_names_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"SmallCNN needs image inputs .*\(data.flatten: false\)"):
        SmallCNN(input_shape=(64,))
    with pytest.raises(ConfigError, match=r"model 'cnn': SmallCNN needs image inputs"):
        build_model({"type": "cnn"}, (64,), 10)


def test_missing_teacher_checkpoint_fails_validate(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    missing = tmp_path / "nowhere" / "teacher.pt"
    path.write_text(f"teacher:\n  checkpoint: {missing}\n")
    code, err, _ = validate(path)
    assert code == 2 and f"teacher.checkpoint {missing} does not exist" in err


@pytest.mark.parametrize("data", [{"seeds": [-1]}, {"seeds": [2**32]}])
def test_seeds_out_of_range(data: dict) -> None:
    assert "at seeds.0: Input should be" in config_error(data)


def test_non_finite_settings_are_refused() -> None:
    message = config_error({"student": {"train": {"optimizer": {"lr": float("inf")}}}})
    assert "at student.train.optimizer.lr: must be a finite number, not NaN or infinity" in message


# -- 4. errors that name their file ----------------------------------------------------------------


def test_idx_header_with_overflowing_dimensions_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    big = 0xFFFFFFFF
    path.write_bytes(struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">3I", big, big, big) + b"\0")
    with pytest.raises(DataError) as info:
        read_idx(path, ndim=3)
    message = str(info.value)
    assert message.startswith(f"{path}: corrupt (impossible dimensions) IDX file")
    assert f"shape ({big}, {big}, {big})" in message


def test_idx_labels_of_the_wrong_dtype_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(struct.pack(">HBB", 0, 0x0D, 1) + struct.pack(">I", 2) + b"\0" * 8)
    with pytest.raises(DataError, match=rf"^{path}: expected unsigned byte data.*float data"):
        read_idx(path, ndim=1)


def test_cifar_with_string_labels_names_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        labels = ["frog", "ship"] if name == "data_batch_3" else [0, 1]
        _pickle(folder / name, {b"data": np.zeros((2, 3072), np.uint8), b"labels": labels})
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", root=tmp_path)
    assert str(info.value).startswith(f"{folder / 'data_batch_3'}: b'labels' must be an array")
    assert "class numbers (integers)" in str(info.value)


def test_non_utf8_yaml_names_the_file_and_the_encoding(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("seeds: [0]\nname: café\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"config file {path} is not UTF-8 text: byte 0xe9 on line 2 cannot be decoded "
        "(invalid continuation byte); save it as UTF-8"
    )
    code, err, _ = validate(path)
    assert code == 2 and "is not UTF-8 text" in err


def test_impossible_date_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: 2024-13-01\n")
    with pytest.raises(ConfigError, match=r"c\.yaml holds a value YAML cannot read \(month"):
        load_config(path)


@pytest.mark.parametrize(
    ("term", "problem"),
    [
        ({"type": "dkd", "warmup": 50}, "warmup is 50 epochs but training runs only 2"),
        ({"type": "crd", "student": "features.0", "teacher": "features.0", "negatives": 5000},
         "negatives is 5000, but the training split has only"),
    ],
)  # fmt: skip
def test_a_term_that_cannot_serve_the_run_fails_before_training(
    tmp_path: Path, term: dict, problem: str
) -> None:
    """DKD's warm-up longer than training, CRD's negatives outnumbering the split: caught by
    `kdlab validate` (preflight), not after the teacher has trained."""
    raw = {
        "data": {"source": "digits"},
        "teacher": {"model": {"type": "mlp", "hidden": [8]}, "train": {"epochs": 1}},
        "student": {"model": {"type": "mlp", "hidden": [4]}, "train": {"epochs": 2}},
        "distill": {"loss": [{"type": "ce"}, term]},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    code, err, _ = validate(path)
    assert code == 2 and problem in err and len(err.strip().splitlines()) == 1
