"""PyTorch datasets into kdlab's in-memory form: what ``kdlab.train`` / ``distill`` take.

kdlab batches by indexing tensors in memory (:class:`kdlab.data.base.TensorBatcher`), so a
map-style ``torch.utils.data.Dataset`` of ``(x, y)`` pairs — or a ``DataLoader`` over one — is
read once, in index order, and stacked: uint8 stays uint8 (scaled to [0, 1] per batch), floats
stay floats, PIL images become uint8 [C, H, W], dict inputs become a dict of stacked arrays. A
``DataLoader`` gives its dataset, collated by its ``collate_fn`` in its batch size; its sampler,
shuffling and ``drop_last`` are left out (kdlab shuffles by the run's seed). Random transforms of
the dataset would be drawn once, at reading: give un-augmented examples and augment with
``data.augment`` (an ``ArrayDataset``'s ``augment``).

:func:`as_splits` takes the forms the Python API accepts (see there).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from kdlab.data.arrays import as_array, check_inputs, check_targets, raw_from_parts
from kdlab.data.base import ArrayDataset, DataSplits
from kdlab.data.load import build_splits, to_dataset
from kdlab.data.source import RawInputs
from kdlab.errors import DataError

#: Test fraction carved (with ``SPLIT_SEED``) from a single dataset given without a test split.
CARVED_TEST = 0.1
TorchData = Dataset | DataLoader
#: What the Python API takes as data (:func:`as_splits`).
DataLike = DataSplits | ArrayDataset | TorchData | tuple[Any, ...] | Mapping[str, Any]


def is_torch_data(value: Any) -> bool:
    return isinstance(value, (Dataset, DataLoader))


def _array(value: Any, where: str) -> np.ndarray:
    """One example's input as an array; a PIL image as uint8 [C, H, W]."""
    if type(value).__module__.startswith("PIL."):
        array = np.asarray(value.convert("L" if value.mode in ("1", "L", "LA") else "RGB"))
        return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    if isinstance(value, torch.Tensor | np.ndarray):
        return as_array(value, "an input", where)
    raise DataError(
        f"{where}: an input is a {type(value).__name__}; expected a tensor, a numpy "
        "array, a PIL image or a dict of tensors"
    )


def _example(x: Any, where: str) -> RawInputs:
    """One example's (or batch's) input: an array, or a dict of arrays (keyword inputs)."""
    if isinstance(x, Mapping):
        return {str(k): _array(v, where) for k, v in x.items()}
    return _array(x, where)


def _label(value: Any, where: str) -> int:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise DataError(
                f"{where}: a label has shape {value.shape}; labels are single class "
                "numbers (one-hot? use its argmax)"
            )
        value = value.reshape(-1)[0]
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise DataError(
            f"{where}: a label is {type(value).__name__} {str(value)[:40]}; labels "
            "must be integer class numbers 0..K-1"
        )
    return int(value)


def _stack(arrays: list[np.ndarray], where: str, key: str = "") -> np.ndarray:
    shape = arrays[0].shape
    odd = next((i for i, a in enumerate(arrays) if a.shape != shape), None)
    if odd is not None:
        name = f"[{key!r}]" if key else ""
        raise DataError(
            f"{where}: example {odd}'s input{name} has shape {arrays[odd].shape} but example "
            f"0's has {shape}; make them one size (resize or pad in the dataset's transform)"
        )
    return np.stack(arrays)


def _from_items(dataset: Dataset, where: str) -> tuple[RawInputs, np.ndarray]:
    """Every ``(x, y)`` of a map-style dataset, in index order, stacked."""
    n = len(dataset)  # type: ignore[arg-type]
    inputs: list[Any] = []
    labels = np.empty(n, dtype=np.int64)
    for i in range(n):
        item = dataset[i]
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise DataError(
                f"{where}[{i}] is a {type(item).__name__}; kdlab reads datasets of "
                "(x, y) pairs: return (input, label) from __getitem__"
            )
        x, y = item
        inputs.append(_example(x, where))
        labels[i] = _label(y, f"{where}[{i}]")
    if n == 0:
        raise DataError(f"{where} is empty")
    if isinstance(inputs[0], dict):
        keys = list(inputs[0])
        return {k: _stack([x[k] for x in inputs], where, k) for k in keys}, labels
    return _stack(inputs, where), labels


def _from_loader(loader: DataLoader, where: str) -> tuple[RawInputs, np.ndarray]:
    """The loader's dataset in index order, collated by its ``collate_fn``, concatenated."""
    if loader.batch_size is None:  # no automatic batching: items as the dataset gives them
        return _from_items(loader.dataset, where)
    ordered = DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        shuffle=False,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        worker_init_fn=loader.worker_init_fn,
    )
    xs: list[Any] = []
    ys: list[np.ndarray] = []
    for b, batch in enumerate(ordered):
        if not isinstance(batch, tuple | list) or len(batch) != 2:
            raise DataError(
                f"{where}: batch {b} is a {type(batch).__name__}; kdlab reads "
                "loaders of (x, y) batches"
            )
        x, y = batch
        xs.append(_example(x, where))
        ys.append(np.asarray(y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else y))
    if not xs:
        raise DataError(f"{where} is empty")
    y = np.concatenate(ys)
    if isinstance(xs[0], dict):
        return {k: _concat([x[k] for x in xs], where, k) for k in xs[0]}, y
    return _concat(xs, where), y


def _concat(arrays: list[np.ndarray], where: str, key: str = "") -> np.ndarray:
    try:
        return np.concatenate(arrays)
    except ValueError as exc:
        name = f"[{key!r}]" if key else ""
        raise DataError(
            f"{where}: the batches' inputs{name} differ in shape ({exc}); pad every batch to "
            "one length in the collate_fn"
        ) from None


def materialise(data: TorchData, where: str = "dataset") -> tuple[RawInputs, np.ndarray]:
    """``(x, y)`` of a map-style Dataset or a DataLoader over one, as arrays."""
    dataset = data.dataset if isinstance(data, DataLoader) else data
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise DataError(
            f"{where}: {type(dataset).__name__} is an iterable-style dataset (no len and "
            "indexing); kdlab reads map-style datasets: give one with __len__ and __getitem__"
        )
    return _from_loader(data, where) if isinstance(data, DataLoader) else _from_items(data, where)


def _class_names(parts: Iterable[Any]) -> list[str] | None:
    """A ``classes`` list of the datasets (torchvision's datasets have one)."""
    for part in parts:
        dataset = part.dataset if isinstance(part, DataLoader) else part
        names = getattr(dataset, "classes", None)
        if isinstance(names, list | tuple) and names and all(isinstance(n, str) for n in names):
            return list(names)
    return None


def _named(data: Any) -> dict[str, Any]:
    """The API's data forms as ``{"train": ..., "val": ..., "test": ...}`` (val, test optional)."""
    if isinstance(data, Mapping):
        unknown = set(data) - {"train", "val", "test"}
        if "train" not in data or unknown:
            raise DataError(
                f"data as a dict needs the key 'train' (and 'test', 'val'), found "
                f"{sorted(map(str, data))}"
            )
        return dict(data)
    if isinstance(data, tuple | list):
        if len(data) not in (2, 3):
            raise DataError(
                f"data as a tuple is (train, test) or (train, val, test), got {len(data)} items"
            )
        splits = ("train", "test") if len(data) == 2 else ("train", "val", "test")
        return dict(zip(splits, data, strict=True))
    return {"train": data}


def _arrays(part: Any, where: str) -> tuple[RawInputs, np.ndarray]:
    if isinstance(part, ArrayDataset):
        x = part.x
        if isinstance(x, dict):
            return {k: v.cpu().numpy() for k, v in x.items()}, part.y.cpu().numpy()
        return x.cpu().numpy(), part.y.cpu().numpy()
    if is_torch_data(part):
        return materialise(part, where)
    raise DataError(
        f"{where} is a {type(part).__name__}; kdlab takes a DataSplits, a map-style "
        "torch.utils.data.Dataset of (x, y) pairs, a DataLoader over one, or an ArrayDataset "
        "(or a tuple / dict of those: (train, test), (train, val, test))"
    )


def as_splits(
    data: DataLike,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_size: int | None = None,
    train_subset: int | None = None,
    flatten: bool = False,
    name: str | None = None,
) -> DataSplits:
    """The data forms of the Python API as ``DataSplits``; a ``DataSplits`` is returned as is.

    * one ``Dataset`` / ``DataLoader`` / ``ArrayDataset``: the training data. A test split of
      ``test_size`` examples (default 10 %) is carved from it with ``SPLIT_SEED`` — the same for
      every seed — and the validation split (``val_fraction``) is drawn with ``seed``;
    * ``(train, test)`` or ``{"train": ..., "test": ...}``: validation drawn from train with
      ``seed``; ``test_size`` shrinks the test split (stratified, ``SPLIT_SEED``);
    * ``(train, val, test)`` or a dict with ``"val"`` too: used as given.

    Datasets are read once, in index order (:func:`materialise`). The classes are a dataset's
    ``classes`` list where it has one (torchvision's do), else 0..max label; labels outside
    them, or a class in the test split the training split lacks (or the reverse), are an error.
    ``train_subset`` keeps that many training examples (stratified, ``seed``).
    """
    if isinstance(data, DataSplits):
        return data
    named = _named(data)
    parts: dict[str, Any] = {}
    for split, part in named.items():
        what = {"train": "training", "val": "validation", "test": "test"}[split]
        x, y = _arrays(part, f"the {what} data ({type(part).__name__})")
        parts[f"x_{split}"], parts[f"y_{split}"] = x, y
    names = _class_names(named.values())
    if names is not None:
        parts["class_names"] = names
    train = named["train"]
    label = name or type(train.dataset if isinstance(train, DataLoader) else train).__name__
    raw = raw_from_parts(parts, label, "give (x, y) pairs", required=tuple(parts)[:2])
    carve = test_size if "test" in named else (test_size or CARVED_TEST)
    return build_splits(
        label,
        raw,
        seed=seed,
        val_fraction=val_fraction,
        test_size=carve,
        train_subset=train_subset,
        flatten=flatten,
    )


def as_array_dataset(data: Any, num_classes: int | None = None) -> ArrayDataset:
    """One split (``train_set=`` of the API) in memory: an ArrayDataset as is, else read once."""
    if isinstance(data, ArrayDataset):
        return data
    x, y = _arrays(data, f"train_set ({type(data).__name__})")
    inputs = check_inputs(x, "the inputs", "train_set")
    labels = check_targets(y, "the labels", "train_set", len(y))
    if num_classes is not None and len(labels) and labels.max() >= num_classes:
        raise DataError(
            f"train_set: labels must lie in 0..{num_classes - 1} (the data's "
            f"classes), found {labels.max()}"
        )
    return to_dataset(inputs, labels, np.arange(len(labels)), False)
