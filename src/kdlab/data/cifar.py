"""Reader for the Python versions of CIFAR-10 and CIFAR-100.

Each batch file is a pickled dict with bytes keys: ``b'data'`` (uint8 N×3072, each row the red,
green then blue 32×32 planes) and ``b'labels'`` (CIFAR-10) or ``b'fine_labels'`` (CIFAR-100).
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from kdlab.data.source import RawData, Source
from kdlab.errors import DataError, quote

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_TEST = "test_batch"
CIFAR10_META = "batches.meta"
CIFAR10_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip

CIFAR100_FOLDER = "cifar-100-python"
CIFAR100_TRAIN = "train"
CIFAR100_TEST = "test"
CIFAR100_META = "meta"

_reconstruct = np.zeros(1).__reduce_ex__(2)[0]
_frombuffer = np.zeros(1).__reduce_ex__(5)[0]
# Pickle can run arbitrary code, so only the globals a CIFAR batch needs are allowed; both the
# NumPy 1 (numpy.core) and NumPy 2 (numpy._core) spellings appear in copies in the wild.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR batch only holds arrays and lists"
            ) from None


def read_pickle(path: str | Path) -> dict[bytes, Any]:
    """Unpickle one CIFAR file into a dict with bytes keys; damage raises ``DataError``."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            # encoding="bytes" because the files were written by Python 2 (str keys → bytes).
            obj = _SafeUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise DataError(
            f"{path}: cannot unpickle this CIFAR file, it is truncated or corrupt "
            f"({type(exc).__name__}: {exc}); delete it and download it again"
        ) from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    # Copies re-pickled under Python 3 may use str keys; accept both spellings.
    return {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}


def read_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(x, y)`` of one batch: images uint8 [N, 3, 32, 32], labels int64."""
    batch = read_pickle(path)
    if b"data" not in batch or label_key not in batch:
        found = sorted(batch)
        raise DataError(f"{path}: expected keys b'data' and {label_key!r}, found {found}")
    data = _integers(path, b"data", batch[b"data"], "pixel values 0..255")
    labels = _integers(path, label_key, batch[label_key], "class numbers").reshape(-1)
    if data.size and (data.min() < 0 or data.max() > 255):
        raise DataError(
            f"{path}: b'data' must hold pixel values 0..255, found {data.min()}..{data.max()}"
        )
    data = data.astype(np.uint8, copy=False)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: expected data of shape (N, 3072), found {data.shape}")
    if len(data) != len(labels):
        raise DataError(f"{path}: data holds {len(data)} images but labels hold {len(labels)}")
    return data.reshape(-1, 3, 32, 32), labels


def _integers(path: Path, key: bytes, value: Any, what: str) -> np.ndarray:
    """``value`` as an integer array, or a DataError naming the file and the key."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged lists and the like
        raise DataError(
            f"{path}: {key!r} must be an array of {what}, it cannot be one ({exc})"
        ) from exc
    if array.dtype.kind not in "iu" or array.ndim == 0:
        found = f"{type(value).__name__} of dtype {array.dtype}"
        raise DataError(
            f"{path}: {key!r} must be an array of {what} (integers), found {found}; the file "
            "is not a CIFAR batch as published: download it again"
        )
    return array.astype(np.int64, copy=False)


def _names(path: Path, key: bytes) -> list[str] | None:
    if not path.is_file():
        return None
    meta = read_pickle(path)
    if key not in meta:
        raise DataError(f"{path}: expected key {key!r}, found {sorted(meta)}")
    names = meta[key]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (str, bytes)) for n in names):
        raise DataError(f"{path}: {key!r} must be a list of class names, found {quote(names)}")
    try:
        return [n.decode() if isinstance(n, bytes) else n for n in names]
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: {key!r} holds a class name that is not UTF-8 ({exc})") from exc


def find_cifar_dir(directory: Path, folder: str, first_file: str) -> Path | None:
    """The folder holding the batches: the archive's folder inside ``directory``, or itself."""
    for candidate in (directory / folder, directory):
        if (candidate / first_file).is_file():
            return candidate
    return None


def _require(directory: Path, names: list[str]) -> None:
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        raise DataError(f"{directory}: missing CIFAR file(s) {', '.join(missing)}")


def load_cifar10_dir(
    directory: Path,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Return ``(x_train, y_train, x_test, y_test, class_names)`` of CIFAR-10."""
    _require(directory, [*CIFAR10_TRAIN, CIFAR10_TEST])
    parts = [read_batch(directory / name, b"labels") for name in CIFAR10_TRAIN]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = read_batch(directory / CIFAR10_TEST, b"labels")
    names = _names(directory / CIFAR10_META, b"label_names") or list(CIFAR10_NAMES)
    return x_train, y_train, x_test, y_test, names


def load_cifar100_dir(
    directory: Path,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Return ``(x_train, y_train, x_test, y_test, class_names)`` of CIFAR-100 (fine labels)."""
    _require(directory, [CIFAR100_TRAIN, CIFAR100_TEST])
    x_train, y_train = read_batch(directory / CIFAR100_TRAIN, b"fine_labels")
    x_test, y_test = read_batch(directory / CIFAR100_TEST, b"fine_labels")
    # Without the meta file the 100 names are unknown; fall back to the label numbers.
    names = _names(directory / CIFAR100_META, b"fine_label_names") or [str(i) for i in range(100)]
    return x_train, y_train, x_test, y_test, names


def _read_cifar10(directory: Path | None, strict: bool) -> RawData:
    assert directory is not None
    return RawData(*load_cifar10_dir(directory))


def _read_cifar100(directory: Path | None, strict: bool) -> RawData:
    assert directory is not None
    return RawData(*load_cifar100_dir(directory))


SOURCES = (
    Source(
        "cifar10",
        _read_cifar10,
        lambda d: find_cifar_dir(d, CIFAR10_FOLDER, CIFAR10_TRAIN[0]),
        "download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it into "
        "{target} (giving {target}/cifar-10-batches-py/data_batch_1..5, test_batch, "
        "batches.meta)",
    ),
    Source(
        "cifar100",
        _read_cifar100,
        lambda d: find_cifar_dir(d, CIFAR100_FOLDER, CIFAR100_TRAIN),
        "download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and extract it "
        "into {target} (giving {target}/cifar-100-python/train, test, meta)",
    ),
)
