"""What a dataset source declares, and where its files are looked for.

Kept apart from the registry (``kdlab.data.sources``) so that every reader module can declare
its own sources next to its reader without importing the registry that lists it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdlab.errors import DataError

ENV_VAR = "KDLAB_DATA"
# Folders that system packages install datasets into, tried after the user's own folders.
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}


#: Inputs as readers return them: one array, or a dict of arrays with N rows each (a model's
#: keyword inputs, e.g. token ids and an attention mask).
RawInputs = np.ndarray | dict[str, np.ndarray]


@dataclass
class RawData:
    """What a reader returns: uint8 images (or floats already in [0, 1]) and int64 labels."""

    x_train: RawInputs
    y_train: np.ndarray
    x_test: RawInputs | None  # None: no official test split, one is carved from the data
    y_test: np.ndarray | None
    class_names: list[str]
    #: A validation split of the source's own (the user's data may bring one); None: drawn from
    #: the training data with the run's seed.
    x_val: RawInputs | None = None
    y_val: np.ndarray | None = None


@dataclass(frozen=True)
class SourceSpec:
    """A source name with the options of the sources that take some (the user's own data).

    ``load_dataset(SourceSpec("folder", resize=(32, 32)), root="pets")``; a plain name is
    ``SourceSpec(name)``. Grouped here so that ``load_dataset`` keeps its short signature.
    """

    name: str
    #: ``folder`` only: resize every image to (height, width), Pillow bilinear.
    resize: tuple[int, int] | None = None
    #: ``package.module:function`` only: keyword arguments of the call.
    args: Mapping[str, Any] = field(default_factory=dict)
    #: Every source: stream the splits from disk (True), keep them in memory (False), or stream
    #: memory-mapped arrays above ``memory_budget_gb`` (None) — :mod:`kdlab.data.stream`.
    stream: bool | None = None
    memory_budget_gb: float = 4.0


@dataclass(frozen=True)
class Source:
    """One dataset ``load_dataset`` accepts: how to find its files, read them and get them."""

    name: str
    read: Callable[[Path | None, bool], RawData]  # (folder found, strict) → data
    find: Callable[[Path], Path | None] | None  # folder → data folder in it; None: bundled
    how_to_get: str  # "{target}" is replaced with the folder suggested to the user
    default_test: int | float | None = None  # carved test size (int) or fraction (float)
    #: Sources of the user's own data: read ``root`` itself (a folder or a file, None when not
    #: given: no search path) with the spec's options, instead of ``find`` + ``read``.
    read_own: Callable[[Path | None, SourceSpec], RawData] | None = None
    #: The ``SourceSpec`` options this source takes (others are an error naming them).
    options: frozenset[str] = frozenset()


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
