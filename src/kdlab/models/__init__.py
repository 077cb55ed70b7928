"""Models: built-in classifiers and the registry that builds any ``nn.Module`` from a config.

A config names a model by a registered type (``mlp``, ``cnn``, ``mps``, ``stacked_mps``) or by an
import path ``package.module:Class``; other keys are constructor arguments. Arguments a model
needs that the data determine (``in_features``, ``in_channels``, ``input_shape``,
``num_classes``) are filled in when the constructor accepts them and the config leaves them out.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from kdlab.errors import ConfigError
from kdlab.models.cnn import SmallCNN, count_parameters
from kdlab.models.mlp import MLP

MODELS: dict[str, str] = {
    "mlp": "kdlab.models.mlp:MLP",
    "cnn": "kdlab.models.cnn:SmallCNN",
    "mps": "kdlab.models.mps:MPS",
    "stacked_mps": "kdlab.models.mps:StackedMPS",
}


def resolve_model_class(kind: str) -> type[nn.Module]:
    """The class for a registered type name or a ``package.module:Class`` import path."""
    path = MODELS.get(kind, kind)
    if ":" not in path:
        close = difflib.get_close_matches(kind, MODELS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(
            f"unknown model type {kind!r}{hint}; valid types: {', '.join(MODELS)}, or an import "
            "path 'package.module:ClassName' for your own nn.Module"
        )
    module_name, _, attr = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"cannot import model {path!r}: {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"model {path!r} is not an nn.Module subclass")
    return cls


def build_model(spec: Mapping[str, Any], input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Build a model from ``{"type": ..., **kwargs}`` for inputs of ``input_shape``."""
    spec = dict(spec)
    kind = spec.pop("type", "mlp")
    cls = resolve_model_class(kind)
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = [k for k in spec if k not in params and not takes_any]
    if unknown:
        valid = [p for p in params if p != "self"]
        raise ConfigError(
            f"model {kind!r} has no argument {', '.join(map(repr, unknown))}; "
            f"valid arguments: {', '.join(valid)}"
        )
    derived = {
        "in_features": math.prod(input_shape),
        "in_channels": input_shape[0] if len(input_shape) == 3 else 1,
        "input_shape": tuple(input_shape),
        "num_classes": num_classes,
    }
    for key, value in derived.items():
        if key in params and key not in spec:
            spec[key] = value
    try:
        return cls(**spec)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"cannot build model {kind!r} with {spec}: {err}") from err


__all__ = ["MLP", "MODELS", "SmallCNN", "build_model", "count_parameters", "resolve_model_class"]
