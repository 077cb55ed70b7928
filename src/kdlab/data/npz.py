"""Reader of your own arrays: ``source: npz``, ``root`` an .npz file (or a folder holding one)
with the arrays ``x_train, y_train, x_test, y_test`` and optionally ``x_val, y_val`` (a
validation split of your own) and ``class_names``. uint8 images stay uint8, floats are used as
they are; see :mod:`kdlab.data.arrays` for what each array may be.

Written with ``np.savez("mine.npz", x_train=..., y_train=..., x_test=..., y_test=...)``. The file
is read without pickle: object arrays are refused, so a file cannot run code.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from kdlab.data.arrays import raw_from_parts
from kdlab.data.source import RawData, Source, SourceSpec
from kdlab.errors import ConfigError, DataError

FIX = "save all four: np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"


def _npz_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.npz") if p.is_file() and p.name[0] != ".")


def find_npz(directory: Path) -> Path | None:
    """The one .npz file in ``directory`` (for ``kdlab datasets``), else None."""
    files = _npz_files(directory)
    return files[0] if len(files) == 1 else None


def npz_path(root: Path | None) -> Path:
    """``root`` itself when it is a file, else the one .npz file in the folder ``root``."""
    if root is None:
        raise ConfigError(
            "source 'npz' reads your own arrays from data.root, which is not set: set it "
            "(or --data-root; root= in Python) to an .npz file with x_train, y_train, x_test, "
            "y_test"
        )
    if root.is_file():
        return root
    if not root.is_dir():
        raise DataError(f"{root}: not found; set data.root to your .npz file")
    files = _npz_files(root)
    if len(files) != 1:
        found = f"{len(files)}: {', '.join(p.name for p in files[:5])}" if files else "none"
        raise DataError(
            f"{root}: source 'npz' needs exactly one .npz file in the folder (found {found}); "
            "set data.root to the file itself"
        )
    return files[0]


def read_npz(root: Path | None, spec: SourceSpec) -> RawData:
    """The arrays of the .npz file at (or in) ``root``, checked."""
    path = npz_path(root)
    try:
        is_zip = zipfile.is_zipfile(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from exc
    if not is_zip:  # np.load would try it as a pickle or a single .npy array
        raise DataError(f"{path}: not an .npz archive (a zip of .npy arrays); {FIX}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            parts = {key: archive[key] for key in archive.files}
    except ValueError as exc:  # object arrays need pickle, which is refused
        raise DataError(
            f"{path}: holds an array of Python objects ({exc}); kdlab reads .npz files without "
            "pickle: save numeric arrays (and class_names as strings)"
        ) from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"{path}: not a readable .npz file ({type(exc).__name__}: {exc}); {FIX}"
        ) from exc
    return raw_from_parts(parts, str(path), FIX)


SOURCES = (
    Source(
        "npz",
        lambda d, strict: read_npz(d, SourceSpec("npz")),
        find_npz,
        "set data.root to your .npz file (np.savez(path, x_train=..., y_train=..., x_test=..., "
        "y_test=...)), e.g. {target}/mine.npz",
        read_own=read_npz,
    ),
)
