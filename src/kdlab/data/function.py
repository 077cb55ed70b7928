"""Your own loading code as a source: ``source: package.module:function`` (with ``args:``, its
keyword arguments). The function returns the arrays — numpy arrays or torch tensors — as a dict
with keys ``x_train, y_train, x_test, y_test`` (optionally ``x_val, y_val, class_names``) or a
tuple of those four. ``x`` may be a dict of arrays with N rows each, passed to the model as
keyword arguments (``{"input_ids": ..., "attention_mask": ...}``). A function with a parameter
``root`` gets ``data.root`` (or ``--data-root``) there, unless ``args`` gives one.

The module is imported when the config is validated (a wrong path fails at once), and the
function is called when the data are loaded. As with ``type: package.module:Class`` for models,
this runs your code: only use configs you trust.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kdlab.data.arrays import REQUIRED, raw_from_parts
from kdlab.data.source import RawData, Source, SourceSpec
from kdlab.errors import ConfigError, DataError, KdlabError, quote, shorten

EXPECTED = (
    "a dict with keys x_train, y_train, x_test, y_test (numpy arrays or torch tensors), or a "
    "tuple of those four"
)


def is_import_path(name: str) -> bool:
    return ":" in name


def import_function(path: str) -> Callable[..., Any]:
    """The callable named by ``package.module:function`` (``module:Class.method`` too)."""
    module_name, _, attr = path.partition(":")
    if not module_name.strip() or not attr.strip() or ":" in attr:
        raise ConfigError(
            f"data source {quote(path)} is not an import path; write package.module:function"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as err:  # importing a user's module may raise anything
        raise ConfigError(
            f"cannot import data source {quote(path)}: {type(err).__name__}: "
            f"{shorten(str(err), 200)}; check the module is installed or on PYTHONPATH"
        ) from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(
                f"data source {quote(path)}: module {module_name!r} has no "
                f"{attr!r}; check the name after the ':'"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(
            f"data source {quote(path)} is a {type(obj).__name__}, not a function "
            "returning the data"
        )
    return obj


def _check_args(function: Callable[..., Any], path: str, args: Mapping[str, Any]) -> None:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # some builtins have none: the call itself will tell
        return
    try:
        signature.bind(**args)
    except TypeError as err:
        raise ConfigError(
            f"data.args do not fit data source {path}{signature}: {err}; give its keyword "
            "arguments under data.args"
        ) from None


def _takes_root(function: Callable[..., Any]) -> bool:
    try:
        return "root" in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def parts_of(result: Any, where: str) -> dict[str, Any]:
    """What a function returned, as arrays by name; the wrong type is a one-line error."""
    if isinstance(result, Mapping):
        return dict(result)
    if isinstance(result, (tuple, list)):
        if len(result) == len(REQUIRED):
            return dict(zip(REQUIRED, result, strict=True))
        raise DataError(
            f"{where} returned a {type(result).__name__} of {len(result)} items; expected "
            f"{EXPECTED}"
        )
    raise DataError(f"{where} returned {type(result).__name__}; expected {EXPECTED}")


def call_source(path: str, args: Mapping[str, Any]) -> RawData:
    """Import and call ``path`` with ``args``; its result checked into ``RawData``."""
    function = import_function(path)
    _check_args(function, path, args)
    where = f"data source {path}"
    try:
        result = function(**args)
    except KdlabError:
        raise
    except Exception as err:  # the user's code may fail in any way: one line, and the cause
        raise DataError(f"{where} raised {type(err).__name__}: {shorten(str(err), 300)}") from err
    return raw_from_parts(parts_of(result, where), where, f"return {EXPECTED}")


def function_source(path: str) -> Source:
    """A ``Source`` for the import path ``path`` (imported now, so a wrong path fails here)."""
    import_function(path)

    def read_own(root: Path | None, spec: SourceSpec) -> RawData:
        args = dict(spec.args)
        if root is not None and "root" not in args and _takes_root(import_function(path)):
            args["root"] = str(root)  # data.root (or --data-root) reaches a function asking
        return call_source(path, args)

    return Source(
        path,
        lambda d, strict: call_source(path, {}),
        None,
        "the function is yours: make it importable (installed, or on PYTHONPATH)",
        read_own=read_own,
        options=frozenset({"args"}),
    )
