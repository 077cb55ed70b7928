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
from kdlab.data.source import RawData, Source, locate
from kdlab.data.sources import get_source
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


def _check_labels(name: str, raw: RawData, directory: Path | None) -> None:
    """Labels must be integer class numbers below the number of class names."""
    num_classes = len(raw.class_names)
    where = name if directory is None else f"{name} ({directory})"
    for split, labels in (("training", raw.y_train), ("test", raw.y_test)):
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
    source: Source, raw: RawData, test_size: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_test, y_test, test indices, training pool)``, both drawn with ``SPLIT_SEED``."""
    if raw.x_test is None or raw.y_test is None:
        # No official test split: carve one, the same for every seed (SPLIT_SEED).
        n = len(raw.y_train)
        default = source.default_test
        size = test_size or (max(1, round(default * n)) if isinstance(default, float) else default)
        assert size is not None
        _check_size("test_size", size, n - 1, f"{source.name} has {n} samples, keep one to train")
        test_idx, pool = split_indices(raw.y_train, [size, n - size], SPLIT_SEED)
        return raw.x_train, raw.y_train, test_idx, pool
    n_test = len(raw.y_test)
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


def _to_dataset(x: np.ndarray, y: np.ndarray, index: np.ndarray, flatten: bool) -> ArrayDataset:
    # uint8 images stay uint8 (a quarter of float32's memory): scaled to [0, 1] per batch.
    inputs = torch.from_numpy(x[index])
    inputs = inputs if x.dtype == np.uint8 else inputs.float()
    if flatten:
        inputs = inputs.reshape(len(index), -1)
    return ArrayDataset(inputs, torch.from_numpy(y[index]))


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
    _check_labels(source.name, raw, directory)
    x_test, y_test, test_idx, pool = _test_split(source, raw, test_size)
    val_idx, train_idx = _val_train_split(raw.y_train, pool, val_fraction, train_subset, seed)
    return DataSplits(
        name=source.name,
        train=_to_dataset(raw.x_train, raw.y_train, train_idx, flatten),
        val=_to_dataset(raw.x_train, raw.y_train, val_idx, flatten),
        test=_to_dataset(x_test, y_test, test_idx, flatten),
        num_classes=len(raw.class_names),
        class_names=list(raw.class_names),
    )
