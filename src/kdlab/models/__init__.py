"""Models: built-in classifiers and the registry that builds any ``nn.Module`` from a config.

A config names a model by a registered type (``mlp``, ``cnn``, ``mps``, ``stacked_mps``) or by an
import path ``package.module:Class``; other keys are constructor arguments. Arguments a model
needs that the data determine (``in_features``, ``in_channels``, ``input_shape``,
``num_classes``) are filled in when the constructor accepts them and the config leaves them out.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from kdlab.errors import ConfigError, did_you_mean, quote, shorten
from kdlab.models.cnn import SmallCNN, count_parameters
from kdlab.models.mlp import MLP
from kdlab.models.mps import MPS, StackedMPS
from kdlab.models.zoo import ZOO
from kdlab.seeding import seeded

MODELS: dict[str, str] = {
    "mlp": "kdlab.models.mlp:MLP",
    "cnn": "kdlab.models.cnn:SmallCNN",
    "mps": "kdlab.models.mps:MPS",
    "stacked_mps": "kdlab.models.mps:StackedMPS",
    **ZOO,  # the CIFAR model zoo of the KD literature (resnet8x4, wrn_40_2, vgg8, …)
}


def _valid_types() -> str:
    own = "an import path 'package.module:ClassName' for your own nn.Module"
    return f"{', '.join(MODELS)}, or {own}"


def resolve_model_class(kind: Any) -> type[nn.Module]:
    """The class for a registered type name or a ``package.module:Class`` import path."""
    if not isinstance(kind, str):
        raise ConfigError(
            f"a model's type must be a name, got {quote(kind)} ({type(kind).__name__}); "
            f"valid types: {_valid_types()}"
        )
    path = MODELS.get(kind, kind)
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(
            f"unknown model type {quote(kind)}{did_you_mean(kind, MODELS, n=3)}; "
            f"valid types: {_valid_types()}"
        )
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except Exception as err:  # importing a user's module may raise anything
        raise ConfigError(
            f"cannot import model {quote(path)}: {type(err).__name__}: {shorten(str(err), 200)}"
        ) from err
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"model {quote(path)} is not an nn.Module subclass")
    return cls


def check_model_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Check a spec's type and argument names without building it (shapes come with the data).

    Returns the spec as a plain dict; configs call this when they are validated, and
    :func:`build_model` calls it again, so both give the same errors.
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(f"a model spec must be a mapping like {{type: mlp}}, got {quote(spec)}")
    spec = dict(spec)
    kind = spec.get("type", "mlp")
    cls = resolve_model_class(kind)
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        valid = [n for n, p in params.items() if n != "self" and p.kind is not p.VAR_POSITIONAL]
        unknown = [k for k in spec if k != "type" and k not in valid]
        if unknown:
            raise ConfigError(
                f"model {kind!r} has no argument {', '.join(map(quote, unknown))}; "
                f"valid arguments: {', '.join(valid)}"
            )
    check = getattr(cls, "check_arguments", None)  # built-in models check values early too
    if callable(check):
        try:
            check(**{k: v for k, v in spec.items() if k != "type"})
        except ConfigError as err:
            raise ConfigError(f"model {kind!r}: {err}") from None
    return spec


def check_model_specs(specs: Sequence[Any], where: str, aliases: Sequence[str] = ()) -> list[Any]:
    """Check a list of model specs (mappings) or named aliases (e.g. ``student``); errors name
    the position in ``where`` and what each entry may be."""
    checked: list[Any] = []
    for i, spec in enumerate(specs):
        if isinstance(spec, str) and spec in aliases:
            checked.append(spec)
        elif isinstance(spec, Mapping):
            checked.append(check_model_spec(spec))
        else:
            valid = " or ".join([*(repr(a) for a in aliases), "a model spec like {type: mlp}"])
            what = "missing (null)" if spec is None else quote(spec)
            raise ConfigError(f"{where}[{i}] is {what}; each entry must be {valid}")
    return checked


def build_model(
    spec: Mapping[str, Any],
    input_shape: Sequence[int],
    num_classes: int,
    seed: int | None = None,
) -> nn.Module:
    """Build a model from ``{"type": ..., **kwargs}`` for inputs of ``input_shape``.

    With a ``seed`` its initial weights depend on that seed alone and the global random stream
    is untouched (:func:`kdlab.seeding.seeded`); without, they come from the global stream.
    """
    spec = check_model_spec(spec)
    kind = spec.pop("type", "mlp")
    cls = resolve_model_class(kind)
    params = inspect.signature(cls.__init__).parameters
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
        if seed is None:
            return cls(**spec)
        with seeded(seed):
            return cls(**spec)
    except ConfigError as err:  # the model's own check: it names the argument
        raise ConfigError(f"model {kind!r}: {err}") from None
    except (TypeError, ValueError, OverflowError) as err:
        raise ConfigError(
            f"cannot build model {kind!r} with {quote(spec, 200)}: {shorten(str(err), 300)}"
        ) from err


__all__ = [
    "MLP",
    "MODELS",
    "MPS",
    "SmallCNN",
    "StackedMPS",
    "build_model",
    "check_model_spec",
    "check_model_specs",
    "count_parameters",
    "resolve_model_class",
]
