"""Reader for SVHN's cropped-digit MATLAB files (``train_32x32.mat``, ``test_32x32.mat``).

Each file holds ``X`` as uint8 (32, 32, 3, N) — the sample axis last — and ``y`` as (N, 1)
with labels 1..10, where 10 stands for the digit 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdlab.data.source import RawData, Source
from kdlab.errors import DataError

TRAIN_FILE = "train_32x32.mat"
TEST_FILE = "test_32x32.mat"
CLASS_NAMES = [str(d) for d in range(10)]


def read_svhn_mat(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(x, y)``: images as uint8 [N, 3, 32, 32] and labels int64 in 0..9."""
    import scipy.io  # deferred: only SVHN needs scipy's MATLAB reader

    path = Path(path)
    try:
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
    except MemoryError:
        raise
    except Exception as exc:
        # scipy reports a cut file as IndexError, OSError or MatReadError depending on where
        # the cut falls, so every failure to parse is treated as a damaged file.
        raise DataError(
            f"{path}: cannot read this MATLAB file, it is truncated or corrupt "
            f"({type(exc).__name__}: {exc}); delete it and download it again"
        ) from exc
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path}: expected variables 'X' and 'y', found {sorted(mat)}")
    x, y = mat["X"], mat["y"]
    if x.ndim != 4 or x.shape[2] != 3 or x.dtype != np.uint8:
        raise DataError(
            f"{path}: expected X as uint8 of shape (H, W, 3, N), found {x.dtype} {x.shape}"
        )
    if (
        not isinstance(y, np.ndarray)
        or y.dtype.kind not in "iuf"
        or (y.dtype.kind == "f" and not np.array_equal(y, np.round(y)))
    ):
        found = f"{y.dtype}" if isinstance(y, np.ndarray) else type(y).__name__
        raise DataError(f"{path}: expected y to hold integer labels 1..10, found {found} values")
    y = y.reshape(-1).astype(np.int64)
    if len(y) != x.shape[3]:
        raise DataError(f"{path}: X holds {x.shape[3]} images but y holds {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() > 10):
        raise DataError(f"{path}: expected labels 1..10 (10 = digit 0), found {y.min()}..{y.max()}")
    y[y == 10] = 0  # SVHN follows MATLAB's 1-based habit and codes the digit 0 as 10
    # (H, W, C, N) → (N, C, H, W); the copy makes the result contiguous for fast batching.
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y


def load_svhn_dir(directory: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    paths = [directory / TRAIN_FILE, directory / TEST_FILE]
    for path in paths:
        if not path.is_file():
            raise DataError(
                f"{directory}: missing {path.name} (SVHN needs {TRAIN_FILE} and {TEST_FILE})"
            )
    x_train, y_train = read_svhn_mat(paths[0])
    x_test, y_test = read_svhn_mat(paths[1])
    return x_train, y_train, x_test, y_test


def _read(directory: Path | None, strict: bool) -> RawData:
    assert directory is not None
    return RawData(*load_svhn_dir(directory), class_names=CLASS_NAMES)


def _find(directory: Path) -> Path | None:
    return directory if (directory / TRAIN_FILE).is_file() else None


SOURCES = (
    Source(
        "svhn",
        _read,
        _find,
        f"download {TRAIN_FILE} and {TEST_FILE} from "
        "http://ufldl.stanford.edu/housenumbers/ into {target}",
    ),
)
