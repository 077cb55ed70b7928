"""``load_dataset``: from a source's files to deterministic train / validation / test splits.

Splits:

* test: the official test set where there is one, else a stratified part carved from the data.
  Either way it is drawn with the constant ``SPLIT_SEED``, never with the run's ``seed``, so runs
  with different seeds are scored on the same test images and stay comparable.
* validation: ``val_fraction`` of the training data, stratified, drawn with ``seed``.
* ``train_subset``: a stratified subset of what is left for training, drawn with ``seed``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdlab.data.augment import parse_augment
from kdlab.data.base import ArrayDataset, DataSplits, split_indices
from kdlab.data.source import RawData, RawInputs, Source, SourceSpec, locate
from kdlab.data.sources import get_source
from kdlab.data.stream import DiskArray, MappedDataset, streamed_inputs
from kdlab.errors import ConfigError, DataError

SPLIT_SEED = 0  # seed of every test split, fixed so all run seeds share one test set


def _check_size(arg: str, value: int | None, upper: int | None = None, what: str = "") -> None:
    """``value`` must be None or an integer in [1, upper] (upper unknown before loading)."""
    if value is None:
        return
    allowed = f"[1, {upper}] ({what})" if upper is not None else "[1, number of samples]"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{arg} must be an integer in {allowed}, got {value!r}")
    if value < 1 or (upper is not None and value > upper):
        raise ValueError(f"{arg} must be in {allowed}, got {value}")


def _check_labels(where: str, raw: RawData) -> None:
    """Labels must be integer class numbers below the number of class names."""
    num_classes = len(raw.class_names)
    splits = (("training", raw.y_train), ("validation", raw.y_val), ("test", raw.y_test))
    for split, labels in splits:
        if labels is None:
            continue
        if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu":
            found = labels.dtype if isinstance(labels, np.ndarray) else type(labels).__name__
            raise DataError(
                f"{where}: the {split} labels must be integer class numbers, found {found}; "
                "the files are not in the format kdlab reads: download them again"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(
                f"{where}: {split} labels must lie in 0..{num_classes - 1}, "
                f"found {labels.min()}..{labels.max()}"
            )


def _test_split(
    name: str, raw: RawData, test_size: int | float | None
) -> tuple[RawInputs, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_test, y_test, test indices, training pool)``, both drawn with ``SPLIT_SEED``.

    Without an official test split ``test_size`` is the carved size (int) or fraction (float).
    """
    if raw.x_test is None or raw.y_test is None:
        # No official test split: carve one, the same for every seed (SPLIT_SEED).
        n = len(raw.y_train)
        size = max(1, round(test_size * n)) if isinstance(test_size, float) else test_size
        if size is None:
            raise ValueError(f"{name} has no test split: give test_size, the number to carve")
        _check_size("test_size", size, n - 1, f"{name} has {n} samples, keep one to train")
        test_idx, pool = split_indices(raw.y_train, [size, n - size], SPLIT_SEED)
        return raw.x_train, raw.y_train, test_idx, pool
    n_test = len(raw.y_test)
    assert not isinstance(test_size, float)  # fractions only carve
    _check_size("test_size", test_size, n_test, f"the official test set has {n_test} samples")
    if test_size is None or test_size == n_test:
        test_idx = np.arange(n_test)
    else:
        test_idx = split_indices(raw.y_test, [test_size], SPLIT_SEED)[0]
    return raw.x_test, raw.y_test, test_idx, np.arange(len(raw.y_train))


def _val_train_split(
    y: np.ndarray, pool: np.ndarray, val_fraction: float, train_subset: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(validation indices, training indices)`` into ``y``, drawn from ``pool`` with ``seed``."""
    n_pool = len(pool)
    n_val = round(val_fraction * n_pool)
    if n_pool - n_val < 1:
        raise ValueError(
            f"val_fraction={val_fraction} leaves no training data out of {n_pool} samples; "
            "use a smaller val_fraction"
        )
    val_rel, train_rel = split_indices(y[pool], [n_val, n_pool - n_val], seed)
    val_idx, train_idx = pool[val_rel], pool[train_rel]
    if train_subset is not None:
        _check_size(
            "train_subset", train_subset, len(train_idx),
            f"{len(train_idx)} training samples remain after the validation split",
        )  # fmt: skip
        train_idx = train_idx[split_indices(y[train_idx], [train_subset], seed)[0]]
    return val_idx, train_idx


def _tensor(x: np.ndarray, keep_dtype: bool) -> torch.Tensor:
    # uint8 images stay uint8 (a quarter of float32's memory): scaled to [0, 1] per batch.
    # Keyword inputs (token ids, masks) keep their dtype; floats are float32 either way.
    inputs = torch.from_numpy(np.ascontiguousarray(x))
    if x.dtype.kind == "f" or not (keep_dtype or x.dtype == np.uint8):
        inputs = inputs.float()
    return inputs


def to_dataset(
    x: RawInputs | DiskArray, y: np.ndarray, index: np.ndarray, flatten: bool
) -> ArrayDataset | MappedDataset:
    if isinstance(x, DiskArray):  # streamed: the rows of the file, read batch by batch
        return MappedDataset(x.path, index, torch.from_numpy(y[index]), flatten=flatten)
    if isinstance(x, dict):  # keyword inputs: every array indexed alike, never flattened
        return ArrayDataset({k: _tensor(v[index], True) for k, v in x.items()},
                            torch.from_numpy(y[index]))  # fmt: skip
    inputs = _tensor(x[index], False)
    if flatten:
        inputs = inputs.reshape(len(index), -1)
    return ArrayDataset(inputs, torch.from_numpy(y[index]))


def build_splits(
    name: str,
    raw: RawData,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_size: int | float | None = None,
    train_subset: int | None = None,
    flatten: bool = False,
    where: str | None = None,
) -> DataSplits:
    """``raw`` checked and split as :func:`load_dataset` splits a source's data (see there).

    A validation split of ``raw``'s own (``x_val``) is used as it is, ``val_fraction`` aside.
    ``test_size`` of a ``raw`` without a test split may be a fraction (float) to carve. ``where``
    names the data in error messages (default ``name``).
    """
    _check_labels(where or name, raw)
    if flatten and isinstance(raw.x_train, dict):
        raise ConfigError(
            f"data.flatten works on array inputs, but {name} gives keyword inputs "
            f"({', '.join(raw.x_train)}): turn flatten off"
        )
    x_test, y_test, test_idx, pool = _test_split(name, raw, test_size)
    if raw.x_val is not None and raw.y_val is not None:
        _, train_idx = _val_train_split(raw.y_train, pool, 0.0, train_subset, seed)
        val = to_dataset(raw.x_val, raw.y_val, np.arange(len(raw.y_val)), flatten)
    else:
        val_idx, train_idx = _val_train_split(raw.y_train, pool, val_fraction, train_subset, seed)
        val = to_dataset(raw.x_train, raw.y_train, val_idx, flatten)
    return DataSplits(
        name=name,
        train=to_dataset(raw.x_train, raw.y_train, train_idx, flatten),
        val=val,
        test=to_dataset(x_test, y_test, test_idx, flatten),
        num_classes=len(raw.class_names),
        class_names=list(raw.class_names),
    )


def with_augmentation(splits: DataSplits, specs: list[Any] | None) -> DataSplits:
    """``splits`` with ``data.augment``: the random ops on the training split, normalisation on
    every split (checked against the images' channels)."""
    augment, normalize = parse_augment(specs)
    if augment is None and normalize is None:
        return splits
    shape = splits.input_shape
    if len(shape) != 3:
        raise ConfigError(
            f"data.augment works on images [C, H, W], but {splits.name} gives inputs of shape "
            f"{shape}{' (data.flatten is on: turn it off)' if len(shape) == 1 else ''}"
        )
    if normalize is not None:
        normalize.check(shape[0], "data.augment")
    return dataclasses.replace(
        splits,
        train=dataclasses.replace(splits.train, augment=augment, normalize=normalize),
        val=dataclasses.replace(splits.val, normalize=normalize),
        test=dataclasses.replace(splits.test, normalize=normalize),
    )


def load_dataset(
    name: str | SourceSpec,
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

    Your own data: ``"folder"`` (``root`` holds ``train/<class>/`` and ``test/<class>/`` image
    folders), ``"npz"`` (``root`` is an .npz file, or a folder holding one) and
    ``"package.module:function"`` (a function returning the arrays); these read ``root`` itself
    and take options through ``name=SourceSpec(name, resize=..., args=...)``.

    ``test_size`` shrinks the official test set, or sets the size of the carved one (default 500
    for ``digits``, 10% for ``notmnist``); test splits always use ``SPLIT_SEED``. ``seed`` draws
    the validation split (``val_fraction`` of the training data) and ``train_subset`` (that many
    labelled training examples, stratified). ``strict`` makes unreadable images an error instead
    of a skip with a warning (notMNIST only; other readers always raise on damaged files).
    """
    spec = name if isinstance(name, SourceSpec) else SourceSpec(name)
    source = get_source(spec.name)
    check_spec(source, spec)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    for arg, value in (("test_size", test_size), ("train_subset", train_subset)):
        _check_size(arg, value)  # cheap checks before reading any file
    if source.read_own is not None:  # the user's own data: root itself, no search path
        directory = None if root is None else Path(root).expanduser()
        raw = source.read_own(directory, spec)
    else:
        directory = locate(source, root) if source.find is not None else None
        raw = source.read(directory, strict)
    raw = _streamed(raw, spec, source.name)
    return build_splits(
        source.name, raw, seed=seed, val_fraction=val_fraction,
        test_size=source.default_test if test_size is None else test_size,
        train_subset=train_subset, flatten=flatten,
        where=source.name if directory is None else f"{source.name} ({directory})",
    )  # fmt: skip


def _streamed(raw: RawData, spec: SourceSpec, name: str) -> RawData:
    """``raw`` with the inputs that stream replaced by the ``.npy`` files they stream from."""
    budget = spec.memory_budget_gb * 2**30
    return dataclasses.replace(raw, **{
        key: streamed_inputs(getattr(raw, key), spec.stream, budget, f"{name}-{key}")
        for key in ("x_train", "x_test", "x_val")
    })  # fmt: skip


def check_spec(source: Source, spec: SourceSpec) -> None:
    """The spec's options must be ones ``source`` takes (a resize the reader ignores would
    silently train on other images than the user asked for)."""
    given = [k for k in ("resize", "args") if getattr(spec, k)]
    wrong = [k for k in given if k not in source.options]
    if wrong:
        takes = f"it takes {', '.join(sorted(source.options))}" if source.options else ""
        raise ConfigError(
            f"data.{wrong[0]} does not apply to source {source.name!r}"
            f"{f' ({takes})' if takes else ''}; resize is for source folder, args for a "
            "source 'package.module:function': remove it"
        )
