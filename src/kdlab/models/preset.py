"""Named presets of a model family: ``resnet8`` is ``CifarResNet`` with depth 8, and so on.

A preset is a subclass whose constructor takes only ``(num_classes, in_channels)`` — what the
model registry fills in from the data — and passes the family's fixed arguments on, so a config
names ``type: resnet8x4`` and nothing else, and the registry's argument checks see exactly the
arguments a user may set.
"""

from __future__ import annotations

from typing import Any, TypeVar

from torch import nn

Model = TypeVar("Model", bound=nn.Module)


def preset(base: type[Model], name: str, doc: str, **fixed: Any) -> type[Model]:
    """A subclass ``name`` of ``base`` that builds ``base(num_classes, in_channels, **fixed)``."""

    def __init__(self: Model, num_classes: int = 100, in_channels: int = 3) -> None:
        base.__init__(self, num_classes, in_channels, **fixed)

    namespace = {"__init__": __init__, "__doc__": doc, "__module__": base.__module__,
                 "__qualname__": name}  # fmt: skip
    return type(name, (base,), namespace)


__all__ = ["preset"]
