"""Your own arrays, memory-mapped: ``source: npy``, ``root`` a folder with ``x_train.npy,
y_train.npy, x_test.npy, y_test.npy`` (optionally ``x_val.npy, y_val.npy`` and a
``class_names.txt``, one name per line).

The inputs are opened memory-mapped, not read: with ``data.stream`` (or above
``data.memory_budget_gb``) they stay on disk and each batch is read when it is needed
(:mod:`kdlab.data.stream`). Written with ``np.save(folder / "x_train.npy", x_train)`` etc.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdlab.data.arrays import OPTIONAL, REQUIRED, raw_from_parts
from kdlab.data.source import RawData, Source, SourceSpec
from kdlab.errors import ConfigError, DataError

FIX = "save each array with np.save(folder / 'x_train.npy', x_train), and so on"


def find_npy(directory: Path) -> Path | None:
    """``directory`` when it holds ``x_train.npy`` (for ``kdlab datasets``), else None."""
    return directory if (directory / "x_train.npy").is_file() else None


def read_npy(root: Path | None, spec: SourceSpec) -> RawData:
    """The arrays of the folder ``root``: inputs memory-mapped, labels read, all checked."""
    if root is None:
        raise ConfigError(
            "source 'npy' reads your own arrays from data.root, which is not set: set it (or "
            "--data-root; root= in Python) to a folder with x_train.npy, y_train.npy, "
            "x_test.npy and y_test.npy"
        )
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; set data.root to the folder of your .npy files")
    parts: dict[str, object] = {}
    for key in (*REQUIRED, *OPTIONAL):
        path = root / f"{key}.npy"
        if key == "class_names" or not path.is_file():
            continue
        try:  # inputs memory-mapped (they may not fit in memory), labels read whole
            parts[key] = np.load(path, mmap_mode="r" if key.startswith("x_") else None,
                                 allow_pickle=False)  # fmt: skip
        except (ValueError, OSError) as err:
            raise DataError(f"{path}: not a readable .npy array ({err}); {FIX}") from err
    names = root / "class_names.txt"
    if names.is_file():
        parts["class_names"] = np.array(names.read_text().split("\n")).astype(str)
        parts["class_names"] = parts["class_names"][parts["class_names"] != ""]
    return raw_from_parts(parts, str(root), FIX)


SOURCES = (
    Source(
        "npy",
        lambda d, strict: read_npy(d, SourceSpec("npy")),
        find_npy,
        "set data.root to a folder with x_train.npy, y_train.npy, x_test.npy and y_test.npy, "
        "e.g. {target}",
        read_own=read_npy,
    ),
)
