"""The registry of dataset sources, where their files are looked for, and how splits are drawn.

Splits (see ``load_dataset``):

* test: the official test set where there is one, else a stratified part carved from the data.
  Either way it is drawn with the constant ``SPLIT_SEED``, never with the run's ``seed``, so runs
  with different seeds are scored on the same test images and stay comparable.
* validation: ``val_fraction`` of the training data, stratified, drawn with ``seed``.
* ``train_subset``: a stratified subset of what is left for training, drawn with ``seed``.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdlab.data import cifar, digits, idx, multiview, notmnist, svhn
from kdlab.data.base import ArrayDataset, DataSplits, split_indices
from kdlab.errors import DataError

SPLIT_SEED = 0  # seed of every test split, fixed so all run seeds share one test set
ENV_VAR = "KDLAB_DATA"
# Folders that system packages install datasets into, tried after the user's own folders.
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}
_ALIASES = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100"}


@dataclass
class RawData:
    """What a reader returns: uint8 images (or floats already in [0, 1]) and int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None  # None: no official test split, one is carved from the data
    y_test: np.ndarray | None
    class_names: list[str]


@dataclass(frozen=True)
class Source:
    name: str
    read: Callable[[Path | None, bool], RawData]  # (folder found, strict) → data
    find: Callable[[Path], Path | None] | None  # folder → data folder in it; None: bundled
    how_to_get: str  # "{target}" is replaced with the folder suggested to the user
    default_test: int | float | None = None  # carved test size (int) or fraction (float)


def _idx_source(name: str, class_names: list[str], how: str) -> Source:
    def read(directory: Path | None, strict: bool) -> RawData:
        assert directory is not None
        return RawData(*idx.load_idx_dir(directory), class_names=class_names)

    def find(directory: Path) -> Path | None:
        found = idx.find_idx_file(directory, *idx.TRAIN_IMAGES)
        return directory if found is not None else None

    files = ", ".join(f"{stem}-idx{n}-ubyte.gz" for stem, n in idx.IDX_FILES)
    how = how.format(files=files, target="{target}")
    return Source(name, read, find, how + " (gzip or uncompressed, either name style)")


def _read_digits(directory: Path | None, strict: bool) -> RawData:
    x, y = digits.load_digits_arrays()
    return RawData(x, y, None, None, digits.CLASS_NAMES)


#: Sizes and generator seeds of the bundled multi-view data (fixed: every run sees the same data).
MULTIVIEW_TRAIN, MULTIVIEW_TEST = (2000, 1), (2000, 2)


def _read_multiview(directory: Path | None, strict: bool) -> RawData:
    train, test = (multiview.make_multiview(n, s) for n, s in (MULTIVIEW_TRAIN, MULTIVIEW_TEST))
    return RawData(train.x, train.y, test.x, test.y, multiview.CLASS_NAMES)


def _read_svhn(directory: Path | None, strict: bool) -> RawData:
    assert directory is not None
    return RawData(*svhn.load_svhn_dir(directory), class_names=svhn.CLASS_NAMES)


def _find_svhn(directory: Path) -> Path | None:
    return directory if (directory / svhn.TRAIN_FILE).is_file() else None


def _read_notmnist(directory: Path | None, strict: bool) -> RawData:
    assert directory is not None
    x, y = notmnist.load_notmnist_dir(directory, strict=strict)
    return RawData(x, y, None, None, notmnist.CLASS_NAMES)


def _read_cifar10(directory: Path | None, strict: bool) -> RawData:
    assert directory is not None
    return RawData(*cifar.load_cifar10_dir(directory))


def _read_cifar100(directory: Path | None, strict: bool) -> RawData:
    assert directory is not None
    return RawData(*cifar.load_cifar100_dir(directory))


SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source("digits", _read_digits, None, "bundled with scikit-learn", default_test=500),
        Source("multiview", _read_multiview, None, "generated (seed 001 §9, kdlab.data.multiview)"),
        _idx_source(
            "mnist",
            idx.MNIST_NAMES,
            "download {files} from https://ossci-datasets.s3.amazonaws.com/mnist/ (a mirror of "
            "https://yann.lecun.com/exdb/mnist/) into {target}",
        ),
        _idx_source(
            "fashion-mnist",
            idx.FASHION_NAMES,
            "run `apt-get install dataset-fashion-mnist` (installs the files into "
            "/usr/share/datasets/fashion-mnist/), or download {files} from "
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ into {target}",
        ),
        _idx_source(
            "kmnist",
            idx.KMNIST_NAMES,
            "download {files} from http://codh.rois.ac.jp/kmnist/dataset/kmnist/ into {target}",
        ),
        Source(
            "svhn",
            _read_svhn,
            _find_svhn,
            f"download {svhn.TRAIN_FILE} and {svhn.TEST_FILE} from "
            "http://ufldl.stanford.edu/housenumbers/ into {target}",
        ),
        Source(
            "notmnist",
            _read_notmnist,
            notmnist.find_notmnist_dir,
            "download http://yaroslavvb.com/upload/notMNIST/notMNIST_small.tar.gz and extract it "
            "into {target} (giving {target}/notMNIST_small/A..J/*.png), or put the letter "
            "folders A..J of PNG images directly there",
            default_test=0.1,
        ),
        Source(
            "cifar10",
            _read_cifar10,
            lambda d: cifar.find_cifar_dir(d, cifar.CIFAR10_FOLDER, cifar.CIFAR10_TRAIN[0]),
            "download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it into "
            "{target} (giving {target}/cifar-10-batches-py/data_batch_1..5, test_batch, "
            "batches.meta)",
        ),
        Source(
            "cifar100",
            _read_cifar100,
            lambda d: cifar.find_cifar_dir(d, cifar.CIFAR100_FOLDER, cifar.CIFAR100_TRAIN),
            "download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and extract it "
            "into {target} (giving {target}/cifar-100-python/train, test, meta)",
        ),
    ]
}


def available_sources() -> list[str]:
    """Names ``load_dataset`` accepts (whether or not their files are on this machine)."""
    return list(SOURCES)


def get_source(name: str) -> Source:
    """The source called ``name`` (case and ``_``/``-`` insensitive), or a ValueError."""
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key in SOURCES:
        return SOURCES[key]
    close = difflib.get_close_matches(key, list(SOURCES), n=len(SOURCES), cutoff=0.0)
    raise ValueError(f"unknown dataset {name!r}; valid names (closest first): {', '.join(close)}")


def search_dirs(name: str, root: str | Path | None = None) -> list[tuple[Path | None, str]]:
    """The folders searched for ``name``, in order, each with how to describe it in messages."""
    dirs: list[tuple[Path | None, str]] = []
    if root is not None:
        root = Path(root).expanduser()
        dirs += [(root / name, str(root / name)), (root, str(root))]
    env = os.environ.get(ENV_VAR)
    if env:
        dirs.append((Path(env).expanduser() / name, f"{Path(env) / name} (${ENV_VAR})"))
    else:
        dirs.append((None, f"${ENV_VAR}/{name} (${ENV_VAR} is not set)"))
    home = Path.home() / ".kdlab" / "data" / name
    dirs.append((home, str(home)))
    dirs += [(d, str(d)) for d in SYSTEM_DIRS.get(name, ())]
    return dirs


def locate(source: Source, root: str | Path | None = None) -> Path:
    """The folder holding ``source``'s files, or a DataError listing where it looked."""
    assert source.find is not None
    dirs = search_dirs(source.name, root)
    for directory, _ in dirs:
        if directory is not None and directory.is_dir():
            found = source.find(directory)
            if found is not None:
                return found
    # Suggest the first folder the user controls: root/<name>, else $KDLAB_DATA or ~/.kdlab.
    target = next(str(d) for d, _ in dirs if d is not None)
    looked = "\n".join(f"  {label}" for _, label in dirs)
    raise DataError(
        f"dataset {source.name!r} not found. Looked in:\n{looked}\n"
        f"To get it: {source.how_to_get.format(target=target)}"
    )


def _check_size(arg: str, value: int | None, upper: int | None = None, what: str = "") -> None:
    """``value`` must be None or an integer in [1, upper] (upper unknown before loading)."""
    if value is None:
        return
    allowed = f"[1, {upper}] ({what})" if upper is not None else "[1, number of samples]"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{arg} must be an integer in {allowed}, got {value!r}")
    if value < 1 or (upper is not None and value > upper):
        raise ValueError(f"{arg} must be in {allowed}, got {value}")


def _to_dataset(x: np.ndarray, y: np.ndarray, index: np.ndarray, flatten: bool) -> ArrayDataset:
    # Index the compact uint8 array first so only the kept samples are converted to float32.
    inputs = torch.from_numpy(x[index])
    inputs = inputs.float().div_(255.0) if x.dtype == np.uint8 else inputs.float()
    if flatten:
        inputs = inputs.reshape(len(index), -1)
    return ArrayDataset(inputs, torch.from_numpy(y[index]))


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_size: int | None = None,
    train_subset: int | None = None,
    flatten: bool = False,
    strict: bool = False,
) -> DataSplits:
    """Load a dataset by name and split it into train / validation / test.

    Inputs are float32 in [0, 1] shaped [N, C, H, W] (or [N, C·H·W] with ``flatten``), labels
    int64. Files are looked for in ``root/<name>/``, ``root/``, ``$KDLAB_DATA/<name>/``,
    ``~/.kdlab/data/<name>/`` and, for some sources, system folders (see ``search_dirs``).

    ``test_size`` shrinks the official test set, or sets the size of the carved one (default 500
    for ``digits``, 10% for ``notmnist``); test splits always use ``SPLIT_SEED``. ``seed`` draws
    the validation split (``val_fraction`` of the training data) and ``train_subset`` (that many
    labelled training examples, stratified). ``strict`` makes unreadable images an error instead
    of a skip with a warning (notMNIST only; other readers always raise on damaged files).
    """
    source = get_source(name)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    for arg, value in (("test_size", test_size), ("train_subset", train_subset)):
        _check_size(arg, value)  # cheap checks before reading any file
    directory = locate(source, root) if source.find is not None else None
    raw = source.read(directory, strict)

    num_classes = len(raw.class_names)
    for labels in (raw.y_train, raw.y_test):
        if labels is not None and len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(
                f"{source.name}: labels must lie in 0..{num_classes - 1}, "
                f"found {labels.min()}..{labels.max()}"
            )

    if raw.x_test is None or raw.y_test is None:
        # No official test split: carve one, the same for every seed (SPLIT_SEED).
        x_test, y_test, n = raw.x_train, raw.y_train, len(raw.y_train)
        default = source.default_test
        size = test_size or (max(1, round(default * n)) if isinstance(default, float) else default)
        assert size is not None
        _check_size("test_size", size, n - 1, f"{source.name} has {n} samples, keep one to train")
        test_idx, pool = split_indices(raw.y_train, [size, n - size], SPLIT_SEED)
    else:
        x_test, y_test, n_test = raw.x_test, raw.y_test, len(raw.y_test)
        _check_size("test_size", test_size, n_test, f"the official test set has {n_test} samples")
        if test_size is None or test_size == n_test:
            test_idx = np.arange(n_test)
        else:
            test_idx = split_indices(y_test, [test_size], SPLIT_SEED)[0]
        pool = np.arange(len(raw.y_train))

    n_pool = len(pool)
    n_val = round(val_fraction * n_pool)
    if n_pool - n_val < 1:
        raise ValueError(
            f"val_fraction={val_fraction} leaves no training data out of {n_pool} samples; "
            "use a smaller val_fraction"
        )
    val_rel, train_rel = split_indices(raw.y_train[pool], [n_val, n_pool - n_val], seed)
    val_idx, train_idx = pool[val_rel], pool[train_rel]
    if train_subset is not None:
        _check_size(
            "train_subset", train_subset, len(train_idx),
            f"{len(train_idx)} training samples remain after the validation split",
        )  # fmt: skip
        train_idx = train_idx[split_indices(raw.y_train[train_idx], [train_subset], seed)[0]]

    return DataSplits(
        name=source.name,
        train=_to_dataset(raw.x_train, raw.y_train, train_idx, flatten),
        val=_to_dataset(raw.x_train, raw.y_train, val_idx, flatten),
        test=_to_dataset(x_test, y_test, test_idx, flatten),
        num_classes=num_classes,
        class_names=list(raw.class_names),
    )
