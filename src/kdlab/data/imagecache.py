"""The decoded-image cache of a ``folder`` source: decode once, load in a fraction of a second.

Decoding thousands of PNG/JPEG files with Pillow takes seconds to minutes; the decoded uint8
arrays are kept in ``<root>/.kdlab-cache/folder-<size>-<key>.npz``, where the key hashes every
image's path, size in bytes and modification time (and the resize): adding, removing, renaming
or rewriting any image gives another key, so the folder is decoded again. The file is written
atomically (temporary file, then rename): a crash leaves the old cache or none, never half of
one; several processes (DDP ranks) may write it at once. A cache that cannot be written (a
read-only folder) is a warning, not an error: the images are then decoded at every load.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from kdlab.data.source import RawData

CACHE_DIR = ".kdlab-cache"
#: Bump when what is cached changes, so old caches are not read.
FORMAT = 1
_KEYS = ("x_train", "y_train", "x_test", "y_test")


def cache_path(root: Path, files: Sequence[Path], resize: tuple[int, int] | None) -> Path:
    """Where the cache of these image files (decoded with ``resize``) is kept."""
    digest = hashlib.sha256(f"kdlab folder cache {FORMAT} {resize}\n".encode())
    for path in files:
        stat = path.stat()
        rel = path.relative_to(root).as_posix()
        digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    size = "orig" if resize is None else f"{resize[0]}x{resize[1]}"
    return root / CACHE_DIR / f"folder-{size}-{digest.hexdigest()[:24]}.npz"


def load_cache(path: Path) -> RawData | None:
    """The cached data, or None when there is none or it cannot be read (it is rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in (*_KEYS, "class_names")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    names = [str(n) for n in arrays.pop("class_names")]
    return RawData(*(arrays[k] for k in _KEYS), class_names=names)


def save_cache(path: Path, raw: RawData) -> None:
    """Write ``raw`` to ``path`` atomically, then remove the caches it replaces."""
    try:
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        warnings.warn(_unwritable(path, exc), stacklevel=3)
        return
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                x_train=raw.x_train,
                y_train=raw.y_train,
                x_test=raw.x_test,
                y_test=raw.y_test,
                class_names=np.asarray(raw.class_names, dtype=str),
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        warnings.warn(_unwritable(path, exc), stacklevel=3)
        return
    # Caches of earlier versions of the folder (same resize) are of no further use.
    prefix = path.name.rsplit("-", 1)[0]
    for old in path.parent.glob(f"{prefix}-*.npz"):
        if old != path:
            with contextlib.suppress(OSError):
                old.unlink()


def _unwritable(path: Path, exc: OSError) -> str:
    return (
        f"cannot write the decoded-image cache {path} ({exc}); the images will be decoded "
        "again at the next load: make the data folder writable to keep it"
    )


def cached(
    root: Path, files: Sequence[Path], resize: tuple[int, int] | None, build: Callable[[], RawData]
) -> RawData:
    """The cached decode of ``files`` under ``root``, or ``build()`` written to the cache."""
    path = cache_path(root, files, resize)
    raw = load_cache(path)
    if (
        raw is not None
        and raw.y_test is not None
        and len(raw.y_train) + len(raw.y_test) != len(files)
    ):
        raw = None  # a damaged cache: decode again
    if raw is None:
        raw = build()
        save_cache(path, raw)
    return raw
