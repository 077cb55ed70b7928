"""scikit-learn's bundled 8×8 handwritten digits (1,797 images, values 0..16).

The data ships inside scikit-learn, so this source needs no files and no download.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdlab.data.source import RawData, Source

DIGITS_MAX = 16.0  # pixel values are counts of set pixels in 4×4 blocks: 0..16
CLASS_NAMES = [str(d) for d in range(10)]


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Return ``(x, y)``: images as float32 [1797, 1, 8, 8] in [0, 1], labels int64."""
    from sklearn.datasets import load_digits  # deferred: importing sklearn costs ~1 s

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / np.float32(DIGITS_MAX))[:, None]
    return x, bunch.target.astype(np.int64)


def _read(directory: Path | None, strict: bool) -> RawData:
    x, y = load_digits_arrays()
    return RawData(x, y, None, None, CLASS_NAMES)


SOURCES = (Source("digits", _read, None, "bundled with scikit-learn", default_test=500),)
