"""Reader for the IDX format of MNIST, Fashion-MNIST and KMNIST.

An IDX file is a 4-byte magic number ``00 00 <type> <ndim>``, ``ndim`` big-endian uint32
dimensions, then the data in row-major order. Files may be gzip-compressed or raw, and come with
either name style (``train-images-idx3-ubyte`` or ``train-images.idx3-ubyte``).
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from kdlab.data.source import RawData, Source
from kdlab.errors import DataError

# Type codes from the IDX specification; kdlab only decodes unsigned bytes (all MNIST-like sets).
_TYPE_NAMES = {
    0x08: "unsigned byte",
    0x09: "signed byte",
    0x0B: "short",
    0x0C: "int",
    0x0D: "float",
    0x0E: "double",
}
UBYTE = 0x08

# (stem, ndim) of the four files of an MNIST-like dataset.
TRAIN_IMAGES = ("train-images", 3)
TRAIN_LABELS = ("train-labels", 1)
TEST_IMAGES = ("t10k-images", 3)
TEST_LABELS = ("t10k-labels", 1)
IDX_FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

MNIST_NAMES = [str(d) for d in range(10)]
FASHION_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
KMNIST_NAMES = ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]  # romanised hiragana


def idx_file_names(stem: str, ndim: int) -> list[str]:
    """Every accepted file name for one IDX file, in the order they are tried."""
    bases = [f"{stem}-idx{ndim}-ubyte", f"{stem}.idx{ndim}-ubyte"]
    return [name for base in bases for name in (f"{base}.gz", base)]


def find_idx_file(directory: Path, stem: str, ndim: int) -> Path | None:
    for name in idx_file_names(stem, ndim):
        path = directory / name
        if path.is_file():
            return path
    return None


def _read_bytes(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as exc:
        # A cut download usually ends mid-stream, which gzip reports as EOFError.
        raise DataError(
            f"{path}: not a valid gzip file or truncated ({exc}); delete it and download it again"
        ) from exc


def read_idx(path: str | Path, *, ndim: int) -> np.ndarray:
    """Decode one unsigned-byte IDX file with ``ndim`` dimensions into a uint8 array.

    Raises ``DataError`` naming the file when the magic number, the type, the number of
    dimensions or the byte count disagree with what the header promises.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(
            f"{path}: truncated IDX file: expected at least a 4-byte magic number, "
            f"found {len(data)} bytes"
        )
    zero, dtype, found_ndim = struct.unpack(">HBB", data[:4])
    magic = int.from_bytes(data[:4], "big")
    expected_magic = (UBYTE << 8) | ndim
    if zero != 0 or dtype not in _TYPE_NAMES:
        raise DataError(
            f"{path}: not an IDX file: expected magic number 0x{expected_magic:08X}, "
            f"found 0x{magic:08X}"
        )
    if dtype != UBYTE:
        raise DataError(
            f"{path}: expected unsigned byte data (type 0x08, magic 0x{expected_magic:08X}), "
            f"found {_TYPE_NAMES[dtype]} data (type 0x{dtype:02X})"
        )
    if found_ndim != ndim:
        raise DataError(
            f"{path}: expected {ndim} dimension(s) (magic 0x{expected_magic:08X}), "
            f"found {found_ndim} (magic 0x{magic:08X}); is this the right file?"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"{path}: truncated IDX file: expected a {header}-byte header, found {len(data)} bytes"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + math.prod(dims)  # exact: NumPy's int64 product would overflow
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "corrupt (trailing bytes)"
        if expected > 2**40:  # no MNIST-like file holds a terabyte: the header is damaged
            what = "corrupt (impossible dimensions)"
        raise DataError(
            f"{path}: {what} IDX file: header declares shape {tuple(dims)}, so expected "
            f"{expected} bytes, found {len(data)}; delete it and download it again"
        )
    # frombuffer decodes the whole file at once; no per-sample Python work.
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def load_idx_dir(directory: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load the four IDX files of an MNIST-like dataset from ``directory``.

    Returns ``(x_train, y_train, x_test, y_test)`` with images as uint8 [N, 1, H, W].
    """
    paths = {}
    for stem, ndim in IDX_FILES:
        path = find_idx_file(directory, stem, ndim)
        if path is None:
            names = " or ".join(idx_file_names(stem, ndim))
            raise DataError(f"{directory}: missing {stem} file; expected one of {names}")
        paths[stem] = path
    arrays = []
    for (img_stem, _), (lbl_stem, _) in ((TRAIN_IMAGES, TRAIN_LABELS), (TEST_IMAGES, TEST_LABELS)):
        images = read_idx(paths[img_stem], ndim=3)
        labels = read_idx(paths[lbl_stem], ndim=1)
        if len(images) != len(labels):
            raise DataError(
                f"image and label counts disagree: {paths[img_stem]} holds {len(images)} images "
                f"but {paths[lbl_stem]} holds {len(labels)} labels"
            )
        arrays += [images[:, None], labels.astype(np.int64)]
    x_train, y_train, x_test, y_test = arrays
    return x_train, y_train, x_test, y_test


def _idx_source(name: str, class_names: list[str], how: str) -> Source:
    def read(directory: Path | None, strict: bool) -> RawData:
        assert directory is not None
        return RawData(*load_idx_dir(directory), class_names=class_names)

    def find(directory: Path) -> Path | None:
        found = find_idx_file(directory, *TRAIN_IMAGES)
        return directory if found is not None else None

    files = ", ".join(f"{stem}-idx{n}-ubyte.gz" for stem, n in IDX_FILES)
    how = how.format(files=files, target="{target}")
    return Source(name, read, find, how + " (gzip or uncompressed, either name style)")


SOURCES = (
    _idx_source(
        "mnist",
        MNIST_NAMES,
        "download {files} from https://ossci-datasets.s3.amazonaws.com/mnist/ (a mirror of "
        "https://yann.lecun.com/exdb/mnist/) into {target}",
    ),
    _idx_source(
        "fashion-mnist",
        FASHION_NAMES,
        "run `apt-get install dataset-fashion-mnist` (installs the files into "
        "/usr/share/datasets/fashion-mnist/), or download {files} from "
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ into {target}",
    ),
    _idx_source(
        "kmnist",
        KMNIST_NAMES,
        "download {files} from http://codh.rois.ac.jp/kmnist/dataset/kmnist/ into {target}",
    ),
)
