"""The user's own arrays (an .npz file, a function's result, a PyTorch dataset) → ``RawData``.

Every form ends here, so every form gets the same checks and the same messages: the four
arrays ``x_train, y_train, x_test, y_test`` (optionally ``x_val, y_val`` and ``class_names``);
inputs uint8 images (kept compact, scaled to [0, 1] per batch), floats (used as they are) or a
dict of arrays with N rows each (a model's keyword inputs, passed as they are: integer token
ids stay integers, nothing is scaled); labels integer class numbers. Class names are
``class_names`` where given, else ``"0"``..``"K-1"`` with K = the largest label + 1.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from kdlab.data.source import RawData, RawInputs
from kdlab.errors import DataError, quote

REQUIRED = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL = ("x_val", "y_val", "class_names")


def as_array(value: Any, what: str, where: str) -> np.ndarray:
    """A numpy array, a torch tensor or a (nested) list as a numpy array, or a DataError."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        # NumPy has no bfloat16: widen it (the values are kept exactly).
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (list, tuple)):
        try:
            return np.asarray(value)
        except ValueError as exc:  # a ragged list
            raise DataError(f"{where}: {what} cannot be an array ({exc})") from exc
    raise DataError(
        f"{where}: {what} must be a numpy array or a torch tensor, found {type(value).__name__}"
    )


def check_inputs(value: Any, what: str, where: str) -> RawInputs:
    """Inputs ``what`` as a uint8 or float array, or a dict of numeric arrays of equal length."""
    if isinstance(value, Mapping):
        if not value or not all(isinstance(k, str) for k in value):
            raise DataError(
                f"{where}: {what} is a dict, so it must map keyword names (strings) to arrays; "
                f"found keys {quote(list(value))}"
            )
        parts = {k: as_array(v, f"{what}[{k!r}]", where) for k, v in value.items()}
        for key, array in parts.items():
            if array.ndim == 0 or array.dtype.kind not in "biuf":
                raise DataError(
                    f"{where}: {what}[{key!r}] must be a numeric array with one row per "
                    f"example, found dtype {array.dtype}, shape {array.shape}"
                )
        rows = {k: len(v) for k, v in parts.items()}
        if len(set(rows.values())) > 1:
            raise DataError(
                f"{where}: the arrays of {what} differ in length: {rows}; each "
                "needs one row per example"
            )
        return parts
    array = as_array(value, what, where)
    if array.dtype != np.uint8 and array.dtype.kind != "f":
        raise DataError(
            f"{where}: {what} has dtype {array.dtype}; images must be uint8 (0..255, scaled by "
            "kdlab) and other inputs float: convert with .astype(np.uint8) or "
            ".astype(np.float32) (token ids and masks go in a dict of arrays)"
        )
    if array.ndim < 2:
        raise DataError(
            f"{where}: {what} has shape {array.shape}; it needs one row per example, "
            f"[N, features] or [N, C, H, W]: reshape it, e.g. x[:, None]"
        )
    if array.ndim == 4 and array.shape[-1] in (1, 3, 4) and array.shape[1] not in (1, 3, 4):
        warnings.warn(
            f"{where}: {what} has shape {array.shape}, which looks channels-last; kdlab's "
            "models and augmentations read [N, C, H, W]: use x.transpose(0, 3, 1, 2) if so",
            stacklevel=3,
        )
    return array


def check_targets(value: Any, what: str, where: str, rows: int) -> np.ndarray:
    """Labels ``what`` as int64 [N], N = ``rows``; floats, one-hot rows and negatives refused."""
    y = as_array(value, what, where)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        hint = ": one-hot? use y.argmax(1)" if y.ndim == 2 else ""
        raise DataError(
            f"{where}: {what} must be class numbers of shape [N], found shape {y.shape}{hint}"
        )
    if y.dtype.kind not in "iu":
        raise DataError(
            f"{where}: {what} must be integer class numbers 0..K-1, found dtype {y.dtype}; "
            "convert with .astype(np.int64) (text labels: number the classes and give "
            "class_names)"
        )
    if len(y) != rows:
        raise DataError(
            f"{where}: {what} holds {len(y)} labels but its inputs have {rows} rows; "
            "give one label per example"
        )
    if len(y) and y.min() < 0:
        raise DataError(
            f"{where}: {what} holds negative labels ({y.min()}); classes are numbered 0..K-1"
        )
    return y.astype(np.int64, copy=False)


def rows(x: RawInputs) -> int:
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def _layout(x: RawInputs) -> dict[str, tuple[tuple[int, ...], str]]:
    """Per input array: (shape of one example, dtype kind) — what must agree between splits."""
    parts = x if isinstance(x, dict) else {"": x}
    kind = {k: "uint8" if v.dtype == np.uint8 else v.dtype.kind for k, v in parts.items()}
    return {k: (tuple(v.shape[1:]), kind[k]) for k, v in parts.items()}


def _check_alike(first: str, x: RawInputs, other: str, y: RawInputs, where: str) -> None:
    a, b = _layout(x), _layout(y)
    if a == b:
        return
    if a.keys() != b.keys():
        found = {first: sorted(a), other: sorted(b)}
        raise DataError(
            f"{where}: {first} and {other} must have the same keyword inputs, found {found}"
        )
    key = next(k for k in a if a[k] != b[k])
    name = f"[{key!r}]" if key else ""
    raise DataError(
        f"{where}: {first}{name} holds examples of shape {a[key][0]} ({a[key][1]}) but "
        f"{other}{name} of shape {b[key][0]} ({b[key][1]}); every split needs the same shape "
        "and dtype (uint8 images are scaled by kdlab, floats are not)"
    )


def _class_names(value: Any, where: str, labels: list[np.ndarray]) -> list[str]:
    if value is None:  # K from the labels: 0..max
        return [str(i) for i in range(max((int(y.max()) for y in labels if len(y)), default=0) + 1)]
    names = as_array(value, "class_names", where)
    if names.ndim != 1 or not all(isinstance(n, str) for n in names.tolist()):
        raise DataError(
            f"{where}: class_names must be a list of strings, found {quote(names.tolist())}"
        )
    return [str(n) for n in names]


def raw_from_parts(
    parts: Mapping[str, Any], where: str, fix: str, required: Sequence[str] = REQUIRED
) -> RawData:
    """``parts`` (the arrays by name) checked into ``RawData``; ``fix`` says how to give them.

    Without ``x_test`` (when ``required`` allows it) the test split is carved by the loader.
    """
    missing = [k for k in required if k not in parts]
    if missing:
        found = ", ".join(map(str, parts)) or "nothing"
        raise DataError(f"{where}: missing {quote(missing[0])} (found: {found}); {fix}")
    unknown = [k for k in parts if k not in (*REQUIRED, *OPTIONAL)]
    if unknown:
        raise DataError(
            f"{where}: unknown array {quote(unknown[0])}; valid names: "
            f"{', '.join((*REQUIRED, *OPTIONAL))}"
        )
    for split in ("val", "test"):
        if (f"x_{split}" in parts) != (f"y_{split}" in parts):
            raise DataError(f"{where}: give both x_{split} and y_{split}, or neither")
    x, y = {}, {}
    for split in ("train", "val", "test"):
        if f"x_{split}" in parts:
            x[split] = check_inputs(parts[f"x_{split}"], f"x_{split}", where)
            y[split] = check_targets(parts[f"y_{split}"], f"y_{split}", where, rows(x[split]))
    for split in x:
        _check_alike("x_train", x["train"], f"x_{split}", x[split], where)
    empty = [f"x_{split}" for split in ("train", "test") if split in x and rows(x[split]) == 0]
    if empty:
        raise DataError(f"{where}: {empty[0]} is empty; each split needs examples")
    names = _class_names(parts.get("class_names"), where, list(y.values()))
    check_classes(where, names, y)
    return RawData(
        x["train"], y["train"], x.get("test"), y.get("test"), names, x.get("val"), y.get("val")
    )


def _shown(names: list[str], labels: np.ndarray) -> str:
    """``3 ('cat'), 5 ('dog')`` for class numbers, at most five."""
    shown = [f"{c} ({names[c]!r})" for c in labels[:5].tolist()]
    return ", ".join(shown) + (f" and {len(labels) - 5} more" if len(labels) > 5 else "")


def check_classes(where: str, names: list[str], labels: Mapping[str, np.ndarray]) -> None:
    """Labels (by split: train, val, test) must lie in 0..K-1, K = len(names), and every split
    must hold the training split's classes and no other (a class the model never trains on, or
    is never tested on, is almost always a mistake in the data)."""
    for split, y in labels.items():
        if len(y) and y.max() >= len(names):
            raise DataError(
                f"{where}: y_{split} has labels up to {y.max()}, but class_names lists "
                f"{len(names)} classes; labels must lie in 0..{len(names) - 1}: fix the labels, "
                "or name every class in class_names"
            )
    train = np.unique(labels["train"])
    checks = []
    if "test" in labels:
        test = np.unique(labels["test"])
        checks += [
            ("test", "training", np.setdiff1d(test, train)),
            ("training", "test", np.setdiff1d(train, test)),
        ]
    if "val" in labels:  # a small validation split may lack a class, but not add one
        checks.append(("validation", "training", np.setdiff1d(np.unique(labels["val"]), train)))
    for split, other, extra in checks:
        if len(extra):
            raise DataError(
                f"{where}: the {split} split has class(es) {_shown(names, extra)} that the "
                f"{other} split lacks; every class needs training and test examples: add "
                f"{other} examples of them, or remove them from the {split} split"
            )
