"""Your own data: ``source: folder`` (image folders, decoded once into a cache), ``source: npz``,
``source: package.module:function`` (tests/data_helpers.py), PyTorch Datasets and DataLoaders
through the Python API, and every bad input as one line naming the file or key and the fix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, TensorDataset

import data_helpers  # tests/ is on sys.path
import kdlab
from kdlab.config import parse_config
from kdlab.data import SourceSpec, as_splits, available_sources, folder, load_dataset
from kdlab.data.imagecache import CACHE_DIR
from kdlab.errors import ConfigError, DataError
from kdlab.experiment import run_experiment
from kdlab.models import MLP
from kdlab.settings import TrainSettings
from kdlab.yamlfile import parse_yaml

CLASSES = ("cat", "dog", "emu")  # sorted: class numbers 0, 1, 2


def save(path: Path, value: int, mode: str = "L", size: tuple[int, int] = (8, 8)) -> None:
    """An image of ``size`` (height, width), every pixel ``value`` (RGB: value, 0, 255 - value)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    if mode == "L":
        img = Image.fromarray(np.full((h, w), value, np.uint8), "L")
    else:
        pixels = np.zeros((h, w, 3), np.uint8)
        pixels[..., 0], pixels[..., 2] = value, 255 - value
        img = Image.fromarray(pixels, "RGB")
        img = img.convert(mode) if mode != "RGB" else img
    img.save(path)


def image_folder(root: Path, per_class: tuple[int, int] = (6, 2), mode: str = "L",
                 ext: str = "png") -> Path:  # fmt: skip
    """root/{train,test}/<class>/<i>.<ext>; class c's pixels are 40 + 80·c."""
    for split, n in zip(("train", "test"), per_class, strict=True):
        for c, name in enumerate(CLASSES):
            for i in range(n):
                save(root / split / name / f"{i}.{ext}", 40 + 80 * c, mode)
    return root


# -- folder ----------------------------------------------------------------------------------


def test_folder_of_grayscale_pngs(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "pets")
    data = load_dataset("folder", root=root, val_fraction=0.0)
    assert data.class_names == list(CLASSES) and data.num_classes == 3
    assert data.train.x.dtype == torch.uint8 and data.input_shape == (1, 8, 8)
    assert len(data.train) == 18 and len(data.test) == 6
    # Each image's pixels tell its class: the labels follow the sorted folder names.
    values = data.test.x[:, 0, 0, 0].long()
    assert torch.equal(values, 40 + 80 * data.test.y)
    assert torch.allclose(data.test.inputs()[:, 0, 0, 0], values / 255.0)


def test_folder_of_rgb_jpegs_and_mixed_modes(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "rgb", mode="RGB", ext="jpg")
    data = load_dataset("folder", root=root)
    assert data.input_shape == (3, 8, 8) and data.train.x.dtype == torch.uint8
    red = data.test.x[:, 0, 4, 4].long()
    assert (red - (40 + 80 * data.test.y)).abs().max() <= 3  # JPEG is lossy, a little
    # A folder mixing grayscale, palette and RGBA images: everything becomes RGB.
    mixed = image_folder(tmp_path / "mixed")
    save(mixed / "train" / "cat" / "p.png", 40, "P")
    save(mixed / "train" / "dog" / "a.png", 120, "RGBA")
    data = load_dataset("folder", root=mixed, val_fraction=0.0)
    assert data.input_shape == (3, 8, 8)
    gray = data.test.x[data.test.y == 2][0]  # a grayscale image, repeated in every channel
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert int(gray[0, 0, 0]) == 200


def test_hidden_files_are_skipped(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "pets")
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\x00\x01junk")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    assert len(load_dataset("folder", root=root, val_fraction=0.0).train) == 18


def test_resize_makes_mixed_sizes_one_size(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "pets")
    save(root / "train" / "dog" / "big.png", 120, size=(20, 12))
    data = load_dataset(SourceSpec("folder", resize=(10, 6)), root=root, val_fraction=0.0)
    assert data.input_shape == (1, 10, 6) and len(data.train) == 19
    assert set(data.train.x[data.train.y == 1].unique().tolist()) == {120}  # bilinear, flat


def test_the_cache_is_reused_then_rebuilt_after_a_change(tmp_path, monkeypatch) -> None:
    root = image_folder(tmp_path / "pets")
    decoded: list[Path] = []
    real = folder.decode
    monkeypatch.setattr(folder, "decode", lambda p, r: decoded.append(p) or real(p, r))
    first = load_dataset("folder", root=root)
    assert len(decoded) == 24
    caches = list((root / CACHE_DIR).glob("folder-orig-*.npz"))
    assert len(caches) == 1
    decoded.clear()
    again = load_dataset("folder", root=root)
    assert decoded == []  # read from the cache
    assert torch.equal(first.train.x, again.train.x) and torch.equal(first.test.y, again.test.y)
    # Rewrite one image (new pixels, new mtime): the folder is decoded again.
    changed = root / "test" / "cat" / "0.png"
    save(changed, 7)
    os.utime(changed, ns=(1_000_000_000, 1_000_000_000))
    data = load_dataset("folder", root=root, val_fraction=0.0)
    assert len(decoded) == 24
    assert 7 in data.test.x[:, 0, 0, 0].tolist()
    assert len(list((root / CACHE_DIR).glob("folder-orig-*.npz"))) == 1  # the old one is gone
    assert not list((root / CACHE_DIR).glob("*.tmp"))


def test_an_unwritable_cache_is_a_warning(tmp_path, monkeypatch) -> None:
    root = image_folder(tmp_path / "pets")
    (root / CACHE_DIR).write_text("a file where the cache folder would go")
    with pytest.warns(UserWarning, match="cannot write the decoded-image cache"):
        data = load_dataset("folder", root=root)
    assert len(data.test) == 6


@pytest.mark.parametrize(
    ("damage", "fragments"),
    [
        (lambda r: (r / "test").rename(r / "tests"),
         ["no test/ folder (found: tests/, train/)", "root/train/<class>/"]),
        (lambda r: (r / "train" / "dog" / "notes.txt").write_text("not an image"),
         ["train/dog/notes.txt: not an image Pillow can read", "remove it"]),
        (lambda r: (r / "test" / "dog").rename(r / "test" / "dogs"),
         ["must have the same class folders", "only in train/: dog", "only in test/: dogs"]),
        (lambda r: save(r / "test" / "emu" / "odd.png", 9, size=(9, 8)),
         ["test/emu/odd.png is 9×8 (height×width)", "train/cat/0.png, is 8×8",
          "data.resize: [H, W]"]),
        (lambda r: [p.unlink() for p in (r / "test" / "emu").iterdir()],
         ["test/emu: empty class folder", "remove it from both"]),
        (lambda r: (r / "train" / "loose.png").write_bytes(b""),
         ["train/loose.png: a file directly in train/", "train/<class>/loose.png"]),
    ],
    ids=["no-test-folder", "not-an-image", "class-mismatch", "mixed-sizes", "empty-class",
         "stray-file"],
)  # fmt: skip
def test_a_bad_folder_is_one_line_naming_the_file(tmp_path, damage, fragments) -> None:
    root = image_folder(tmp_path / "root")
    damage(root)
    with pytest.raises(DataError) as info:
        load_dataset("folder", root=root)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_folder_needs_a_root(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"reads your own images from data\.root, which is not"):
        load_dataset("folder")
    with pytest.raises(DataError, match="missing: not found; source 'folder' needs a folder"):
        load_dataset("folder", root=tmp_path / "missing")


# -- npz -------------------------------------------------------------------------------------


def test_npz_keeps_uint8_and_float(tmp_path: Path) -> None:
    d = data_helpers.arrays()
    np.savez(tmp_path / "mine.npz", **{k: v for k, v in d.items() if k != "class_names"},
             class_names=np.array(d["class_names"]))  # fmt: skip
    data = load_dataset("npz", root=tmp_path)  # the folder holding exactly one .npz
    assert data.train.x.dtype == torch.uint8 and data.class_names == ["dark", "grey", "light"]
    floats = {**d, "x_train": d["x_train"] / 255.0, "x_test": d["x_test"] / 255.0}
    del floats["class_names"]
    np.savez(tmp_path / "floats.npz", **floats)
    data = load_dataset("npz", root=tmp_path / "floats.npz", val_fraction=0.0)
    assert data.train.x.dtype == torch.float32 and data.class_names == ["0", "1", "2"]
    assert torch.allclose(data.train.inputs(), data.train.x)  # floats are not scaled again


def test_npz_with_a_validation_split_of_its_own(tmp_path: Path) -> None:
    d = {k: v for k, v in data_helpers.arrays().items() if k != "class_names"}
    x_val, y_val = data_helpers.images(9, 5)
    np.savez(tmp_path / "d.npz", **d, x_val=x_val, y_val=y_val)
    data = load_dataset("npz", root=tmp_path / "d.npz", train_subset=12)
    assert len(data.val) == 9 and torch.equal(data.val.x, torch.from_numpy(x_val))
    assert len(data.train) == 12


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        ({"y_test": None}, ["bad.npz: missing 'y_test' (found: x_train, y_train, x_test, class_",
                            "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"]),
        ({"y_train": np.zeros(30)}, ["y_train must be integer class numbers", "float64",
                                     ".astype(np.int64)"]),
        ({"y_test": np.full(12, 3)}, ["y_test has labels up to 3, but class_names lists 3 classes",
                                      "name every class in class_names"]),
        ({"y_test": np.zeros(12, np.int64)}, ["the training split has class(es) 1 ('grey'), "
                                              "2 ('light') that the test split lacks"]),
        ({"x_test": np.zeros((12, 1, 5, 6), np.uint8)}, ["x_train holds examples of shape "
                                                         "(1, 6, 6)", "x_test of shape (1, 5, 6)"]),
        ({"x_train": np.zeros((30, 1, 6, 6), np.int32)}, ["x_train has dtype int32",
                                                          ".astype(np.uint8)"]),
        ({"extra": np.zeros(3)}, ["unknown array 'extra'", "valid names: x_train"]),
    ],
    ids=["missing-y_test", "float-labels", "label-range", "class-lacking", "shape", "dtype",
         "unknown-key"],
)  # fmt: skip
def test_a_bad_npz_is_one_line_naming_the_key(tmp_path, change, fragments) -> None:
    arrays = {**data_helpers.arrays(), **change}
    arrays = {k: np.asarray(v) for k, v in arrays.items() if v is not None}
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError) as info:
        load_dataset("npz", root=tmp_path / "bad.npz")
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "bad.npz") in message
    for fragment in fragments:
        assert fragment in message, message


def test_npz_files_that_are_not_archives(tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", np.zeros(3))
    (tmp_path / "one.npy").rename(tmp_path / "one.npz")
    with pytest.raises(DataError, match=r"one.npz: not an .npz archive.*np.savez"):
        load_dataset("npz", root=tmp_path / "one.npz")
    np.savez(tmp_path / "two.npz", x=np.zeros(1))
    with pytest.raises(DataError, match=r"exactly one .npz file in the folder \(found 2: one"):
        load_dataset("npz", root=tmp_path)
    d = data_helpers.arrays()
    np.savez(tmp_path / "objects.npz", **{**d, "class_names": np.array([1, "a"], dtype=object)})
    with pytest.raises(DataError, match=r"objects\.npz: holds an array of Python objects"):
        load_dataset("npz", root=tmp_path / "objects.npz")


# -- package.module:function -------------------------------------------------------------


def test_function_returning_a_dict_of_tensors_or_a_tuple() -> None:
    data = load_dataset(SourceSpec("data_helpers:arrays", args={"tensors": True, "n_train": 60}))
    assert data.name == "data_helpers:arrays" and data.class_names == ["dark", "grey", "light"]
    assert data.train.x.dtype == torch.uint8 and len(data.train) + len(data.val) == 60
    tuple_data = load_dataset("data_helpers:as_tuple")
    assert tuple_data.num_classes == 3 and len(tuple_data.test) == 12


def test_function_with_dict_inputs_and_root() -> None:
    data = load_dataset("data_helpers:tokens", seed=1)
    assert set(data.train.x) == {"input_ids", "attention_mask"}
    assert data.train.x["input_ids"].dtype == torch.int64 and len(data.test) == 30
    assert len(data.train) + len(data.val) == 60
    assert torch.equal(data.train.x["input_ids"][:, 0], data.train.y)  # rows stay together
    named = load_dataset("data_helpers:from_root", root="/data/flowers")
    assert named.class_names[0] == "flowers-0"  # data.root reached the function


@pytest.mark.parametrize(
    ("source", "args", "fragments"),
    [
        ("data_helpers:wrong_type", {}, ["data source data_helpers:wrong_type returned str; "
                                         "expected a dict with keys x_train, y_train, x_test, "
                                         "y_test", "or a tuple of those four"]),
        ("data_helpers:three_arrays", {}, ["returned a tuple of 3 items; expected a dict"]),
        ("data_helpers:raises", {}, ["data source data_helpers:raises raised RuntimeError: "
                                     "the data server is down"]),
        ("data_helpers:arrays", {"n_trian": 3}, ["data.args do not fit data source "
                                                 "data_helpers:arrays(n_train", "n_trian"]),
    ],
    ids=["wrong-type", "tuple-of-3", "raises", "bad-args"],
)  # fmt: skip
def test_a_bad_function_source_is_one_line(source, args, fragments) -> None:
    with pytest.raises((DataError, ConfigError)) as info:
        load_dataset(SourceSpec(source, args=args))
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_source_names_and_import_paths() -> None:
    assert {"folder", "npz"} <= set(available_sources())
    with pytest.raises(ValueError, match=r"unknown dataset 'foldr'.*folder.*package.module:func"):
        load_dataset("foldr")
    with pytest.raises(ConfigError, match="cannot import data source 'no_such_mod_kdlab:f'"):
        load_dataset("no_such_mod_kdlab:f")
    with pytest.raises(ConfigError, match="module 'data_helpers' has no 'nope'"):
        load_dataset("data_helpers:nope")
    with pytest.raises(ConfigError, match=r"data\.resize does not apply to source 'npz'"):
        load_dataset(SourceSpec("npz", resize=(8, 8)), root="x.npz")


# -- YAML ------------------------------------------------------------------------------------

EXPERIMENT = """
name: own-folder
seeds: [0]
data: {{source: folder, root: '{root}'}}
teacher:
  model: {{type: mlp, hidden: [32]}}
  train: {{epochs: 2, threads: 1, batch_size: 8}}
student:
  model: {{type: mlp, hidden: [8]}}
  train: {{epochs: 2, threads: 1, batch_size: 8}}
"""


def test_a_yaml_experiment_on_a_folder_runs_end_to_end(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "pets", per_class=(10, 3), mode="RGB")
    cfg = parse_config(parse_yaml(EXPERIMENT.format(root=root), "exp.yaml"))
    result = run_experiment(cfg, None, progress=False)
    assert {r.role for r in result.runs} == {"teacher", "student", "distilled"}
    distilled = result.by_role("distilled")[0]
    assert len(distilled.history) == 2 and 0.0 <= distilled.metrics["accuracy"] <= 1.0
    assert result.teachers[0](torch.zeros(2, 3, 8, 8)).shape == (2, 3)  # 3 classes, RGB


def test_kdlab_validate_reports_a_bad_folder_in_one_line(tmp_path, monkeypatch) -> None:
    from rich.console import Console
    from typer.testing import CliRunner

    from kdlab import cli, terminal

    for module in (cli, terminal):  # Rich wraps at 80 columns off a terminal: one line here
        monkeypatch.setattr(module, "err_console", Console(stderr=True, width=400))
    root = image_folder(tmp_path / "pets")
    (root / "train" / "emu").rename(root / "train" / "ostrich")
    config = tmp_path / "exp.yaml"
    config.write_text(EXPERIMENT.format(root=root))
    result = CliRunner().invoke(cli.app, ["validate", str(config)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "only in train/: ostrich; only in test/: emu" in result.stderr


def test_yaml_resize_reaches_the_reader(tmp_path: Path) -> None:
    from kdlab.preflight import load_data

    root = image_folder(tmp_path / "pets")
    save(root / "train" / "dog" / "big.png", 120, size=(20, 12))
    text = EXPERIMENT.format(root=root).replace("root: ", "resize: [10, 6], root: ")
    assert load_data(parse_config(parse_yaml(text, "exp.yaml")), 0).input_shape == (1, 10, 6)


def test_data_config_keys_for_own_sources() -> None:
    # Unset, the new keys stay out of the dump: older configs keep their fingerprint (--resume).
    assert not {"resize", "args"} & set(parse_config({}).model_dump(mode="json")["data"])
    cfg = parse_config({"data": {"source": "folder", "root": "pets", "resize": [32, 24]}})
    assert cfg.data.spec() == SourceSpec("folder", resize=(32, 24))
    cfg = parse_config({"data": {"source": "data_helpers:arrays", "args": {"n_train": 9}}})
    assert cfg.data.spec().args == {"n_train": 9} and cfg.data.source == "data_helpers:arrays"
    for data, fragment in [
        ({"source": "npz", "resize": [8, 8]}, "data.resize does not apply to source 'npz'"),
        ({"source": "folder", "args": {"a": 1}}, "data.args does not apply to source 'folder'"),
        ({"source": "folder", "resize": [0, 8]}, "at data.resize.0"),
        ({"source": "no_such_mod_kdlab:load"}, "cannot import data source"),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_config({"data": data})
        assert fragment in str(info.value), str(info.value)


# -- PyTorch datasets through the Python API ---------------------------------------------


class Pairs(Dataset):
    """A map-style dataset of (uint8 image tensor, int label), with torchvision's ``classes``."""

    classes: ClassVar[list[str]] = ["dark", "grey", "light"]

    def __init__(self, n: int, seed: int) -> None:
        self.x, self.y = data_helpers.images(n, seed)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.x[i]), int(self.y[i])


class Tokens(Dataset):
    """(dict of keyword inputs, label) pairs."""

    def __init__(self) -> None:
        d = data_helpers.tokens()
        self.x, self.y = d["x_train"], d["y_train"]

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {k: torch.from_numpy(v[i]) for k, v in self.x.items()}, torch.tensor(self.y[i])


def test_a_dataset_becomes_splits_in_memory() -> None:
    data = as_splits(Pairs(60, 0), seed=3)
    assert data.class_names == Pairs.classes and data.train.x.dtype == torch.uint8
    assert (len(data.train), len(data.val), len(data.test)) == (49, 5, 6)  # 10 % test carved
    same_test = as_splits(Pairs(60, 0), seed=4).test
    assert torch.equal(data.test.x, same_test.x)  # the test split is the same for every seed
    given = as_splits((Pairs(30, 0), Pairs(9, 1), Pairs(12, 2)))
    assert (len(given.train), len(given.val), len(given.test)) == (30, 9, 12)
    tokens = as_splits({"train": Tokens(), "test": Tokens()})
    assert tokens.train.x["attention_mask"].dtype == torch.int64
    batched = as_splits({"train": DataLoader(Tokens(), batch_size=16), "test": Tokens()})
    assert torch.equal(batched.train.x["input_ids"], tokens.train.x["input_ids"])


class Pictures(Dataset):
    """(PIL image, label) pairs, as torchvision's datasets give them without a transform."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return Image.fromarray(np.full((5, 4), 20 * i, np.uint8), "L"), i % 3


def test_pil_images_become_uint8_channels_first() -> None:
    data = as_splits((Pictures(), Pictures()), val_fraction=0.0)
    assert data.train.x.dtype == torch.uint8 and data.input_shape == (1, 5, 4)
    assert sorted(data.test.x[:, 0, 0, 0].tolist()) == [20 * i for i in range(12)]


def test_train_and_distill_take_a_dataset_and_a_dataloader() -> None:
    settings = TrainSettings(epochs=2, batch_size=16, threads=1)
    loader = DataLoader(Pairs(60, 0), batch_size=7, shuffle=True)
    teacher = kdlab.train(MLP(36, [16], 3), loader, settings=settings).model
    result = kdlab.distill(teacher, MLP(36, [8], 3), Pairs(60, 0), settings=settings)
    assert len(result.history) == 2 and "agreement" in result.metrics
    # The loader gives its dataset in index order: the same splits as the dataset itself.
    assert torch.equal(as_splits(loader).train.x, as_splits(Pairs(60, 0)).train.x)
    words = kdlab.train(data_helpers.BagOfTokens(), (Tokens(), Tokens()), settings=settings)
    assert 0.0 <= words.metrics["accuracy"] <= 1.0


def test_bad_datasets_are_clear_errors() -> None:
    x, y = data_helpers.images(30, 0)
    with pytest.raises(DataError, match=r"the test split has class\(es\) 2 \('2'\) that the"):
        as_splits((TensorDataset(torch.from_numpy(x), torch.from_numpy(y) % 2),
                   TensorDataset(torch.from_numpy(x), torch.from_numpy(y))))  # fmt: skip
    with pytest.raises(DataError, match=r"TensorDataset\)\[0\] is a tuple; kdlab reads datasets "
                                        r"of \(x, y\) pairs"):  # fmt: skip
        as_splits(TensorDataset(torch.from_numpy(x)))
    with pytest.raises(DataError, match="labels must be integer class numbers"):
        as_splits(TensorDataset(torch.from_numpy(x), torch.from_numpy(y).float()))
    with pytest.raises(DataError, match="kdlab takes a DataSplits, a map-style"):
        kdlab.train(MLP(36, [8], 3), [[1, 2]] * 2, epochs=1)
