"""Models: built-in classifiers and the registry that builds any ``nn.Module`` from a config.

A config names a model by a registered type (``mlp``, ``cnn``, ``mps``, ``stacked_mps``, the
CIFAR zoo) or by an import path ``package.module:name`` of a class (``mypackage.models:MyNet``)
or of a function that returns a model (``torchvision.models:resnet18``, ``timm:create_model``);
other keys are its keyword arguments. Arguments a model needs that the data determine
(``in_features``, ``in_channels``, ``input_shape``, ``num_classes``) are filled in when its
signature names them and the config leaves them out. Two keys are kdlab's own and never passed
on: ``output_index`` and ``output_key`` say where the logits are in the model's output (a tuple,
a dict, a Hugging Face ``ModelOutput``); :func:`select_output` does the same in Python.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from kdlab.errors import ConfigError, did_you_mean, quote, shorten
from kdlab.inference import OutputSelection, select_output
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
    "patchnet": "kdlab.models.patchnet:PatchNet",  # Allen-Zhu & Li's smoothed-ReLU patch net
    **ZOO,  # the CIFAR model zoo of the KD literature (resnet8x4, wrn_40_2, vgg8, …)
}

#: Spec keys kdlab reads itself (where the logits are in the output), never passed to the model.
OUTPUT_KEYS = ("output_index", "output_key")

#: What builds a model: an nn.Module subclass, or a function returning an nn.Module.
ModelFactory = Callable[..., Any]


def _valid_types() -> str:
    own = (
        "an import path 'package.module:ClassName' for your own nn.Module, or "
        "'package.module:function' for a function that returns one"
    )
    return f"{', '.join(MODELS)}, or {own}"


def resolve_model_factory(kind: Any) -> ModelFactory:
    """The class or function for a registered type name or a ``package.module:name`` path."""
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
        found = getattr(importlib.import_module(module_name), attr)
    except Exception as err:  # importing a user's module may raise anything
        raise ConfigError(
            f"cannot import model {quote(path)}: {type(err).__name__}: {shorten(str(err), 200)}"
        ) from err
    if isinstance(found, type):
        if not issubclass(found, nn.Module):
            raise ConfigError(f"model {quote(path)} is not an nn.Module subclass")
    elif not callable(found):
        raise ConfigError(
            f"model {quote(path)} is a {type(found).__name__}: name an nn.Module subclass or a "
            "function that returns an nn.Module"
        )
    return found


def _parameters(factory: ModelFactory) -> dict[str, inspect.Parameter] | None:
    """The named parameters of a class's constructor or of a function (``self`` left out);
    None when the signature cannot be read (some built-in callables)."""
    try:
        params = inspect.signature(factory.__init__ if isinstance(factory, type) else factory)
    except (TypeError, ValueError):
        return None
    return {n: p for n, p in params.parameters.items() if n != "self"}


def check_model_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Check a spec's type and argument names without building it (shapes come with the data).

    Returns the spec as a plain dict; configs call this when they are validated, and
    :func:`build_model` calls it again, so both give the same errors.
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(f"a model spec must be a mapping like {{type: mlp}}, got {quote(spec)}")
    spec = dict(spec)
    kind = spec.get("type", "mlp")
    factory = resolve_model_factory(kind)
    try:
        OutputSelection(spec.get("output_index"), spec.get("output_key"))
    except ConfigError as err:
        raise ConfigError(f"model {kind!r}: {err}") from None
    arguments = {k: v for k, v in spec.items() if k != "type" and k not in OUTPUT_KEYS}
    params = _parameters(factory)
    # Argument names are checked where the signature lists them all (no **kwargs).
    if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        valid = [n for n, p in params.items() if p.kind is not p.VAR_POSITIONAL]
        unknown = [k for k in arguments if k not in valid]
        if unknown:
            raise ConfigError(
                f"model {kind!r} has no argument {', '.join(map(quote, unknown))}; "
                f"valid arguments: {', '.join([*valid, *OUTPUT_KEYS])}"
            )
    check = getattr(factory, "check_arguments", None)  # built-in models check values early too
    if callable(check):
        try:
            check(**arguments)
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
    is untouched (:func:`kdlab.seeding.seeded`); without, they come from the global stream. A
    spec's ``output_index`` / ``output_key`` are set on the model with :func:`select_output`.
    """
    spec = check_model_spec(spec)
    kind = spec.pop("type", "mlp")
    selection = {"index": spec.pop("output_index", None), "key": spec.pop("output_key", None)}
    factory = resolve_model_factory(kind)
    params = _parameters(factory) or {}
    derived = {
        "in_features": math.prod(input_shape),
        "in_channels": input_shape[0] if len(input_shape) == 3 else 1,
        "input_shape": tuple(input_shape),
        "num_classes": num_classes,
    }
    for key, value in derived.items():
        if key in params and key not in spec:
            spec[key] = value
    model = _construct(factory, kind, spec, seed)
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model {kind!r} returned {quote(model, 60)} ({type(model).__name__}), not an "
            "nn.Module: a model factory must return the model itself"
        )
    if any(v is not None for v in selection.values()):
        select_output(model, **selection)
    return model


def _construct(
    factory: ModelFactory, kind: str, arguments: dict[str, Any], seed: int | None
) -> Any:
    try:
        if seed is None:
            return factory(**arguments)
        with seeded(seed):
            return factory(**arguments)
    except ConfigError as err:  # the model's own check: it names the argument
        raise ConfigError(f"model {kind!r}: {err}") from None
    except (TypeError, ValueError, OverflowError) as err:
        raise ConfigError(
            f"cannot build model {kind!r} with {quote(arguments, 200)}: {shorten(str(err), 300)}"
        ) from err


__all__ = [
    "MLP",
    "MODELS",
    "MPS",
    "OUTPUT_KEYS",
    "ModelFactory",
    "SmallCNN",
    "StackedMPS",
    "build_model",
    "check_model_spec",
    "check_model_specs",
    "count_parameters",
    "resolve_model_factory",
    "select_output",
]
