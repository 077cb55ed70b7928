"""Dataset readers, locations, splits and batching, on small files written in the real formats."""

from __future__ import annotations

import gzip
import pickle
import re
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from kdlab.data import (
    ArrayDataset,
    TensorBatcher,
    available_sources,
    load_dataset,
    source,
)
from kdlab.data import notmnist as notmnist_reader
from kdlab.data.idx import read_idx
from kdlab.errors import DataError

REAL_SYSTEM_DIRS = dict(source.SYSTEM_DIRS)
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _isolated_locations(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """Keep the developer's own ~/.kdlab, $KDLAB_DATA and system datasets out of every test."""
    monkeypatch.delenv("KDLAB_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    monkeypatch.setattr(source, "SYSTEM_DIRS", {})


# ---------------------------------------------------------------- writers of the real formats


def idx_bytes(array: np.ndarray, *, type_code: int = 0x08, ndim: int | None = None) -> bytes:
    ndim = array.ndim if ndim is None else ndim
    header = struct.pack(">HBB", 0, type_code, ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_file(path: Path, payload: bytes, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def mnist_like(n_per_class: int, id_offset: int, rng: np.random.Generator):
    """Random 28×28 images whose first two pixels encode a unique sample id (to trace splits)."""
    y = rng.permutation(np.repeat(np.arange(10), n_per_class)).astype(np.uint8)
    x = rng.integers(0, 256, size=(len(y), 28, 28), dtype=np.uint8)
    ids = np.arange(len(y)) + id_offset
    x[:, 0, 0], x[:, 0, 1] = ids // 256, ids % 256
    return x, y


def write_mnist(folder: Path, *, gz: bool = True, dot_style: bool = False, per_class: int = 20):
    rng = np.random.default_rng(123)
    x_train, y_train = mnist_like(per_class, 0, rng)
    x_test, y_test = mnist_like(5, 1000, rng)
    sep = "." if dot_style else "-"
    for stem, arr, n in [("train-images", x_train, 3), ("train-labels", y_train, 1),
                         ("t10k-images", x_test, 3), ("t10k-labels", y_test, 1)]:  # fmt: skip
        write_file(folder / f"{stem}{sep}idx{n}-ubyte", idx_bytes(arr), gz)
    return x_train, y_train, x_test, y_test


def ids_of(data: ArrayDataset) -> set[int]:
    pixels = torch.round(data.inputs()[:, 0, 0, :2] * 255).long()
    return set((pixels[:, 0] * 256 + pixels[:, 1]).tolist())


def esc(path: Path) -> str:
    """A path as a regular expression that matches it literally (for pytest.raises(match=))."""
    return re.escape(str(path))


def scaled(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).float() / 255


# ---------------------------------------------------------------- digits


def test_digits_values_shapes_and_fixed_test_split() -> None:
    from sklearn.datasets import load_digits

    a = load_dataset("digits", seed=0)
    b = load_dataset("digits", seed=1)
    assert (len(a.train), len(a.val), len(a.test)) == (1167, 130, 500)  # 1797 - 500 = 1297
    assert a.input_shape == (1, 8, 8) and a.train.x.dtype == torch.float32
    assert a.train.y.dtype == torch.int64 and a.class_names == [str(d) for d in range(10)]
    # Pixels are the sklearn counts 0..16 divided by 16, exactly.
    everything = torch.cat([a.train.x, a.val.x, a.test.x]).flatten(1) * 16
    assert torch.equal(everything, everything.round()) and everything.max() == 16
    assert everything.sum().item() == load_digits().images.sum()
    # The test split is fixed for every seed; validation depends on the seed.
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.val.x, b.val.x)
    assert load_dataset("digits", flatten=True, test_size=100).test.x.shape == (100, 64)


# ---------------------------------------------------------------- IDX (MNIST family)


@pytest.mark.parametrize(("gz", "dot_style", "in_subfolder"), [
    (True, False, True), (False, True, False), (False, False, True), (True, True, False),
])  # fmt: skip
def test_idx_formats_and_name_styles(tmp_path: Path, gz: bool, dot_style: bool, in_subfolder: bool):
    folder = tmp_path / "mnist" if in_subfolder else tmp_path
    x_train, y_train, x_test, y_test = write_mnist(folder, gz=gz, dot_style=dot_style)
    s = load_dataset("mnist", root=tmp_path, val_fraction=0.0)
    assert torch.equal(s.train.inputs(), scaled(x_train)[:, None])  # no val split keeps file order
    assert torch.equal(s.test.inputs(), scaled(x_test)[:, None])
    assert s.train.inputs().max() == 1.0 and s.train.inputs().min() == 0.0
    assert s.train.x.dtype == torch.uint8  # stored compact: a quarter of float32's memory
    assert torch.equal(s.train.y, torch.from_numpy(y_train.astype(np.int64)))
    assert torch.equal(s.test.y, torch.from_numpy(y_test.astype(np.int64)))
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10


@pytest.mark.parametrize(("name", "first", "last"), [
    ("mnist", "0", "9"), ("fashion-mnist", "T-shirt/top", "Ankle boot"), ("kmnist", "o", "wo"),
])  # fmt: skip
def test_idx_sources_class_names_and_flatten(tmp_path: Path, name: str, first: str, last: str):
    write_mnist(tmp_path / name)
    s = load_dataset(name.upper().replace("-", "_"), root=tmp_path, flatten=True)
    assert (s.class_names[0], s.class_names[-1], len(s.class_names)) == (first, last, 10)
    assert s.train.x.shape == (180, 784) and s.val.x.shape == (20, 784)


def test_idx_truncated_and_corrupt_files(tmp_path: Path) -> None:
    x, _ = mnist_like(2, 0, np.random.default_rng(0))
    good = idx_bytes(x)
    raw = write_file(tmp_path / "a" / "train-images-idx3-ubyte", good[:-10], gz=False)
    with pytest.raises(
        DataError,
        match=rf"{esc(raw)}.*truncated.*expected {len(good)} bytes, found {len(good) - 10}",
    ):
        read_idx(raw, ndim=3)
    gz_payload = write_file(tmp_path / "b" / "train-images-idx3-ubyte", good[:-784], gz=True)
    with pytest.raises(DataError, match=rf"{esc(gz_payload)}.*truncated"):
        read_idx(gz_payload, ndim=3)
    cut_stream = tmp_path / "c.gz"
    cut_stream.write_bytes(gzip.compress(good)[:200])
    with pytest.raises(DataError, match=rf"{esc(cut_stream)}.*gzip"):
        read_idx(cut_stream, ndim=3)
    extra = write_file(tmp_path / "d", good + b"\0", gz=False)
    with pytest.raises(DataError, match="trailing bytes"):
        read_idx(extra, ndim=3)
    # Wrong magic: an image file where labels are expected, a non-IDX file, a non-ubyte type.
    images = write_file(tmp_path / "g" / "train-labels-idx1-ubyte", good, gz=False)
    with pytest.raises(DataError, match=r"expected 1 dimension.*0x00000801.*found 3.*0x00000803"):
        read_idx(images, ndim=1)
    not_idx = write_file(tmp_path / "e", b"\x1f\x8b\x08\x00" + good[4:], gz=False)
    with pytest.raises(DataError, match=r"not an IDX file.*found 0x1F8B0800"):
        read_idx(not_idx, ndim=3)
    floats = write_file(tmp_path / "f", idx_bytes(x, type_code=0x0D), gz=False)
    with pytest.raises(DataError, match=r"unsigned byte.*found float"):
        read_idx(floats, ndim=3)


def test_idx_image_and_label_counts_must_agree(tmp_path: Path) -> None:
    _, y_train, _, _ = write_mnist(tmp_path / "mnist")
    labels = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(y_train[:-1])))
    with pytest.raises(DataError, match=r"200 images but .*train-labels.* holds 199 labels"):
        load_dataset("mnist", root=tmp_path)


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_system_package(monkeypatch) -> None:
    monkeypatch.setattr(source, "SYSTEM_DIRS", REAL_SYSTEM_DIRS)
    s = load_dataset("fashion-mnist", val_fraction=0.0)  # its speed: benchmarks/bench_data.py
    assert (len(s.train), len(s.test), s.num_classes) == (60000, 10000, 10)
    assert set(s.test.y.tolist()) == set(range(10)) and s.class_names[9] == "Ankle boot"


# ---------------------------------------------------------------- SVHN


def write_svhn(folder: Path, n: int = 30) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).astype(np.uint8)[:, None]  # labels 1..10, 10 = digit 0
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train_32x32.mat", "test_32x32.mat"):
        scipy.io.savemat(folder / name, {"X": x, "y": y})
    return x, y


def test_svhn_layout_and_label_ten(tmp_path: Path) -> None:
    x, y = write_svhn(tmp_path / "svhn")
    s = load_dataset("svhn", root=tmp_path, val_fraction=0.0)
    assert s.train.x.shape == (30, 3, 32, 32)
    # x[n, c, h, w] = X[h, w, c, n]
    assert torch.equal(s.train.inputs(), scaled(x).permute(3, 2, 0, 1))
    assert s.train.inputs()[4, 2, 7, 1] == x[7, 1, 2, 4] / 255
    expected = torch.from_numpy(y[:, 0].astype(np.int64)) % 10
    assert torch.equal(s.train.y, expected) and s.train.y[9] == 0 and s.train.y[0] == 1
    assert s.class_names[0] == "0" and len(s.test) == 30


def test_svhn_truncated_mat(tmp_path: Path) -> None:
    write_svhn(tmp_path / "svhn")
    path = tmp_path / "svhn" / "test_32x32.mat"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=rf"{esc(path)}.*truncated or corrupt"):
        load_dataset("svhn", root=tmp_path)
    (tmp_path / "svhn" / "test_32x32.mat").unlink()
    with pytest.raises(DataError, match=r"missing test_32x32\.mat"):
        load_dataset("svhn", root=tmp_path)


# ---------------------------------------------------------------- notMNIST


def write_notmnist(folder: Path, per_letter: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    images = {}
    for letter in "ABCDEFGHIJ":
        (folder / letter).mkdir(parents=True)
        for i in range(per_letter):
            img = rng.integers(0, 256, size=(28, 28), dtype=np.uint8)
            Image.fromarray(img).save(folder / letter / f"img{i}.png")
            images[f"{letter}{i}"] = img
    return images


def test_notmnist_pixels_labels_resize_and_carved_test(tmp_path: Path) -> None:
    images = write_notmnist(tmp_path / "notmnist" / "notMNIST_small")
    # A 20×20 RGB image is converted to gray and resized; a uniform image stays uniform.
    Image.new("RGB", (20, 20), (77, 77, 77)).save(tmp_path / "notmnist/notMNIST_small/J/z.png")
    x, y = notmnist_reader.load_notmnist_dir(tmp_path / "notmnist" / "notMNIST_small")
    assert x.shape == (41, 1, 28, 28) and x.dtype == np.uint8
    assert np.array_equal(x[0, 0], images["A0"]) and np.array_equal(x[7, 0], images["B3"])
    assert np.all(x[-1] == 77) and y[-1] == 9 and Counter(y.tolist())[0] == 4
    s = load_dataset("notmnist", root=tmp_path, val_fraction=0.0)
    assert (len(s.train), len(s.test)) == (37, 4)  # default test = 10 % of 41
    assert s.class_names == list("ABCDEFGHIJ") and s.test.inputs().max() <= 1.0
    again = load_dataset("notmnist", root=tmp_path, seed=5)
    assert torch.equal(s.test.inputs(), again.test.inputs())


def test_notmnist_unreadable_images(tmp_path: Path) -> None:
    write_notmnist(tmp_path / "notmnist")
    bad1 = tmp_path / "notmnist" / "A" / "bad1.png"
    bad1.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    good = (tmp_path / "notmnist" / "B" / "img0.png").read_bytes()
    bad2 = tmp_path / "notmnist" / "C" / "bad2.png"
    bad2.write_bytes(good[: len(good) // 2])
    with pytest.warns(
        UserWarning,
        match=rf"skipped 2 unreadable image\(s\): {esc(bad1)}, {esc(bad2)}",
    ):
        s = load_dataset("notmnist", root=tmp_path, val_fraction=0.0)
    assert len(s.train) + len(s.test) == 40
    with pytest.raises(DataError, match=rf"{esc(bad1)}: unreadable image"):
        load_dataset("notmnist", root=tmp_path, strict=True)


def test_notmnist_without_readable_images(tmp_path: Path) -> None:
    for letter in "ABCDEFGHIJ":
        (tmp_path / "notmnist" / letter).mkdir(parents=True)
    (tmp_path / "notmnist" / "A" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="no readable PNG images"), pytest.warns(UserWarning):
        load_dataset("notmnist", root=tmp_path)
    (tmp_path / "notmnist" / "J").rmdir()
    with pytest.raises(DataError, match="missing letter folder"):
        load_dataset("notmnist", root=tmp_path)


# ---------------------------------------------------------------- CIFAR


def dump(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar10(folder: Path, n: int = 10) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    datas = []
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        dump(folder / name, {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                             b"filenames": [b"f.png"] * n})  # fmt: skip
        datas.append(data)
    names = [f"class{i}".encode() for i in range(10)]
    dump(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return datas


def test_cifar10_layout_and_meta_names(tmp_path: Path) -> None:
    datas = write_cifar10(tmp_path / "cifar10" / "cifar-10-batches-py")
    s = load_dataset("cifar10", root=tmp_path, val_fraction=0.0)
    assert (len(s.train), len(s.test), s.input_shape) == (50, 10, (3, 32, 32))
    # Row layout: 1024 red, 1024 green, 1024 blue values, each plane row-major.
    assert s.train.inputs()[0, 1, 0, 0] == datas[0][0, 1024] / 255
    assert s.train.inputs()[12, 2, 31, 5] == datas[1][2, 2048 + 31 * 32 + 5] / 255
    assert torch.equal(s.test.inputs().flatten(1), scaled(datas[5]))
    assert s.class_names == [f"class{i}" for i in range(10)]


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    folder = tmp_path / "cifar-100-python"  # directly under root, not root/cifar100
    for name, n in (("train", 200), ("test", 100)):
        dump(folder / name, {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                             b"fine_labels": [i % 100 for i in range(n)],
                             b"coarse_labels": [i % 20 for i in range(n)]})  # fmt: skip
    dump(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    s = load_dataset("cifar100", root=tmp_path, val_fraction=0.5, test_size=50)
    assert (len(s.train), len(s.val), len(s.test), s.num_classes) == (100, 100, 50, 100)
    assert s.class_names[99] == "f99" and set(s.train.y.tolist()) == set(range(100))


def test_cifar_truncated_and_unsafe_pickles(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "cifar10")
    path = tmp_path / "cifar10" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match=rf"{esc(path)}.*truncated or corrupt"):
        load_dataset("cifar10", root=tmp_path)
    path.write_bytes(pickle.dumps({b"data": Path("x"), b"labels": []}))
    with pytest.raises(DataError, match="refusing to load pathlib"):
        load_dataset("cifar10", root=tmp_path)


# ---------------------------------------------------------------- locations and names


def test_missing_dataset_lists_places_and_how_to_get_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("KDLAB_DATA", str(tmp_path / "env"))
    with pytest.raises(DataError) as err:
        load_dataset("mnist", root=tmp_path / "r")
    msg = str(err.value)
    for place in (tmp_path / "r" / "mnist", tmp_path / "r", tmp_path / "env" / "mnist",
                  Path.home() / ".kdlab" / "data" / "mnist"):  # fmt: skip
        assert f"  {place}" in msg
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/" in msg
    assert "t10k-labels-idx1-ubyte.gz" in msg
    monkeypatch.setattr(source, "SYSTEM_DIRS", {"fashion-mnist": (tmp_path / "sys",)})
    with pytest.raises(DataError, match=r"(?s)sys.*apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


def test_env_var_and_home_locations(tmp_path: Path, monkeypatch) -> None:
    write_mnist(tmp_path / "env" / "kmnist", per_class=2)
    monkeypatch.setenv("KDLAB_DATA", str(tmp_path / "env"))
    assert len(load_dataset("kmnist", val_fraction=0.0).train) == 20
    write_svhn(Path.home() / ".kdlab" / "data" / "svhn", n=10)
    assert len(load_dataset("svhn", root=tmp_path / "elsewhere").test) == 10


def test_unknown_source_lists_closest_first() -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'minst'.*closest first\): mnist, ") as e:
        load_dataset("minst")
    assert all(name in str(e.value) for name in available_sources())
    assert available_sources()[:4] == ["digits", "multiview", "multiview-patches", "mnist"]
    assert len(available_sources()) == 13  # and the import paths of your own functions


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\), got 1.0"),
    ({"val_fraction": -0.1}, r"val_fraction must be in \[0, 1\)"),
    ({"train_subset": 0}, r"train_subset must be in \[1, "),
    ({"train_subset": 181}, r"train_subset must be in \[1, 180\] \(180 training samples"),
    ({"test_size": 51}, r"test_size must be in \[1, 50\] \(the official test set has 50"),
    ({"test_size": 2.5}, r"test_size must be an integer"),
])  # fmt: skip
def test_argument_validation(tmp_path: Path, kwargs: dict, message: str) -> None:
    write_mnist(tmp_path / "mnist")
    with pytest.raises(ValueError, match=message):
        load_dataset("mnist", root=tmp_path, **kwargs)


def test_carved_test_size_must_leave_training_data() -> None:
    with pytest.raises(ValueError, match=r"test_size must be in \[1, 1796\]"):
        load_dataset("digits", test_size=1797)


# ---------------------------------------------------------------- splits


def test_splits_deterministic_disjoint_and_stratified(tmp_path: Path) -> None:
    write_mnist(tmp_path / "mnist")  # 200 train (20 a class), 50 test (5 a class)
    a = load_dataset("mnist", root=tmp_path, seed=0, train_subset=60)
    again = load_dataset("mnist", root=tmp_path, seed=0, train_subset=60)
    other = load_dataset("mnist", root=tmp_path, seed=1, train_subset=60)
    assert torch.equal(a.train.x, again.train.x) and torch.equal(a.val.x, again.val.x)
    assert ids_of(a.val) != ids_of(other.val) and ids_of(a.train) != ids_of(other.train)
    train, val, test = ids_of(a.train), ids_of(a.val), ids_of(a.test)
    assert (len(train), len(val), len(test)) == (60, 20, 50)
    assert not (train & val) and not (train & test) and not (val & test)
    assert Counter(a.train.y.tolist()) == dict.fromkeys(range(10), 6)
    assert Counter(a.val.y.tolist()) == dict.fromkeys(range(10), 2)
    full = load_dataset("mnist", root=tmp_path, seed=0)
    assert ids_of(full.train) | ids_of(full.val) == set(range(200))
    small = [load_dataset("mnist", root=tmp_path, seed=s, test_size=20).test for s in (0, 3)]
    assert ids_of(small[0]) == ids_of(small[1])
    assert Counter(small[0].y.tolist()) == dict.fromkeys(range(10), 2)


# ---------------------------------------------------------------- batching


def test_tensor_batcher_epochs_and_drop_last() -> None:
    data = ArrayDataset(torch.arange(23.0)[:, None], torch.arange(23))
    batcher = TensorBatcher(data, 5, seed=7)
    first = list(batcher.epoch(0))
    assert len(batcher) == len(first) == 5 and [len(b) for b in first] == [5, 5, 5, 5, 3]
    order = torch.cat([b.index for b in first])
    assert sorted(order.tolist()) == list(range(23))
    assert all(torch.equal(b.targets, data.y[b.index]) for b in first)
    assert torch.equal(order, torch.cat([b.index for b in batcher.epoch(0)]))
    assert not torch.equal(order, torch.cat([b.index for b in batcher.epoch(1)]))
    dropped = TensorBatcher(data, 5, seed=7, drop_last=True)
    kept = torch.cat([b.index for b in dropped.epoch(2)])
    assert len(dropped) == 4 and len(kept) == 20 and len(set(kept.tolist())) == 20
    plain = TensorBatcher(data, 10, shuffle=False)
    assert torch.equal(torch.cat([b.index for b in plain]), torch.arange(23))
